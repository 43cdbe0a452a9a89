"""What a fresh process imports to serve its first event or request: sys.modules after a real call, not timing.

Each child is a new interpreter that answers one recorded payload as Lambda or Cloud Functions would hand it
(DynamoDB on moto, the Google APIs on the loopback fake) and prints the modules it loaded; the cold-start
work of bench/cold_start.py is pinned here as what must stay out of each path.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.factories import GCP_PROJECT as PROJECT
from tests.factories import api_event, gcp_env, pubsub_data, spec_dict
from tests.factories import gcp_fixture as load

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "tests" / "fixtures" / "events"
PLACEHOLDER = "0123456789abcdef0123456789abcdef"
ZONE = "us-central1-a"

AWS_EVENT = """
import app
result = app.on_job_state_change(payload, None)
assert result["outcome"] == "applied" and result["status"] == "SUCCEEDED", result
"""
API_REQUEST = """
import app
response = app.app(payload, None)
assert response["statusCode"] in (200, 201), response
"""
GCP_EVENT = """
sys.path.insert(0, "gcp_functions")
import main
from cloudevents.http import CloudEvent
result = main.on_job_event(CloudEvent(payload["attributes"], payload["data"]))
assert result["outcome"] == "applied", result
"""
CHILD = """
import json, os, sys
payload = json.loads(os.environ["JOBPLANE_TEST_PAYLOAD"])
{body}
print(json.dumps(sorted(sys.modules)))
"""

# Not one of these on any path below: the SDKs no first event or request calls, and the heavy parts of the
# ones they do call (boto3 itself: stores and backends use botocore through chalicelib/aws_session.py).
NEVER = ("boto3", "yaml", "slack_sdk", "grpc", "google.cloud.aiplatform", "google.cloud.compute_v1")
# Only what validates a spec (POST /jobs) may load the validator.
VALIDATION = ("pydantic", "chalicelib.jobs.spec", "annotated_types")
# No Google library on an AWS path. (`google` and `google.cloud` themselves are namespace modules that the
# google-cloud-aiplatform and functions-framework .pth files create in every interpreter at startup.)
GOOGLE = ("google.auth", "google.api_core", "google.protobuf", "google.cloud.storage", "functions_framework")
# A Cloud Function's event reads its resource by REST (chalicelib/backends/gcp/rest.py).
GOOGLE_CLIENTS = ("google.cloud.storage", "google.api_core.exceptions", "proto", "google.cloud.aiplatform_v1")


def _loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def assert_none_of(modules: set[str], prefixes: tuple[str, ...]) -> None:
    found = _loaded(modules, prefixes)
    assert not found, f"loaded {len(found)}: {' '.join(found)}"


def _world(env: dict[str, str], create_tables: bool = False) -> dict:
    from chalicelib.auth import Principal, create_token
    from chalicelib.config import Settings
    from chalicelib.jobs.service import JobService
    from chalicelib.store.tables import dynamo_stores

    settings = Settings.from_env(env)
    stores = dynamo_stores(settings)
    for store in stores.values() if create_tables else ():
        store.create_tables()
    return {
        "env": env,
        "stores": stores,
        "service": JobService(stores["jobs"], settings),
        "principal": Principal("alice"),
        "token": create_token(stores["tokens"], "alice"),
    }


@pytest.fixture(scope="module")
def aws(tmp_path_factory, moto_endpoint):
    """An AWS deployment (SageMaker enabled): tables on moto, a token, settings the children read from env."""
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": "us-east-1",
        "JOBPLANE_STAGE": "test",
        "JOBPLANE_TABLE_PREFIX": f"cold{uuid.uuid4().hex[:8]}",
        "JOBPLANE_LOCAL_STATE_DIR": str(tmp_path_factory.mktemp("cold")),
        "JOBPLANE_BACKENDS": "sagemaker",
    }
    return _world(env, create_tables=True)


@pytest.fixture(scope="module")
def gcp(aws, fake_server):
    """A Cloud Functions deployment (Vertex and GCE on the fake), on the same tables."""
    return _world({**aws["env"], **gcp_env(fake_server.endpoint), "JOBPLANE_BACKENDS": "vertex,gce"})


def _submit(world, **spec):
    from chalicelib.jobs.spec import parse_spec

    return world["service"].submit(world["principal"], parse_spec(spec_dict(**spec)))[0]


def served(world, body: str, payload: dict) -> set[str]:
    """The modules a fresh interpreter holds after serving `payload` with `body`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPLANE_")}
    env.update(world["env"], JOBPLANE_TEST_PAYLOAD=json.dumps(payload))
    code = CHILD.format(body=body)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _cloud_event(entry: dict) -> dict:
    attributes = {
        "id": str(uuid.uuid4()),
        "source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/jobplane-test-events",
        "type": "google.cloud.pubsub.topic.v1.messagePublished",
        "specversion": "1.0",
    }
    return {"attributes": attributes, "data": pubsub_data(entry)}


