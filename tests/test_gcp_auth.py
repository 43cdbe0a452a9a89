"""Google API errors translated once; AWS web identity federation with a stubbed STS."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.stub import Stubber
from google.api_core import exceptions as g

from chalicelib.backends.gcp.base import label_value, translate
from chalicelib.errors import (
    BackendAuthError,
    BackendError,
    BackendValidationError,
    CapacityError,
    QuotaError,
    ThrottledError,
)
from chalicelib.gcp_auth import WebIdentityFederation, session_name
from tests.factories import make_settings


@pytest.mark.parametrize(
    ("exc", "kind", "retryable"),
    [
        (
            g.ServiceUnavailable("ZONE_RESOURCE_POOL_EXHAUSTED: The zone does not have enough resources"),
            CapacityError,
            True,
        ),
        (g.Forbidden("Quota 'NVIDIA_T4_GPUS' exceeded. Limit: 0.0 in region us-central1."), QuotaError, False),
        (g.ResourceExhausted("The following quota metrics exceed quota limits"), QuotaError, False),
        (g.TooManyRequests("Rate Limit Exceeded"), ThrottledError, True),
        (g.Forbidden("Required 'compute.instances.create' permission"), BackendAuthError, False),
        (g.Unauthenticated("Request had invalid authentication credentials"), BackendAuthError, False),
        (g.BadRequest("Invalid value for field 'resource.machineType'"), BackendValidationError, False),
        (g.InternalServerError("Internal error"), BackendError, True),
        (g.Conflict("The resource already exists"), BackendError, False),
    ],
)
def test_google_errors_map_to_one_hierarchy(exc, kind, retryable):
    err = translate(exc, "creating instance jp-x")
    assert (type(err), err.retryable) == (kind, retryable)
    assert err.message.startswith("creating instance jp-x: ")


def test_labels_follow_gcp_rules():
    assert label_value("Team/Vision Ω") == "team-vision--"
    assert label_value("x" * 80) == "x" * 63


def _sts(tmp_path):
    settings = make_settings(
        tmp_path,
        JOBPLANE_AWS_ROLE_ARN="arn:aws:iam::123456789012:role/jobplane-test-gcp",
        JOBPLANE_AWS_WEB_IDENTITY_AUDIENCE="jobplane-test",
    )
    client = boto3.client("sts", region_name="us-east-1", config=Config(signature_version=UNSIGNED))
    return settings, client, Stubber(client)


def _response(n: int, expires: datetime) -> dict:
    return {
        "Credentials": {
            "AccessKeyId": f"ASIAEXAMPLEKEY000{n}",
            "SecretAccessKey": f"secret-{n}",
            "SessionToken": f"token-{n}",
            "Expiration": expires,
        },
        "AssumedRoleUser": {
            "AssumedRoleId": "AROAEXAMPLE:jobplane-test-gcp",
            "Arn": "arn:aws:sts::123456789012:assumed-role/x/y",
        },
    }


def test_credentials_are_assumed_with_the_google_token_and_cached_until_near_expiry(tmp_path):
    settings, client, stub = _sts(tmp_path)
    now = [datetime(2025, 1, 1, 12, 0, tzinfo=UTC).timestamp()]
    tokens = iter(["google-id-token-1", "google-id-token-2"])
    expected = {
        "RoleArn": "arn:aws:iam::123456789012:role/jobplane-test-gcp",
        "RoleSessionName": "jobplane-test-gcp",
        "DurationSeconds": 3600,
    }
    stub.add_response(
        "assume_role_with_web_identity",
        _response(1, datetime(2025, 1, 1, 13, 0, tzinfo=UTC)),
        {**expected, "WebIdentityToken": "google-id-token-1"},
    )
    stub.add_response(
        "assume_role_with_web_identity",
        _response(2, datetime(2025, 1, 1, 14, 0, tzinfo=UTC)),
        {**expected, "WebIdentityToken": "google-id-token-2"},
    )
    federation = WebIdentityFederation(
        settings, sts_client=client, token_source=lambda: next(tokens), clock=lambda: now[0]
    )
    env: dict[str, str] = {}
    with stub:
        first = federation.export(env)
        now[0] += 39 * 60  # 21 min left: still fresh, no call
        assert federation.export(env) == first
        now[0] += 2 * 60  # 19 min left: inside the margin, refreshed
        second = federation.export(env)
        stub.assert_no_pending_responses()
    assert first.access_key_id == "ASIAEXAMPLEKEY0001"
    assert env == {
        "AWS_ACCESS_KEY_ID": "ASIAEXAMPLEKEY0002",
        "AWS_SECRET_ACCESS_KEY": "secret-2",
        "AWS_SESSION_TOKEN": "token-2",
        "AWS_CREDENTIAL_EXPIRATION": "2025-01-01T14:00:00Z",
    }
    assert second.session_token == "token-2"
    assert session_name(settings) == "jobplane-test-gcp"


def test_a_refused_token_is_an_auth_error(tmp_path):
    settings, client, stub = _sts(tmp_path)
    stub.add_client_error("assume_role_with_web_identity", "InvalidIdentityToken", "Incorrect token audience")
    federation = WebIdentityFederation(settings, sts_client=client, token_source=lambda: "bad-token")
    with stub, pytest.raises(BackendAuthError, match="Incorrect token audience"):
        federation.credentials()


def test_the_token_comes_from_the_metadata_server_with_the_audience(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = []

    class Metadata(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Metadata-Flavor")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"eyJhbGciOiJSUzI1NiJ9.e30.sig\n")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.handle_request, daemon=True).start()
    settings = make_settings(
        tmp_path,
        JOBPLANE_AWS_ROLE_ARN="arn:aws:iam::123456789012:role/r",
        JOBPLANE_AWS_WEB_IDENTITY_AUDIENCE="jobplane-test",
        GCE_METADATA_HOST=f"127.0.0.1:{server.server_address[1]}",
    )
    from chalicelib.gcp_auth import metadata_identity_token

    try:
        assert metadata_identity_token(settings) == "eyJhbGciOiJSUzI1NiJ9.e30.sig"
    finally:
        server.server_close()
    assert seen == [
        ("/computeMetadata/v1/instance/service-accounts/default/identity?audience=jobplane-test&format=full", "Google")
    ]


def test_deps_federates_before_building_the_store(tmp_path, monkeypatch):
    from chalicelib import deps

    settings, client, stub = _sts(tmp_path)
    stub.add_response(
        "assume_role_with_web_identity",
        _response(7, datetime(2099, 1, 1, tzinfo=UTC)),
        {
            "RoleArn": settings.aws_role_arn,
            "RoleSessionName": "jobplane-test-gcp",
            "WebIdentityToken": "google-id-token",
            "DurationSeconds": 3600,
        },
    )
    env: dict[str, str] = {}
    federation = WebIdentityFederation(settings, sts_client=client, token_source=lambda: "google-id-token")
    monkeypatch.setattr(federation, "export", lambda environ=None, _f=federation.export: _f(env))
    deps.reset()
    deps.override(settings=settings, aws_federation=federation)
    try:
        with stub:
            deps.get_store()
    finally:
        deps.reset()
    assert env["AWS_ACCESS_KEY_ID"] == "ASIAEXAMPLEKEY0007"


def test_gcp_settings_are_checked_and_round_trip(tmp_path):
    from chalicelib.config import Settings
    from chalicelib.errors import ConfigError

    with pytest.raises(ConfigError, match="JOBPLANE_GCP_PROJECT must be set when vertex or gce"):
        make_settings(tmp_path, JOBPLANE_BACKENDS="vertex")
    with pytest.raises(ConfigError, match="JOBPLANE_GCP_STATUS_URI must be a gs:// URI"):
        make_settings(tmp_path, JOBPLANE_BACKENDS="gce", JOBPLANE_GCP_PROJECT="p", JOBPLANE_GCP_STATUS_URI="s3://b")
    full = make_settings(
        tmp_path,
        JOBPLANE_BACKENDS="gce,vertex",
        JOBPLANE_GCP_PROJECT="p",
        JOBPLANE_GCP_REGION="europe-west4",
        JOBPLANE_GCP_STATUS_URI="gs://b/s",
        JOBPLANE_GCE_SERVICE_ACCOUNT="vm@p.iam.gserviceaccount.com",
        JOBPLANE_AWS_ROLE_ARN="arn:aws:iam::123456789012:role/r",
    )
    assert (full.gce_zone, full.gcp_region) == ("europe-west4-a", "europe-west4")
    gcp = {k: v for k, v in full.to_env().items() if "GC" in k or "VERTEX" in k or "AWS_ROLE" in k or "WEB_ID" in k}
    again = Settings.from_env({**full.to_env(), **gcp})
    assert (again.gcp_project, again.gce_zone, again.gce_service_account, again.aws_role_arn) == (
        "p",
        "europe-west4-a",
        "vm@p.iam.gserviceaccount.com",
        "arn:aws:iam::123456789012:role/r",
    )
