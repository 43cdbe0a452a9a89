"""POST /code, code_uri checked at submit, GET /jobs/{id}/artifacts, and the CLI's upload and download over them."""

from __future__ import annotations

import hashlib
import json
from argparse import Namespace
from urllib.parse import urlsplit

import boto3
import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from jobplane import cli
from jobplane.client import Client
from tests.factories import job_spec

BUCKET = "jobplane-test-artifacts"


@pytest.fixture
def s3(api, moto_endpoint):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return client


def field_of(response) -> str:
    return response.json_body["error"]["details"][0]["field"]


# --- POST /code ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sha256": "xyz", "size": 10}, "sha256"),
        ({"sha256": "A" * 64, "size": 10}, "sha256"),
        ({"size": 10}, "sha256"),
        ({"sha256": "a" * 64, "size": 0}, "size"),
        ({"sha256": "a" * 64, "size": "10"}, "size"),
        ({"sha256": "a" * 64, "size": True}, "size"),
        ({"sha256": "a" * 64, "size": 10, "name": "x"}, "name"),
        ([1], "(body)"),
    ],
)
def test_a_bad_digest_or_size_is_a_400_naming_the_field(api, s3, body, field):
    response = api.request("POST", "/code", api.token("alice"), body)
    assert response.status_code == 400, response.body
    assert field_of(response) == field


def test_code_over_the_limit_is_refused_naming_the_setting(api, s3):
    response = api.request("POST", "/code", api.token("alice"), {"sha256": "a" * 64, "size": 101 * 1024 * 1024})
    assert response.status_code == 400
    assert field_of(response) == "size"
    assert "100 MB (JOBPLANE_CODE_MAX_MB)" in response.json_body["error"]["message"]


def test_code_needs_a_token(api, s3):
    assert api.request("POST", "/code", None, {"sha256": "a" * 64, "size": 1}).status_code == 401


def test_an_upload_url_is_issued_once_and_then_the_code_exists(api, s3):
    data = b"packed code bytes"
    sha = hashlib.sha256(data).hexdigest()
    token = api.token("alice")
    first = api.request("POST", "/code", token, {"sha256": sha, "size": len(data)})
    assert first.status_code == 201, first.body
    body = first.json_body
    assert body["code_uri"] == f"s3://{BUCKET}/code/{sha}.tar.gz" and body["exists"] is False
    upload = body["upload"]
    signed = urlsplit(upload["url"]).query
    # Signature V4 over the length and the checksum: S3 accepts no other body under this key.
    assert "X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost%3Bx-amz-checksum-sha256" in signed
    assert "X-Amz-Expires=900" in signed and f"code/{sha}.tar.gz" in upload["url"]
    assert upload["headers"]["Content-Length"] == str(len(data))
    assert requests.put(upload["url"], data=data, headers=upload["headers"], timeout=10).status_code == 200
    again = api.request("POST", "/code", token, {"sha256": sha, "size": len(data)})
    assert again.status_code == 200
    assert again.json_body == {"code_uri": body["code_uri"], "exists": True, "upload": None}


# --- code_uri at submit -------------------------------------------------------------------------------


def test_a_job_naming_code_that_was_never_uploaded_is_a_400_naming_code_uri(api, s3):
    uri = f"s3://{BUCKET}/code/{'b' * 64}.tar.gz"
    response = api.request("POST", "/jobs", api.token("alice"), job_spec(code_uri=uri, code_sha256="b" * 64))
    assert response.status_code == 400
    assert field_of(response) == "code_uri"
    assert "does not exist" in response.json_body["error"]["message"]


# --- the CLI over the API (requests routed into Chalice's test client) -------------------------------


