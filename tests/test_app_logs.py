"""GET /jobs/{id}/logs on every cloud backend: written where the service writes, read back through the API."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import pytest
import requests
from botocore.stub import Stubber

from chalicelib.backends.base import Handle
from chalicelib.jobs.model import (
    EventSource,
    FailureKind,
    Job,
    JobStatus,
    native_name,
    new_job_id,
    utcnow,
)
from chalicelib.jobs.spec_types import JobSpec
from tests.factories import FIXTURES, make_history, make_job, make_settings, make_stores, put_events, use_stores

BACKENDS = "sagemaker,aws-batch,ecs,ec2,vertex,gce,local"


class Transport(requests.adapters.BaseAdapter):
    """Cloud Logging's HTTP transport, stubbed: answers each POST with the next page, keeps the bodies."""

    def __init__(self, pages):
        super().__init__()
        self.pages = list(pages)
        self.bodies = []

    def send(self, request, **kwargs):
        self.bodies.append(json.loads(request.body))
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps(self.pages.pop(0)).encode()
        response.headers["Content-Type"] = "application/json"
        response.request, response.url = request, request.url
        return response

    def close(self):
        return None


def cloud_logging(settings, pages):
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession

    from chalicelib.backends.gcp.cloudlogging import CloudLogging

    transport = Transport(pages)
    session = AuthorizedSession(AnonymousCredentials())
    session.mount("https://", transport)
    return CloudLogging(settings, session=session), transport


@pytest.fixture
def env(tmp_path, moto_endpoint):
    from chalice.test import Client

    from chalicelib import deps
    from chalicelib.backends import backend_class
    from chalicelib.jobs.service import JobService
    from tests.factories import ApiClient

    settings = make_settings(
        tmp_path,
        moto_endpoint,
        JOBPLANE_STAGE=f"t{uuid.uuid4().hex[:8]}",
        JOBPLANE_BACKENDS=BACKENDS,
        JOBPLANE_GCP_PROJECT="my-project",
        JOBPLANE_GCP_STATUS_URI="gs://status-bucket/jobs",
    )
    built = {}

    def factory(name, s):
        if name not in built:
            built[name] = backend_class(name)(s)
        return built[name]

    stores = make_stores(settings)
    use_stores(settings, stores, service=JobService(stores["jobs"], settings, backend_factory=factory))
    import app as app_module

    with Client(app_module.app) as client:
        api = ApiClient(client, stores)
        yield SimpleNamespace(api=api, settings=settings, backend=lambda n: factory(n, settings), token=api.token("al"))
    deps.reset()


def seed(env, backend, status=JobStatus.RUNNING, **fields) -> Job:
    job_id = new_job_id()
    spec = {"image": "train:1", "command": ["python", "train.py"]}
    job = make_job(backend, spec, job_id, owner="al", status=status, native_name=native_name(job_id, 1), **fields)
    env.api.store.create_job(job, make_history(job, reason="seeded"))
    return job


def finish(env, job: Job) -> None:
    from chalicelib.jobs.model import Transition

    current = env.api.store.get_job(job.job_id)
    done = Transition(job.job_id, current.status, JobStatus.SUCCEEDED, "ended", EventSource.API, utcnow())
    env.api.store.apply_transition(current, done)


def get_logs(env, job_id, offset=0) -> dict:
    response = env.api.request("GET", f"/jobs/{job_id}/logs?offset={offset}", token=env.token)
    assert response.status_code == 200, response.body
    return response.json_body


def read_all(env, job_id, offset=0):
    """Follow the offset until a call brings nothing new: (text, offset to go on from, last answer)."""
    text = ""
    for _ in range(20):
        chunk = get_logs(env, job_id, offset)
        text += chunk["text"]
        offset = chunk["next_offset"]
        if not chunk["text"]:
            return text, offset, chunk
    raise AssertionError("the log never caught up")


def boto(settings, service):
    import boto3

    return boto3.client(service, region_name=settings.region, endpoint_url=settings.aws_endpoint_url)


# --- AWS: CloudWatch Logs on the emulator ------------------------------------------------------
def test_can_read_a_sagemaker_jobs_streams_through_the_api_while_it_runs_and_after(env):
    job = seed(env, "sagemaker", native_id="x", started_at=utcnow())
    logs = boto(env.settings, "logs")
    group = "/aws/sagemaker/TrainingJobs"
    put_events(logs, group, f"{job.native_name}/algo-1-1700000000", ["downloading", "epoch 1"])
    put_events(logs, group, f"{job.native_name}/algo-1-1700000900", ["restarted after spot"])
    put_events(logs, group, f"{native_name(new_job_id(), 1)}/algo-1-1700000000", ["another job's line"])

    text, offset, last = read_all(env, job.job_id)
    assert text == "downloading\nepoch 1\nrestarted after spot\n"
    assert isinstance(offset, str) and offset.startswith("t~")
    assert last["complete"] is False  # still RUNNING: more may come

    put_events(logs, group, f"{job.native_name}/algo-1-1700000900", ["epoch 2", "done"])
    finish(env, job)
    more, offset, last = read_all(env, job.job_id, offset)
    assert more == "epoch 2\ndone\n"
    assert last["complete"] is True