def test_a_first_sagemaker_state_event_loads_no_validator_and_no_unused_sdk(aws):
    job = _submit(aws, backend="sagemaker")
    recorded = (EVENTS / "sagemaker-training-job-state-change.json").read_text()
    event = json.loads(recorded.replace(PLACEHOLDER, job.job_id))
    modules = served(aws, AWS_EVENT, event)
    assert_none_of(modules, NEVER + VALIDATION + GOOGLE + ("jinja2",))
    assert "botocore.session" in modules and "pynamodb.models" in modules  # the store is really reached


def test_a_first_get_jobs_loads_no_validator_and_no_backend(aws):
    _submit(aws, backend="sagemaker")
    modules = served(aws, API_REQUEST, api_event("GET", "/jobs", aws["token"]))
    # A listed job's backend module is read for its console URL; no SDK and no other backend is.
    others = ("chalicelib.backends.aws.batch", "chalicelib.backends.aws.ecs", "chalicelib.backends.aws.ec2")
    assert_none_of(modules, NEVER + VALIDATION + others + GOOGLE + ("chalicelib.planner",))


def test_a_first_post_jobs_validates_with_pydantic_and_loads_only_its_backend(aws):
    body = spec_dict(backend="sagemaker")
    modules = served(aws, API_REQUEST, api_event("POST", "/jobs", aws["token"], body))
    assert "pydantic" in modules and "chalicelib.jobs.spec" in modules  # validated, as it must be
    assert "chalicelib.backends.aws.sagemaker" in modules
    others = ("chalicelib.backends.aws.batch", "chalicelib.backends.aws.ecs", "chalicelib.backends.gcp")
    assert_none_of(modules, NEVER + others + GOOGLE)


def test_a_first_vertex_event_reads_the_job_by_rest_without_the_client_libraries(gcp, fake_gcp):
    job = _submit(gcp, backend="vertex")
    fake_gcp.custom_jobs[job.native_id]["state"] = "JOB_STATE_SUCCEEDED"
    entry = load("logentry_vertex_ml_job.json")
    entry["resource"]["labels"]["job_id"] = job.native_id.rsplit("/", 1)[1]
    fake_gcp.requests.clear()
    modules = served(gcp, GCP_EVENT, _cloud_event(entry))
    assert_none_of(modules, NEVER + VALIDATION + GOOGLE_CLIENTS)
    assert "google.auth.transport.requests" in modules
    calls = [(r["method"], r["path"]) for r in fake_gcp.requests]
    # The custom job by REST, then (the job ended) its output's last metrics lines from Cloud Logging,
    # read before the terminal write so the final message carries them (at most 4 pages).
    assert calls[0] == ("GET", f"/v1/{job.native_id}")
    assert set(calls[1:]) <= {("POST", "/v2/entries:list")} and len(calls[1:]) <= 4


def test_a_first_gce_event_reads_and_releases_the_vm_by_rest_without_compute_v1(gcp, fake_gcp):
    job = _submit(gcp, backend="gce", resources={"spot": True})
    fake_gcp.instances[(ZONE, job.native_id)]["status"] = "TERMINATED"
    entry = load("logentry_gce_preempted.json")
    entry["protoPayload"]["resourceName"] = f"projects/{PROJECT}/zones/{ZONE}/instances/{job.native_id}"
    modules = served(gcp, GCP_EVENT, _cloud_event(entry))
    assert_none_of(modules, NEVER + VALIDATION + GOOGLE_CLIENTS)
    assert (ZONE, job.native_id) not in fake_gcp.instances  # preempted, no retries: failed and deleted


def test_the_check_sees_a_module_the_child_loads():
    # The same child with one extra import: what the assertions above look for is really reported.
    payload = base64.b64encode(b"{}").decode()
    world = {"env": {}}
    modules = served(world, "import yaml", {"unused": payload})
    assert _loaded(modules, NEVER) == ["yaml", *sorted(m for m in modules if m.startswith("yaml."))]