class ChaliceAdapter(BaseAdapter):
    """requests -> chalice.test.Client: the CLI's own HTTP calls, answered by the app in this process."""

    def __init__(self, api):
        super().__init__()
        self.api = api

    def send(self, request, **kwargs):
        parts = urlsplit(request.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        body = request.body or b""
        answer = getattr(self.api.client.http, request.method.lower())(
            path, headers=dict(request.headers), body=body.encode() if isinstance(body, str) else body
        )
        response = requests.Response()
        response.status_code = answer.status_code
        response.headers = CaseInsensitiveDict(answer.headers)
        response._content = answer.body
        response.request = request
        response.url = request.url
        return response

    def close(self):
        pass


def cli_client(api, token) -> tuple[Client, list[str]]:
    client = Client("http://api.test", token)
    client.session.mount("http://api.test", ChaliceAdapter(api))
    stored: list[str] = []

    def record(response, *args, **kwargs):
        assert "Authorization" not in response.request.headers  # the API token stays with the API
        stored.append(response.request.method)

    client.storage.hooks["response"].append(record)
    return client, stored


def test_submit_with_a_workdir_uploads_once_and_the_job_shows_code_and_artifacts_uri(api, s3, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('hi')\n")
    spec = tmp_path / "job.yaml"
    spec.write_text("name: with-code\nworkdir: src\nbackend: local\ncommand: [sleep, '60']\n")
    client, stored = cli_client(api, api.token("alice"))
    text, is_yaml = cli.with_uploaded_code(client, spec.read_text(), tmp_path, None, say=lambda _: None)
    document = json.loads(text)
    assert "workdir" not in document and not is_yaml
    assert document["code_uri"] == f"s3://{BUCKET}/code/{document['code_sha256']}.tar.gz"
    assert stored == ["PUT"]
    job = client.submit(text, yaml=False)
    assert (job["spec"]["code_uri"], job["spec"]["code_sha256"]) == (document["code_uri"], document["code_sha256"])
    assert job["artifacts_uri"] == f"s3://{BUCKET}/outputs/{job['job_id']}/"
    client.cancel(job["job_id"])
    # Unchanged code: the API knows the digest, nothing is uploaded.
    again, _ = cli.with_uploaded_code(client, spec.read_text(), tmp_path, None, say=lambda _: None)
    assert json.loads(again)["code_sha256"] == document["code_sha256"]
    assert stored == ["PUT"]
    # --workdir (relative to the current folder) wins over the spec's and packs that folder instead.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.py").write_text("")
    third, _ = cli.with_uploaded_code(client, spec.read_text(), tmp_path, str(tmp_path / "other"), say=print)
    assert json.loads(third)["code_sha256"] != document["code_sha256"] and stored == ["PUT", "PUT"]


def test_a_spec_without_a_workdir_is_sent_as_written(api, s3, tmp_path):
    client, stored = cli_client(api, api.token("alice"))
    text = "name: plain\ncommand: [echo, hi]\n"
    assert cli.with_uploaded_code(client, text, tmp_path, None) == (text, True)
    assert stored == []


# --- GET /jobs/{id}/artifacts ------------------------------------------------------------------------


def _job_with_outputs(api, s3, token, files: dict[str, bytes]) -> dict:
    created = api.request("POST", "/jobs", token, job_spec("outputs", command=["sleep", "60"]))
    job = created.json_body
    api.request("POST", f"/jobs/{job['job_id']}/cancel", token)
    for key, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"outputs/{job['job_id']}/{key}", Body=data)
    return job


def test_artifacts_are_listed_relative_to_artifacts_uri_with_download_urls_page_by_page(api, s3):
    token = api.token("alice")
    job = _job_with_outputs(api, s3, token, {"model.pt": b"weights", "eval/metrics.json": b"{}", "z.txt": b"z"})
    first = api.request("GET", f"/jobs/{job['job_id']}/artifacts?limit=2", token)
    assert first.status_code == 200, first.body
    page = first.json_body
    assert page["artifacts_uri"] == job["artifacts_uri"] == f"s3://{BUCKET}/outputs/{job['job_id']}/"
    assert [(a["key"], a["size"]) for a in page["artifacts"]] == [("eval/metrics.json", 2), ("model.pt", 7)]
    assert requests.get(page["artifacts"][1]["url"], timeout=10).content == b"weights"
    rest = api.request("GET", f"/jobs/{job['job_id']}/artifacts?limit=2&cursor={page['next_cursor']}", token)
    assert [a["key"] for a in rest.json_body["artifacts"]] == ["z.txt"] and rest.json_body["next_cursor"] is None


def test_artifacts_are_owner_scoped_and_a_bad_cursor_is_named(api, s3):
    token = api.token("alice")
    job = _job_with_outputs(api, s3, token, {"a": b"a"})
    assert api.request("GET", f"/jobs/{job['job_id']}/artifacts", api.token("mallory")).status_code == 404
    bad = api.request("GET", f"/jobs/{job['job_id']}/artifacts?cursor=nonsense", token)
    assert bad.status_code == 400 and field_of(bad) == "cursor"
    assert api.request("GET", f"/jobs/{job['job_id']}/artifacts?limit=0", token).status_code == 400


def _cli_artifacts(api, monkeypatch, token, job_id, download) -> int:
    client, _ = cli_client(api, token)
    monkeypatch.setattr(cli, "_client", lambda args: client)
    return cli.cmd_artifacts(Namespace(job_id=job_id, download=str(download) if download else None))


def test_jobplane_artifacts_download_keeps_relative_paths(api, s3, monkeypatch, tmp_path):
    token = api.token("alice")
    job = _job_with_outputs(api, s3, token, {"model.pt": b"weights", "eval/metrics.json": b"{}"})
    assert _cli_artifacts(api, monkeypatch, token, job["job_id"], tmp_path / "got") == 0
    assert (tmp_path / "got" / "model.pt").read_bytes() == b"weights"
    assert (tmp_path / "got" / "eval" / "metrics.json").read_bytes() == b"{}"


def test_jobplane_artifacts_refuses_a_key_that_would_leave_the_folder_and_writes_nothing(
    api, s3, monkeypatch, tmp_path
):
    token = api.token("alice")
    job = _job_with_outputs(api, s3, token, {"fine.txt": b"ok", "../escape.txt": b"evil"})
    with pytest.raises(cli.CliError, match="refusing artifact key '../escape.txt'"):
        _cli_artifacts(api, monkeypatch, token, job["job_id"], tmp_path / "got")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "got" / "fine.txt").exists()