def test_a_sagemaker_log_pages_one_small_page_at_a_time(env):
    job = seed(env, "sagemaker", native_id="x")
    put_events(boto(env.settings, "logs"), "/aws/sagemaker/TrainingJobs", f"{job.native_name}/algo-1-1", list("abc"))
    backend, offset, pages = env.backend("sagemaker"), 0, []
    for _ in range(5):
        chunk = backend.logs(Handle.of(job), offset, limit=100)  # one event a page
        pages.append(chunk.text)
        offset = chunk.next_offset
    assert pages == ["a\n", "b\n", "c\n", "", ""]


def test_can_read_a_batch_jobs_attempt_streams_named_by_describe_jobs(env):
    job = seed(env, "aws-batch", native_id="batch-job-1", started_at=utcnow())
    group = "/custom/batch"
    logs = boto(env.settings, "logs")
    put_events(logs, group, "jp-img-x/default/task1", ["attempt 1 line"])
    put_events(logs, group, "jp-img-x/default/task2", ["attempt 2 line", "finished"])
    batch = boto(env.settings, "batch")
    backend = env.backend("aws-batch")
    backend.set_client("batch", batch)
    detail = {
        "jobName": job.native_name,
        "jobId": "batch-job-1",
        "jobQueue": "q",
        "status": "SUCCEEDED",
        "startedAt": 1,
        "jobDefinition": "arn:aws:batch:us-east-1:1:job-definition/jp-img-x:1",
        "attempts": [{"container": {"logStreamName": "jp-img-x/default/task1"}}],
        "container": {
            "logStreamName": "jp-img-x/default/task2",
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": group}},
        },
    }
    with Stubber(batch) as stub:
        for _ in range(4):
            stub.add_response("describe_jobs", {"jobs": [detail]}, {"jobs": ["batch-job-1"]})
        finish(env, job)
        text, _, last = read_all(env, job.job_id)
    assert text == "attempt 1 line\nattempt 2 line\nfinished\n"
    assert last["complete"] is True


def test_can_read_an_ecs_tasks_awslogs_stream(env):
    arn = "arn:aws:ecs:us-east-1:123456789012:task/jobplane/0a1b2c3d4e"
    job = seed(env, "ecs", native_id=arn, started_at=utcnow())
    stream = f"jobplane-{env.settings.stage}/job/0a1b2c3d4e"
    logs = boto(env.settings, "logs")
    assert get_logs(env, job.job_id)["text"] == ""  # the task has written nothing yet: no stream
    put_events(logs, env.settings.ecs_log_group, stream, ["hello from ecs"])
    text, offset, _ = read_all(env, job.job_id)
    assert text == "hello from ecs\n"
    put_events(logs, env.settings.ecs_log_group, stream, ["second"])
    assert read_all(env, job.job_id, offset)[0] == "second\n"


def test_the_ecs_task_definition_sends_output_to_the_log_group(env):
    backend = env.backend("ecs")
    spec = JobSpec.from_dict({"name": "train", "image": "train:1", "command": ["python"]})
    arn = backend.task_definition(spec)
    found = boto(env.settings, "ecs").describe_task_definition(taskDefinition=arn)["taskDefinition"]
    assert found["containerDefinitions"][0]["logConfiguration"] == {
        "logDriver": "awslogs",
        "options": {
            "awslogs-group": env.settings.ecs_log_group,
            "awslogs-region": env.settings.region,
            "awslogs-stream-prefix": f"jobplane-{env.settings.stage}",
        },
    }


def test_can_read_an_ec2_jobs_shipped_log_while_running_and_after(env):
    job = seed(env, "ec2", native_id="i-0abc", started_at=utcnow())
    backend = env.backend("ec2")
    s3 = boto(env.settings, "s3")
    s3.create_bucket(Bucket=env.settings.artifacts_bucket)
    prefix = backend.status_uri(Handle.of(job)).split("/", 3)[3]

    first = get_logs(env, job.job_id)
    assert first["text"] == "" and first["note"] == "the VM has not shipped a log yet (it uploads each minute)"

    s3.put_object(Bucket=env.settings.artifacts_bucket, Key=prefix + "log.txt", Body=b"step 1\n")
    text, offset, last = read_all(env, job.job_id)
    assert (text, offset, last["complete"]) == ("step 1\n", 7, False)

    s3.put_object(Bucket=env.settings.artifacts_bucket, Key=prefix + "log.txt", Body=b"step 1\nstep 2\nbye\n")
    s3.put_object(Bucket=env.settings.artifacts_bucket, Key=prefix + "status.json", Body=b'{"exit_code": 0}')
    finish(env, job)
    text, offset, last = read_all(env, job.job_id, offset)
    assert (text, offset, last["complete"]) == ("step 2\nbye\n", 18, True)


