"""The clusters the kubernetes backend runs on (JOBPLANE_K8S_CLUSTERS) and how it authenticates to each."""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, fields
from typing import Any

from chalicelib.errors import ConfigError

KINDS = ("eks", "gke", "kubeconfig")
#: which node labels pick a GPU type and spot capacity
FLAVOURS = ("gke", "eks", "karpenter")
_DEFAULT_FLAVOUR = {"eks": "eks", "gke": "gke", "kubeconfig": "karpenter"}
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: what EKS's authenticator accepts: a presigned GetCallerIdentity URL valid this long (as `aws eks get-token`)
TOKEN_URL_SECONDS = 60
#: an API client (its token) is rebuilt after this long: EKS tokens live 15 minutes, Google's an hour
CLIENT_SECONDS = 600
EKS_TOKEN_PREFIX = "k8s-aws-v1."  # noqa: S105 (the token format's name, not a secret)
CLUSTER_ID_HEADER = "x-k8s-aws-id"
CONTAINER_API = "https://container.googleapis.com"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


@dataclass(frozen=True)
class Cluster:
    """One named cluster: where it is, which namespace jobs go to, which node labels it uses, its Kueue queue."""

    name: str
    kind: str = "kubeconfig"
    namespace: str = "default"
    flavour: str = ""
    #: a Kueue LocalQueue in the namespace: Jobs are created suspended with its queue-name label
    local_queue: str | None = None
    #: eks: the cluster's name and region
    cluster: str | None = None
    region: str | None = None
    #: gke: the cluster's project and location (a region or zone)
    project: str | None = None
    location: str | None = None
    #: kubeconfig: a context other than the current one
    context: str | None = None
    enabled: bool = True
    #: where the job's files live: s3 (the stage's S3 bucket, moved by the AWS CLI helper containers) or gs
    #: (Cloud Storage, mounted in the pod by GKE's Cloud Storage FUSE CSI driver, as Vertex mounts it)
    store: str = "s3"

    def __post_init__(self) -> None:
        if not self.flavour:
            object.__setattr__(self, "flavour", _DEFAULT_FLAVOUR.get(self.kind, "karpenter"))


STORES = ("s3", "gs")
#: what a deployment gets with kubernetes enabled and no JOBPLANE_K8S_CLUSTERS: KUBECONFIG's current context
DEFAULT_CLUSTERS = (Cluster(name="default"),)
_REQUIRED = {"eks": ("cluster", "region"), "gke": ("project", "location", "cluster"), "kubeconfig": ()}


def parse_clusters(var: str, raw: str) -> tuple[Cluster, ...]:
    """JOBPLANE_K8S_CLUSTERS: a JSON list of objects, each naming one cluster; errors name the entry and field."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{var} must be a JSON list of clusters: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{var} must be a non-empty JSON list of cluster objects")
    known = {f.name: f for f in fields(Cluster)}
    found: list[Cluster] = []
    for i, entry in enumerate(data):
        where = f"{var}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be an object with name and kind")
        unknown = sorted(set(entry) - set(known))
        if unknown:
            raise ConfigError(f"{where} has unknown field {unknown[0]!r}; known: {', '.join(known)}")
        for key, value in entry.items():
            wanted = bool if key == "enabled" else str
            if not isinstance(value, wanted) or (wanted is str and not value.strip()):
                raise ConfigError(f"{where}.{key} must be a {'boolean' if wanted is bool else 'non-empty string'}")
        if "name" not in entry or not _NAME_RE.match(entry["name"]):
            raise ConfigError(f"{where}.name must be 1-63 of [a-z0-9-], starting and ending alphanumeric")
        kind = entry.get("kind", "kubeconfig")
        if kind not in KINDS:
            raise ConfigError(f"{where}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if entry.get("flavour", _DEFAULT_FLAVOUR[kind]) not in FLAVOURS:
            raise ConfigError(f"{where}.flavour must be one of {', '.join(FLAVOURS)}, got {entry['flavour']!r}")
        if entry.get("store", "s3") not in STORES:
            raise ConfigError(f"{where}.store must be one of {', '.join(STORES)}, got {entry['store']!r}")
        for need in _REQUIRED[kind]:
            if need not in entry:
                raise ConfigError(f"{where}.{need} is required for a {kind} cluster")
        if any(c.name == entry["name"] for c in found):
            raise ConfigError(f"{where}.name {entry['name']!r} names two clusters")
        found.append(Cluster(**entry))
    if not any(c.enabled for c in found):
        raise ConfigError(f"{var} enables no cluster")
    return tuple(found)


def show_clusters(value: tuple[Cluster, ...]) -> str:
    """The JSON parse_clusters reads back; "" (unset: the default) for no clusters."""
    if not value:
        return ""
    return json.dumps(
        [{f.name: getattr(c, f.name) for f in fields(c) if getattr(c, f.name) is not None} for c in value]
    )


# --- credentials -------------------------------------------------------------------------------------
def eks_token(sts_client: Any, cluster_name: str) -> str:
    """A bearer token for an EKS cluster, made as `aws eks get-token` makes it: a GetCallerIdentity URL
    presigned for TOKEN_URL_SECONDS with the cluster's name in the signed x-k8s-aws-id header, base64url."""

    def add_header(request, **_):
        request.headers[CLUSTER_ID_HEADER] = cluster_name

    sts_client.meta.events.register("before-sign.sts.GetCallerIdentity", add_header)
    try:
        url = sts_client.generate_presigned_url(
            "get_caller_identity", Params={}, ExpiresIn=TOKEN_URL_SECONDS, HttpMethod="GET"
        )
    finally:
        sts_client.meta.events.unregister("before-sign.sts.GetCallerIdentity", add_header)
    return EKS_TOKEN_PREFIX + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def _ca_file(data_b64: str) -> str:
    """The cluster's CA (base64 PEM, as EKS and GKE return it) in a file, which the client's TLS setup wants."""
    handle = tempfile.NamedTemporaryFile("wb", prefix="jobplane-k8s-ca-", suffix=".crt", delete=False)
    with handle:
        handle.write(base64.b64decode(data_b64))
    return handle.name