@pytest.mark.parametrize("key", ["/etc/passwd", "a/../../b", "", "a//b", "C:/x"])
def test_safe_destination_refuses_keys_that_escape(tmp_path, key):
    with pytest.raises(cli.CliError, match="refusing artifact key"):
        cli.safe_destination(tmp_path, key)


# --- gs:// artifacts (Vertex, GCE): google-cloud-storage against the loopback fake -------------------------

GCS_BUCKET = "jobplane-test-gcs-artifacts"
SIGNER = "jobplane-api@my-project.iam.gserviceaccount.com"


@pytest.fixture
def gcs_api(tmp_path, moto_endpoint, fake_gcp, monkeypatch):
    """The app with the GCP backends enabled on the fake, and Application Default Credentials that are a
    service account key (generated here; its public half is what the fake verifies signed URLs with)."""
    from chalice.test import Client as ChaliceClient
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from chalicelib import deps
    from chalicelib.jobs.service import JobService
    from tests.factories import ApiClient, gcp_env, make_settings, make_stores, use_stores

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    info = {
        "type": "service_account",
        "project_id": "my-project",
        "private_key_id": "k1",
        "private_key": pem.decode(),
        "client_email": SIGNER,
        "client_id": "1",
        "token_uri": f"{fake_gcp.endpoint}/token",
    }
    (tmp_path / "key.json").write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    fake_gcp.signing_keys[SIGNER] = key.public_key()
    settings = make_settings(
        tmp_path, moto_endpoint, JOBPLANE_GCP_ARTIFACTS_BUCKET=GCS_BUCKET, **gcp_env(fake_gcp.endpoint)
    )
    stores = make_stores(settings)
    use_stores(settings, stores, service=JobService(stores["jobs"], settings))
    import app as app_module

    with ChaliceClient(app_module.app) as client:
        yield ApiClient(client, stores)
    deps.reset()


def _vertex_job(api, fake_gcp, files: dict[str, bytes], **spec) -> str:
    from tests.factories import make_history, make_job

    job = make_job("vertex", {"image": "us-docker.pkg.dev/p/r/train:1", **spec}, owner="alice")
    api.store.create_job(job, make_history(job, reason="seeded"))
    outputs = spec.get("outputs", f"gs://{GCS_BUCKET}/outputs/").removeprefix("gs://")
    bucket, _, prefix = outputs.partition("/")
    for key, data in files.items():
        fake_gcp.objects[(bucket, f"{prefix}{job.job_id}/{key}")] = data
    fake_gcp.objects[(bucket, f"{prefix}other-job/not-mine.txt")] = b"x"
    return job.job_id