# --- Google Cloud: entries.list with its transport stubbed ---------------------------------------
def page(log_name, resource_type, token=None):
    body = json.loads((FIXTURES / "gcp" / "entries_list_page.json").read_text())
    for entry in body["entries"]:
        entry["logName"] = entry["logName"].replace("LOG_NAME", log_name)
        entry["resource"]["type"] = resource_type
    if token is None:
        body.pop("nextPageToken")
    else:
        body["nextPageToken"] = token
    return body


def test_can_read_a_vertex_jobs_entries_paging_and_then_following(env):
    name = "projects/my-project/locations/us-central1/customJobs/7788"
    job = seed(env, "vertex", native_id=name, started_at=utcnow())
    last_page = page("workerpool0-0", "ml_job")
    last_page["entries"] = last_page["entries"][:1]
    client, transport = cloud_logging(
        env.settings, [page("workerpool0-0", "ml_job", "PAGE2"), last_page, {"entries": []}]
    )
    env.backend("vertex").cloud_logging = client
    text, offset, last = read_all(env, job.job_id)
    assert text == "epoch 1 loss 0.9\nepoch 2 loss 0.5\nepoch 1 loss 0.9\n"
    job_filter = 'resource.type="ml_job" AND resource.labels.job_id="7788"'
    assert transport.bodies[0] == {
        "resourceNames": ["projects/my-project"],
        "filter": job_filter,
        "orderBy": "timestamp asc",
        "pageSize": 655,
    }
    assert transport.bodies[1]["pageToken"] == "PAGE2" and transport.bodies[1]["filter"] == job_filter
    # After the last page, a new listing starts after the last entry seen.
    assert "pageToken" not in transport.bodies[2]
    assert transport.bodies[2]["filter"] == (
        f'{job_filter} AND (timestamp > "2025-01-01T03:00:00.000000Z" OR '
        '(timestamp = "2025-01-01T03:00:00.000000Z" AND insertId > "a1"))'
    )
    assert last["complete"] is False


def test_can_read_a_gce_vms_startup_script_entries(env):
    class Compute:
        def get(self, project, zone, instance):
            return SimpleNamespace(id=4242, name=instance)

    job = seed(env, "gce", native_id="x", started_at=utcnow())
    backend = env.backend("gce")
    backend._client = Compute()
    client, transport = cloud_logging(env.settings, [page("google_metadata_script_runner", "gce_instance")])
    backend.cloud_logging = client
    finish(env, job)
    chunk = get_logs(env, job.job_id)
    assert chunk["text"] == "epoch 1 loss 0.9\nepoch 2 loss 0.5\n" and chunk["complete"] is True
    assert transport.bodies[0]["filter"] == (
        'resource.type="gce_instance" AND resource.labels.instance_id="4242" AND '
        'logName=("projects/my-project/logs/google_metadata_script_runner" OR '
        '"projects/my-project/logs/GCEMetadataScripts")'
    )


# --- a job that never started -------------------------------------------------------------------
def test_a_queued_job_says_what_it_waits_for(env):
    job = seed(env, "sagemaker", JobStatus.QUEUED, status_reason="waiting for capacity: gpu is at its limit of 2")
    chunk = get_logs(env, job.job_id)
    assert chunk == {
        "text": "",
        "next_offset": 0,
        "complete": False,
        "note": "QUEUED: not started yet (waiting for capacity: gpu is at its limit of 2)",
    }


def test_a_job_that_failed_at_launch_says_why(env):
    job = seed(
        env,
        "sagemaker",
        JobStatus.FAILED,
        failure_kind=FailureKind.QUOTA,
        failure_reason="ResourceLimitExceeded: ml.g5.xlarge",
    )
    chunk = get_logs(env, job.job_id)
    assert chunk["text"] == "" and chunk["complete"] is True
    assert chunk["note"] == "FAILED before it started (quota): ResourceLimitExceeded: ml.g5.xlarge"


def test_a_launching_job_says_it_has_not_started(env):
    job = seed(env, "ecs", JobStatus.LAUNCHING)
    assert get_logs(env, job.job_id)["note"] == "LAUNCHING on ecs: the job's process has not started yet"


def test_an_offset_from_another_backend_is_400_naming_the_offset(env):
    job = seed(env, "ec2", native_id="i-0abc", started_at=utcnow())
    from chalicelib.backends.base import encode_log_token

    response = env.api.request("GET", f"/jobs/{job.job_id}/logs?offset={encode_log_token({'i': 0})}", token=env.token)
    assert response.status_code == 400
    assert response.json_body["error"]["details"][0]["field"] == "offset"