def _configuration(host: str, token: str, ca_b64: str | None):
    from kubernetes import client

    config = client.Configuration()
    config.host = host if host.startswith(("http://", "https://")) else f"https://{host}"
    config.api_key = {"authorization": token}
    config.api_key_prefix = {"authorization": "Bearer"}
    if ca_b64:
        config.ssl_ca_cert = _ca_file(ca_b64)
    return config


class ClusterClients:
    """An official-client ApiClient per cluster, rebuilt with a fresh token every CLIENT_SECONDS."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[float, Any]] = {}
        #: botocore / google clients handed in by tests (service -> client)
        self.aws_clients: dict[str, Any] = {}
        self.google_session: Any = None

    def api_client(self, cluster: Cluster):
        with self._lock:
            found = self._clients.get(cluster.name)
            if found is None or time.monotonic() - found[0] > CLIENT_SECONDS:
                found = (time.monotonic(), self._build(cluster))
                self._clients[cluster.name] = found
            return found[1]

    def _build(self, cluster: Cluster):
        from kubernetes import client, config

        if cluster.kind == "eks":
            return client.ApiClient(self.eks_configuration(cluster))
        if cluster.kind == "gke":
            return client.ApiClient(self.gke_configuration(cluster))
        # Named explicitly: the client's own default is the KUBECONFIG it saw when it was first imported.
        path = (self.settings.kubeconfig or "").split(os.pathsep)[0] or None
        return config.new_client_from_config(config_file=path, context=cluster.context)

    def _aws(self, service: str, region: str):
        if service not in self.aws_clients:
            from chalicelib import aws_session

            self.aws_clients[service] = aws_session.client(
                service, region, self.settings.aws_endpoint_url, aws_session.standard_retries()
            )
        return self.aws_clients[service]

    def eks_configuration(self, cluster: Cluster):
        from chalicelib.backends.aws.errors import aws_errors

        with aws_errors("eks", "DescribeCluster"):
            found = self._aws("eks", cluster.region).describe_cluster(name=cluster.cluster)["cluster"]
        token = eks_token(self._aws("sts", cluster.region), cluster.cluster)
        return _configuration(found["endpoint"], token, (found.get("certificateAuthority") or {}).get("data"))

    def gke_configuration(self, cluster: Cluster):
        from chalicelib.errors import BackendError

        session = self.google_session
        if session is None:
            import google.auth
            from google.auth.transport.requests import AuthorizedSession

            credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
            session = AuthorizedSession(credentials)
        base = self.settings.gcp_api_endpoint or CONTAINER_API
        url = f"{base}/v1/projects/{cluster.project}/locations/{cluster.location}/clusters/{cluster.cluster}"
        response = session.get(url, timeout=30)
        if response.status_code != 200:
            raise BackendError(
                f"container clusters.get {cluster.cluster}: HTTP {response.status_code} {response.text[:200]}"
            )
        found = response.json()
        credentials = session.credentials
        if not credentials.valid:
            from google.auth.transport.requests import Request

            credentials.refresh(Request())
        ca = (found.get("masterAuth") or {}).get("clusterCaCertificate")
        return _configuration(found["endpoint"], credentials.token, ca)