def test_gs_artifacts_are_listed_like_s3_ones_page_by_page_with_signed_urls(gcs_api, fake_gcp):
    token = gcs_api.token("alice")
    files = {"model/weights.bin": b"weights", "eval/metrics.json": b"{}", "z.txt": b"z"}
    job_id = _vertex_job(gcs_api, fake_gcp, files)
    shown = gcs_api.request("GET", f"/jobs/{job_id}", token).json_body
    assert shown["artifacts_uri"] == f"gs://{GCS_BUCKET}/outputs/{job_id}/"  # where Vertex wrote them
    first = gcs_api.request("GET", f"/jobs/{job_id}/artifacts?limit=2", token)
    assert first.status_code == 200, first.body
    page = first.json_body
    assert page["artifacts_uri"] == shown["artifacts_uri"]
    assert [(a["key"], a["size"]) for a in page["artifacts"]] == [("eval/metrics.json", 2), ("model/weights.bin", 7)]
    assert page["artifacts"][0]["last_modified"] == "2026-01-02T03:04:05Z"
    assert set(page["artifacts"][0]) == {"key", "size", "last_modified", "url"}  # the S3 listing's shape
    url = page["artifacts"][1]["url"]
    assert "X-Goog-Algorithm=GOOG4-RSA-SHA256" in url and SIGNER.replace("@", "%40") in url
    assert requests.get(url, timeout=10).content == b"weights"  # the fake verified the V4 signature
    forged = url.replace("weights.bin", "weights.bim")
    assert requests.get(forged, timeout=10).status_code == 403
    rest = gcs_api.request("GET", f"/jobs/{job_id}/artifacts?limit=2&cursor={page['next_cursor']}", token)
    assert [a["key"] for a in rest.json_body["artifacts"]] == ["z.txt"] and rest.json_body["next_cursor"] is None
    lists = [r["query"] for r in fake_gcp.requests if r["path"] == f"/storage/v1/b/{GCS_BUCKET}/o"]
    assert [q["prefix"] for q in lists] == [f"outputs/{job_id}/"] * 2 and lists[0]["maxResults"] == "2"


def test_gs_artifacts_are_owner_scoped_a_bad_cursor_is_named_and_a_missing_bucket_is_empty(gcs_api, fake_gcp):
    token = gcs_api.token("alice")
    job_id = _vertex_job(gcs_api, fake_gcp, {"a": b"a"})
    assert gcs_api.request("GET", f"/jobs/{job_id}/artifacts", gcs_api.token("mallory")).status_code == 404
    bad = gcs_api.request("GET", f"/jobs/{job_id}/artifacts?cursor=nonsense", token)
    assert bad.status_code == 400 and field_of(bad) == "cursor"
    elsewhere = _vertex_job(gcs_api, fake_gcp, {}, outputs="gs://no-such-bucket/runs/")
    fake_gcp.fail_next.append((404, {"error": {"code": 404, "message": "The specified bucket does not exist."}}))
    empty = gcs_api.request("GET", f"/jobs/{elsewhere}/artifacts", token)
    assert empty.status_code == 200, empty.body
    assert empty.json_body == {
        "artifacts_uri": f"gs://no-such-bucket/runs/{elsewhere}/",
        "artifacts": [],
        "next_cursor": None,
    }


def test_jobplane_artifacts_downloads_gs_artifacts(gcs_api, fake_gcp, monkeypatch, tmp_path):
    token = gcs_api.token("alice")
    job_id = _vertex_job(gcs_api, fake_gcp, {"model/weights.bin": b"weights", "log.txt": b"done"})
    assert _cli_artifacts(gcs_api, monkeypatch, token, job_id, tmp_path / "got") == 0
    assert (tmp_path / "got" / "model" / "weights.bin").read_bytes() == b"weights"
    assert (tmp_path / "got" / "log.txt").read_bytes() == b"done"


