"""JOBPLANE_K8S_CLUSTERS, the EKS token (a presigned GetCallerIdentity), EKS and GKE endpoints, the IAM policy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import parse_qsl, quote, urlparse

import pytest
from botocore.session import Session
from botocore.stub import Stubber

from chalicelib.backends.kubernetes.clusters import (
    CLUSTER_ID_HEADER,
    Cluster,
    ClusterClients,
    eks_token,
    parse_clusters,
)
from chalicelib.errors import ConfigError
from tests.factories import make_settings

KEY, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIC5zCCAc+gAwIBAgIBADANBgkqhkiG9w0BAQsFADAV\n-----END CERTIFICATE-----\n"


def _sts(region: str = "us-west-2"):
    session = Session()
    session.set_credentials(KEY, SECRET)
    return session.create_client("sts", region_name=region, endpoint_url=f"https://sts.{region}.amazonaws.com")


def _signature(url: str, cluster: str, region: str) -> str:
    """SigV4 for a presigned GET, computed here from the URL's own parameters and the cluster header."""
    parsed = urlparse(url)
    params = dict(parse_qsl(parsed.query, keep_blank_values=True))
    params.pop("X-Amz-Signature")
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
    headers = f"host:{parsed.netloc}\n{CLUSTER_ID_HEADER}:{cluster}\n"
    canonical = "\n".join(["GET", "/", query, headers, params["X-Amz-SignedHeaders"], hashlib.sha256(b"").hexdigest()])
    stamp = params["X-Amz-Date"]
    scope = f"{stamp[:8]}/{region}/sts/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + SECRET).encode()
    for part in (stamp[:8], region, "sts", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_the_eks_token_is_a_presigned_get_caller_identity_with_the_cluster_header_signed():
    sts = _sts()
    with Stubber(sts) as stub:  # presigning calls nothing
        token = eks_token(sts, "training")
        stub.assert_no_pending_responses()
    assert token.startswith("k8s-aws-v1.") and "=" not in token
    body = token.removeprefix("k8s-aws-v1.")
    url = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    parsed = urlparse(url)
    params = dict(parse_qsl(parsed.query))
    assert parsed.netloc == "sts.us-west-2.amazonaws.com"
    assert params["Action"] == "GetCallerIdentity" and params["Version"] == "2011-06-15"
    assert params["X-Amz-Expires"] == "60" and params["X-Amz-SignedHeaders"] == f"host;{CLUSTER_ID_HEADER}"
    assert params["X-Amz-Credential"].startswith(f"{KEY}/")
    assert params["X-Amz-Signature"] == _signature(url, "training", "us-west-2")
    assert params["X-Amz-Signature"] != _signature(url, "another-cluster", "us-west-2")


def test_the_header_hook_does_not_stay_on_the_client():
    sts = _sts()
    eks_token(sts, "a")
    url = sts.generate_presigned_url("get_caller_identity", Params={}, ExpiresIn=60)
    assert CLUSTER_ID_HEADER not in dict(parse_qsl(urlparse(url).query))["X-Amz-SignedHeaders"]


def test_an_eks_cluster_gets_its_endpoint_and_ca_from_describe_cluster(tmp_path):
    settings = make_settings(tmp_path)
    clients = ClusterClients(settings)
    eks = Session().create_client("eks", region_name="us-west-2", aws_access_key_id=KEY, aws_secret_access_key=SECRET)
    clients.aws_clients = {"eks": eks, "sts": _sts()}
    described = {
        "cluster": {
            "name": "training",
            "arn": "arn:aws:eks:us-west-2:111122223333:cluster/training",
            "endpoint": "https://A1B2C3D4.gr7.us-west-2.eks.amazonaws.com",
            "certificateAuthority": {"data": base64.b64encode(CA_PEM).decode()},
            "status": "ACTIVE",
        }
    }
    with Stubber(eks) as stub:
        stub.add_response("describe_cluster", described, {"name": "training"})
        config = clients.eks_configuration(Cluster(name="eks1", kind="eks", cluster="training", region="us-west-2"))
        stub.assert_no_pending_responses()
    assert config.host == "https://A1B2C3D4.gr7.us-west-2.eks.amazonaws.com"
    assert config.api_key_prefix["authorization"] == "Bearer"
    assert config.api_key["authorization"].startswith("k8s-aws-v1.")
    assert open(config.ssl_ca_cert, "rb").read() == CA_PEM


class _Response:
    def __init__(self, status: int, body: dict) -> None:
        self.status_code, self._body, self.text = status, body, json.dumps(body)

    def json(self):
        return self._body


class _Credentials:
    valid, token = True, "ya29.a0-access-token"


class _Session:
    """google-auth's AuthorizedSession as the backend uses it: get() and its credentials."""

    credentials = _Credentials()

    def __init__(self, body: dict, status: int = 200) -> None:
        self.body, self.status, self.urls = body, status, []

    def get(self, url, timeout):
        self.urls.append(url)
        return _Response(self.status, self.body)


def test_a_gke_cluster_gets_its_endpoint_and_ca_from_the_container_api(tmp_path):
    clients = ClusterClients(make_settings(tmp_path))
    # projects.locations.clusters.get's Cluster resource (endpoint is the control plane's IP).
    clients.google_session = _Session(
        {
            "name": "gpu-pool",
            "endpoint": "34.118.10.20",
            "masterAuth": {"clusterCaCertificate": base64.b64encode(CA_PEM).decode()},
        }
    )
    cluster = Cluster(name="g", kind="gke", project="ml-lab", location="us-central1", cluster="gpu-pool")
    config = clients.gke_configuration(cluster)
    assert clients.google_session.urls == [
        "https://container.googleapis.com/v1/projects/ml-lab/locations/us-central1/clusters/gpu-pool"
    ]
    assert config.host == "https://34.118.10.20" and config.api_key["authorization"] == "ya29.a0-access-token"
    assert open(config.ssl_ca_cert, "rb").read() == CA_PEM


def test_a_gke_cluster_the_container_api_refuses_is_a_backend_error(tmp_path):
    from chalicelib.errors import BackendError

    clients = ClusterClients(make_settings(tmp_path))
    clients.google_session = _Session({"error": {"code": 404, "message": "Not found"}}, status=404)
    with pytest.raises(BackendError, match="HTTP 404"):
        clients.gke_configuration(Cluster(name="g", kind="gke", project="p", location="l", cluster="c"))


# --- settings -------------------------------------------------------------------------------------------
def test_clusters_parse_with_their_defaults(tmp_path):
    raw = json.dumps(
        [
            {"name": "gke", "kind": "gke", "project": "p", "location": "us-central1", "cluster": "c"},
            {"name": "eks", "kind": "eks", "cluster": "training", "region": "us-west-2", "namespace": "ml"},
            {"name": "lab", "local_queue": "team-a"},
        ]
    )
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="kubernetes", JOBPLANE_K8S_CLUSTERS=raw)
    gke, eks, lab = settings.k8s_clusters
    assert (gke.flavour, eks.flavour, lab.flavour) == ("gke", "eks", "karpenter")
    assert (gke.namespace, eks.namespace, lab.kind, lab.local_queue) == ("default", "ml", "kubeconfig", "team-a")
    assert make_settings(tmp_path, **settings.to_env()).k8s_clusters == settings.k8s_clusters


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        ("not json", "must be a JSON list"),
        ("[]", "non-empty JSON list"),
        ('[{"name": "a", "kind": "aks"}]', r"\[0\].kind must be one of eks, gke, kubeconfig"),
        ('[{"name": "a", "kind": "eks", "region": "us-east-1"}]', r"\[0\].cluster is required for a eks cluster"),
        ('[{"name": "a", "flavour": "aks"}]', r"\[0\].flavour must be one of gke, eks, karpenter"),
        ('[{"name": "A_1"}]', r"\[0\].name must be"),
        ('[{"name": "a", "namespac": "x"}]', r"\[0\] has unknown field 'namespac'"),
        ('[{"name": "a"}, {"name": "a"}]', r"\[1\].name 'a' names two clusters"),
        ('[{"name": "a", "enabled": false}]', "enables no cluster"),
    ],
)
def test_bad_clusters_are_refused_naming_the_entry_and_field(clusters, message):
    with pytest.raises(ConfigError, match=message):
        parse_clusters("JOBPLANE_K8S_CLUSTERS", clusters)


