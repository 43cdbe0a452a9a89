"""Metrics through the API from each cloud backend's logs: Vertex and GCE (Cloud Logging entries.list on the
fake, documented LogEntry shape), Batch and ECS (CloudWatch Logs on moto, the stream the service names)."""

from __future__ import annotations

import copy
import json
import uuid
from types import SimpleNamespace

import pytest
from botocore.stub import Stubber

from chalicelib.jobs.model import EventSource, JobEvent, JobStatus, native_name, new_job_id, utcnow
from tests.factories import (
    ApiClient,
    boto,
    gcp_env,
    gcp_fixture,
    make_history,
    make_job,
    make_settings,
    make_stores,
    put_events,
    use_stores,
)

ZONE = "us-central1-a"
VERTEX_JOB = "projects/my-project/locations/us-central1/customJobs/7788"


@pytest.fixture
def env(tmp_path, moto_endpoint, fake_gcp):
    from chalice.test import Client

    from chalicelib import deps
    from chalicelib.backends import backend_class
    from chalicelib.jobs.service import JobService

    settings = make_settings(
        tmp_path,
        moto_endpoint,
        **{
            **gcp_env(fake_gcp.endpoint),
            "JOBPLANE_STAGE": f"t{uuid.uuid4().hex[:8]}",
            "JOBPLANE_BACKENDS": "aws-batch,ecs,vertex,gce,local",
        },
    )
    built = {}

    def factory(name, s):
        if name not in built:
            built[name] = backend_class(name)(s)
        return built[name]

    stores = make_stores(settings)
    service = JobService(stores["jobs"], settings, metrics_store=stores["metrics"], backend_factory=factory)
    use_stores(settings, stores, service=service)
    import app as app_module

    with Client(app_module.app) as client:
        api = ApiClient(client, stores)
        yield SimpleNamespace(
            api=api,
            settings=settings,
            service=service,
            fake=fake_gcp,
            backend=lambda n: factory(n, settings),
            token=api.token("al"),
        )
    deps.reset()


def seed(env, backend, native_id):
    job_id = new_job_id()
    spec = {"image": "train:1", "command": ["python", "train.py"]}
    job = make_job(backend, spec, job_id, owner="al", status=JobStatus.RUNNING, started_at=utcnow())
    job = job.with_changes(native_name=native_name(job_id, 1), native_id=native_id or native_name(job_id, 1))
    env.api.store.create_job(job, make_history(job))
    return job


def get(env, path):
    response = env.api.request("GET", path, token=env.token)
    assert response.status_code == 200, response.json_body
    return response.json_body


def entry(resource_type, labels, insert_id, second, line, log_name, as_json=False):
    """A LogEntry as entries.list returns it (tests/fixtures/gcp/entries_list_page.json's shape)."""
    found = copy.deepcopy(gcp_fixture("entries_list_page.json")["entries"][1 if as_json else 0])
    found["insertId"] = insert_id
    found["logName"] = f"projects/my-project/logs/{log_name}"
    found["resource"] = {"type": resource_type, "labels": {"project_id": "my-project", **labels}}
    found["timestamp"] = f"2025-01-01T03:00:{second:02d}.000000Z"
    if as_json:
        found["jsonPayload"]["message"] = line
    else:
        found["textPayload"] = line + "\n"
    return found


def metrics_line(**values) -> str:
    return f"JOBPLANE_METRICS {json.dumps(values)}"


def check_reads(env, job, write):
    """The contract on one backend: a reconcile tick records the latest values on the job, GET
    /jobs/{id}/metrics reads on from the cursor (nothing read twice), the terminal transition reads the last
    line. `write(lines)` puts lines where the backend's service writes its job's output."""
    from chalicelib.reaper import read_metrics

    write(["starting", metrics_line(epoch=1, loss=0.9), metrics_line(epoch=2, loss=0.5)])
    assert read_metrics(env.service) == [{"metrics": {"jobs_read": 1, "errors": []}}]
    assert get(env, f"/jobs/{job.job_id}")["metrics"] == {"epoch": 2.0, "loss": 0.5}

    write([metrics_line(epoch=3, loss=0.25), "JOBPLANE_METRICS not-json"])
    body = get(env, f"/jobs/{job.job_id}/metrics")
    assert body["series"] == {"epoch": [[1, 1.0], [2, 2.0], [3, 3.0]], "loss": [[1, 0.9], [2, 0.5], [3, 0.25]]}
    assert (body["metrics"], body["malformed_lines"], body["caught_up"]) == ({"epoch": 3.0, "loss": 0.25}, 1, True)

    write([metrics_line(epoch=4, val_accuracy=0.87)])
    ended = env.service.apply_event(JobEvent(job.job_id, JobStatus.SUCCEEDED, EventSource.BACKEND, reason="done"))
    assert ended.metrics == {"epoch": 4.0, "loss": 0.25, "val_accuracy": 0.87}
    body = get(env, f"/jobs/{job.job_id}/metrics")
    assert body["series"]["epoch"] == [[1, 1.0], [2, 2.0], [3, 3.0], [4, 4.0]]
    assert body["series"]["val_accuracy"] == [[4, 0.87]]