def test_a_workdir_for_vertex_is_uploaded_to_cloud_storage_and_the_job_reads_it_from_there(gcs_api, fake_gcp, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('hi')\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: on-vertex\nworkdir: src\nbackend: vertex\nimage: us-docker.pkg.dev/p/r/t:1\n"
        "command: [python, train.py]\n"
    )
    client, stored = cli_client(gcs_api, gcs_api.token("alice"))
    text, _ = cli.with_uploaded_code(client, spec.read_text(), tmp_path, None, say=lambda _: None)
    document = json.loads(text)
    sha = document["code_sha256"]
    assert document["code_uri"] == f"gs://{GCS_BUCKET}/code/{sha}.tar.gz"
    assert stored == ["PUT"]  # through the V4 signed URL the fake verified
    data = fake_gcp.objects[(GCS_BUCKET, f"code/{sha}.tar.gz")]
    assert hashlib.sha256(data).hexdigest() == sha
    job = client.submit(text, yaml=False)
    assert job["backend"] == "vertex" and job["spec"]["code_uri"] == document["code_uri"]
    created = fake_gcp.bodies("POST", r"/customJobs$")[-1]
    args = created["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"]
    assert f"/gcs/{GCS_BUCKET}/code/{sha}.tar.gz" in args and sha in args  # read through Cloud Storage FUSE
    # Unchanged code: nothing uploaded again.
    cli.with_uploaded_code(client, spec.read_text(), tmp_path, None, say=lambda _: None)
    assert stored == ["PUT"]


def test_a_signed_gcs_upload_refuses_another_length_and_a_bad_backend_is_named(gcs_api, fake_gcp):
    token = gcs_api.token("alice")
    issued = gcs_api.request("POST", "/code", token, {"sha256": "b" * 64, "size": 5, "backend": "gce"})
    assert issued.status_code == 201, issued.body
    upload = issued.json_body["upload"]
    assert upload["headers"]["x-goog-content-length-range"] == "5,5"
    assert requests.put(upload["url"], data=b"123456", headers=upload["headers"], timeout=10).status_code == 400
    unsigned = {**upload["headers"], "x-goog-content-length-range": "0,999"}
    assert requests.put(upload["url"], data=b"123456", headers=unsigned, timeout=10).status_code == 403
    assert (GCS_BUCKET, "code/" + "b" * 64 + ".tar.gz") not in fake_gcp.objects
    assert requests.put(upload["url"], data=b"12345", headers=upload["headers"], timeout=10).status_code == 200
    again = gcs_api.request("POST", "/code", token, {"sha256": "b" * 64, "size": 5, "backend": "vertex"})
    assert again.status_code == 200 and again.json_body["exists"] is True
    bad = gcs_api.request("POST", "/code", token, {"sha256": "b" * 64, "size": 5, "backend": "nimbus"})
    assert bad.status_code == 400 and field_of(bad) == "backend" and "vertex" in bad.body.decode()
    off = gcs_api.request("POST", "/code", token, {"sha256": "b" * 64, "size": 5, "backend": "sagemaker"})
    assert off.status_code == 400 and field_of(off) == "backend" and "not enabled" in off.body.decode()


@pytest.mark.parametrize(
    ("code_uri", "words"),
    [
        (f"gs://{GCS_BUCKET}/code/{'c' * 64}.tar.gz", "does not exist"),  # never uploaded
        (f"s3://{BUCKET}/code/{'c' * 64}.tar.gz", "Cloud Storage only"),  # a store Vertex cannot read
    ],
)
def test_a_code_uri_vertex_cannot_read_is_refused_at_submit_naming_code_uri(gcs_api, fake_gcp, code_uri, words):
    spec = {
        "name": "x",
        "backend": "vertex",
        "image": "i:1",
        "command": ["true"],
        "code_uri": code_uri,
        "code_sha256": "c" * 64,
    }
    refused = gcs_api.request("POST", "/jobs", gcs_api.token("alice"), spec)
    assert refused.status_code == 400, refused.body
    assert field_of(refused) == "code_uri" and words in refused.body.decode()
    assert fake_gcp.bodies("POST", r"/customJobs$") == []


def test_an_endpoint_specs_backend_does_not_pick_the_code_store(api, s3, tmp_path):
    """Endpoint backends (sagemaker-serverless, ...) are not job backends: their code goes where it always did."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "serve.py").write_text("def predict(x):\n    return x\n")
    spec = "name: ep\nworkdir: src\nbackend: sagemaker-serverless\n"
    client, stored = cli_client(api, api.token("alice"))
    text, _ = cli.with_uploaded_code(client, spec, tmp_path, None, say=lambda _: None, job=False)
    assert json.loads(text)["code_uri"].startswith(f"s3://{BUCKET}/code/") and stored == ["PUT"]
    from jobplane.client import ApiError

    with pytest.raises(ApiError, match="backend"):  # as a job spec, the name is checked (and refused)
        cli.with_uploaded_code(client, spec, tmp_path, None, say=lambda _: None)