def test_the_policy_grants_describe_cluster_on_exactly_the_eks_clusters(tmp_path):
    from chalicelib.backends.policy import build, declared_actions

    eks = json.dumps([{"name": "a", "kind": "eks", "cluster": "training", "region": "us-west-2"}])
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="kubernetes,local", JOBPLANE_K8S_CLUSTERS=eks)
    (statement,) = [s for s in build(settings)["Statement"] if s["Sid"] == "KubernetesEks"]
    assert statement["Action"] == ["eks:DescribeCluster"]
    assert statement["Resource"] == ["arn:aws:eks:*:*:cluster/training"]
    assert "eks:DescribeCluster" in declared_actions(settings)
    kubeconfig = make_settings(tmp_path, JOBPLANE_BACKENDS="kubernetes,local")
    assert "eks:DescribeCluster" not in declared_actions(kubeconfig)
    assert not [s for s in build(kubeconfig)["Statement"] if s["Sid"] == "KubernetesEks"]


def test_a_clusters_client_is_reused_then_rebuilt_with_a_fresh_token(tmp_path, fake_k8s, monkeypatch):
    from chalicelib.backends.kubernetes import clusters

    clients = ClusterClients(make_settings(tmp_path, KUBECONFIG=str(fake_k8s.config)))
    first = clients.api_client(clusters.DEFAULT_CLUSTERS[0])
    assert clients.api_client(clusters.DEFAULT_CLUSTERS[0]) is first
    later = clusters.time.monotonic() + clusters.CLIENT_SECONDS + 1
    monkeypatch.setattr(clusters.time, "monotonic", lambda: later)
    assert clients.api_client(clusters.DEFAULT_CLUSTERS[0]) is not first