# --- Google Cloud: Cloud Logging entries.list --------------------------------------------------------
def cloud_logging_writer(env, resource_type, labels, log_name, entry_labels=None):
    count = {"n": 0}

    def write(lines):
        for line in lines:
            count["n"] += 1
            n = count["n"]
            # Every other entry is structured (jsonPayload.message), as a Python logger's would be.
            found = entry(resource_type, labels, f"e{n:03d}", n, line, log_name, n % 2 == 0)
            env.fake.log_entries.append({**found, "labels": dict(entry_labels or {})})

    return write


def test_a_vertex_jobs_metrics_come_from_its_ml_job_entries(env):
    job = seed(env, "vertex", VERTEX_JOB)
    # Another custom job's entries are in the same project's log: the filter leaves them out.
    env.fake.log_entries.append(entry("ml_job", {"job_id": "9999"}, "x1", 1, metrics_line(epoch=99), "workerpool0-0"))
    check_reads(env, job, cloud_logging_writer(env, "ml_job", {"job_id": "7788"}, "workerpool0-0"))
    filters = {r["body"]["filter"] for r in env.fake.requests if r["path"] == "/v2/entries:list"}
    assert all(f.startswith('resource.type="ml_job" AND resource.labels.job_id="7788"') for f in filters)


def test_a_gce_vms_metrics_come_from_its_startup_script_entries(env):
    job = seed(env, "gce", None)
    env.fake.instances[(ZONE, job.native_name)] = {
        "name": job.native_name,
        "id": "4242",
        "status": "RUNNING",
        "labels": {"jobplane-job-id": job.job_id},
        "labelFingerprint": "fp-0",
    }
    env.fake.log_entries.append(
        entry("gce_instance", {"instance_id": "1111"}, "x1", 1, metrics_line(epoch=99), "google_metadata_script_runner")
    )
    writer = cloud_logging_writer(
        env,
        "gce_instance",
        {"instance_id": "4242", "zone": ZONE},
        "google_metadata_script_runner",
        {"compute.googleapis.com/resource_name": job.native_name},
    )
    check_reads(env, job, writer)
    filters = {r["body"]["filter"] for r in env.fake.requests if r["path"] == "/v2/entries:list"}
    # While the VM exists its entries are found by instance id; once the job's end deleted it, by its name.
    assert (ZONE, job.native_name) not in env.fake.instances
    by_id = 'resource.labels.instance_id="4242"'
    by_name = f'labels."compute.googleapis.com/resource_name"="{job.native_name}"'
    assert {by_id in f for f in filters} == {True, False} and all(by_id in f or by_name in f for f in filters)


# --- AWS: CloudWatch Logs on moto ----------------------------------------------------------------------
def test_a_batch_jobs_metrics_come_from_the_stream_describe_jobs_names(env):
    job = seed(env, "aws-batch", "batch-job-1")
    group, stream = "/aws/batch/job", "jp-img-x/default/0a1b2c"
    logs = boto(env.settings, "logs")
    put_events(logs, group, "jp-img-x/default/other", [metrics_line(epoch=99)])  # another job's stream
    batch = boto(env.settings, "batch")
    env.backend("aws-batch").set_client("batch", batch)
    detail = {
        "jobName": job.native_name,
        "jobId": "batch-job-1",
        "jobQueue": "q",
        "status": "RUNNING",
        "startedAt": 1,
        "jobDefinition": "arn:aws:batch:us-east-1:1:job-definition/jp-img-x:1",
        "container": {"logStreamName": stream},
    }
    with Stubber(batch) as stub:
        for _ in range(8):
            stub.add_response("describe_jobs", {"jobs": [detail]}, {"jobs": ["batch-job-1"]})
        check_reads(env, job, lambda lines: put_events(logs, group, stream, lines))


def test_an_ecs_tasks_metrics_come_from_its_awslogs_stream(env):
    arn = "arn:aws:ecs:us-east-1:123456789012:task/jobplane/0a1b2c3d4e"
    job = seed(env, "ecs", arn)
    stream = f"jobplane-{env.settings.stage}/job/0a1b2c3d4e"
    logs = boto(env.settings, "logs")
    put_events(logs, env.settings.ecs_log_group, f"jobplane-{env.settings.stage}/job/ffff", [metrics_line(epoch=99)])
    check_reads(env, job, lambda lines: put_events(logs, env.settings.ecs_log_group, stream, lines))
