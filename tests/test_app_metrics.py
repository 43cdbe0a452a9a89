"""Metrics and last lines through the API: a SageMaker job's CloudWatch streams (moto) and a local job's file."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import jsonschema
import pytest

from chalicelib.jobs.model import EventSource, JobEvent, JobStatus, native_name, new_job_id, utcnow
from tests.factories import boto, make_history, make_job, make_settings, make_stores, put_events, use_stores

GROUP = "/aws/sagemaker/TrainingJobs"


@pytest.fixture
def env(tmp_path, moto_endpoint):
    from chalice.test import Client

    from chalicelib import deps
    from chalicelib.jobs.service import JobService
    from tests.factories import ApiClient

    settings = make_settings(
        tmp_path, moto_endpoint, JOBPLANE_STAGE=f"t{uuid.uuid4().hex[:8]}", JOBPLANE_BACKENDS="sagemaker,local"
    )
    stores = make_stores(settings)
    service = JobService(stores["jobs"], settings, metrics_store=stores["metrics"])
    use_stores(settings, stores, service=service)
    import app as app_module

    with Client(app_module.app) as client:
        api = ApiClient(client, stores)
        yield SimpleNamespace(api=api, settings=settings, service=service, token=api.token("al"))
    deps.reset()


def seed(env, backend, **fields):
    job_id = new_job_id()
    spec = {"image": "train:1"} if backend == "sagemaker" else {}
    job = make_job(backend, spec, job_id=job_id, owner="al", status=JobStatus.RUNNING, started_at=utcnow())
    job = job.with_changes(native_name=native_name(job_id), native_id=native_name(job_id), **fields)
    env.api.store.create_job(job, make_history(job))
    return job


def get(env, path):
    response = env.api.request("GET", path, token=env.token)
    return response.status_code, response.json_body


def check(env, body, path):
    doc = env.api.request("GET", "/openapi.json").json_body
    schema = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.validate(body, {"components": doc["components"], **schema}, cls=jsonschema.Draft202012Validator)


def test_a_sagemaker_jobs_metrics_are_read_from_cloudwatch_on_ticks_requests_and_its_end(env):
    from chalicelib.reaper import read_metrics

    job = seed(env, "sagemaker")
    logs = boto(env.settings, "logs")
    stream = f"{job.native_name}/algo-1-1700000000"
    put_events(logs, GROUP, stream, ["downloading", 'JOBPLANE_METRICS {"epoch": 1, "loss": 0.9}'])
    assert read_metrics(env.service) == [{"metrics": {"jobs_read": 1, "errors": []}}]
    status, body = get(env, f"/jobs/{job.job_id}")
    assert (status, body["metrics"]) == (200, {"epoch": 1.0, "loss": 0.9})
    check(env, body, "/jobs/{job_id}")

    put_events(logs, GROUP, stream, ['JOBPLANE_METRICS {"epoch": 2, "loss": 0.5}', "JOBPLANE_METRICS oops"])
    status, body = get(env, f"/jobs/{job.job_id}/metrics")
    assert status == 200
    assert body == {
        "job_id": job.job_id,
        "metrics": {"epoch": 2.0, "loss": 0.5},
        "series": {"epoch": [[1, 1.0], [2, 2.0]], "loss": [[1, 0.9], [2, 0.5]]},
        "lines": 2,
        "malformed_lines": 1,
        "caught_up": True,
    }
    check(env, body, "/jobs/{job_id}/metrics")

    # The last line is written just before the job ends: the terminal transition reads it.
    put_events(logs, GROUP, stream, ['JOBPLANE_METRICS {"epoch": 3, "loss": 0.25, "val_accuracy": 0.87}'])
    ended = env.service.apply_event(JobEvent(job.job_id, JobStatus.SUCCEEDED, EventSource.BACKEND, reason="done"))
    assert ended.metrics == {"epoch": 3.0, "loss": 0.25, "val_accuracy": 0.87}
    _, body = get(env, f"/jobs/{job.job_id}/metrics")
    assert body["series"]["loss"] == [[1, 0.9], [2, 0.5], [3, 0.25]]


def test_a_failed_jobs_last_lines_are_served_and_bounded(env):
    job = seed(env, "sagemaker")
    lines = [f"step {i}" for i in range(40)] + ["Traceback (most recent call last):", "RuntimeError: CUDA OOM"]
    put_events(boto(env.settings, "logs"), GROUP, f"{job.native_name}/algo-1-1", lines)
    env.service.apply_event(JobEvent(job.job_id, JobStatus.FAILED, EventSource.BACKEND, reason="AlgorithmError"))
    status, body = get(env, f"/jobs/{job.job_id}/tail")
    assert status == 200
    assert body == {"lines": lines[-15:], "note": None}
    check(env, body, "/jobs/{job_id}/tail")
    _, body = get(env, f"/jobs/{job.job_id}/tail?lines=2")
    assert body["lines"] == lines[-2:]
    for bad in ("0", "101", "x", "²"):
        status, body = get(env, f"/jobs/{job.job_id}/tail?lines={bad}")
        assert status == 400
        assert body["error"]["details"][0]["field"] == "lines"


def test_a_job_never_started_has_no_tail_and_says_why(env):
    job = make_job("local", job_id=new_job_id(), owner="al", status=JobStatus.QUEUED, status_reason="waiting")
    env.api.store.create_job(job, make_history(job))
    assert get(env, f"/jobs/{job.job_id}/tail") == (200, {"lines": None, "note": "QUEUED: not started yet (waiting)"})
    status, body = get(env, f"/jobs/{job.job_id}/metrics")
    assert (status, body["series"], body["metrics"]) == (200, {}, {})


def test_another_users_job_metrics_and_tail_are_not_found(env):
    job = seed(env, "local")
    other = env.api.token("bob")
    for path in (f"/jobs/{job.job_id}/metrics", f"/jobs/{job.job_id}/tail"):
        response = env.api.request("GET", path, token=other)
        assert response.status_code == 404


def test_a_local_jobs_metrics_and_tail_come_from_its_file(env):
    job = seed(env, "local")
    folder = env.service.backend("local").job_dir(job.native_name)
    folder.mkdir(parents=True)
    lines = [f"JOBPLANE_METRICS {json.dumps({'epoch': e, 'val_accuracy': e / 10})}" for e in range(1, 6)]
    (folder / "output.log").write_text("\n".join(["training", *lines, "model written"]) + "\n")
    _, body = get(env, f"/jobs/{job.job_id}/metrics")
    assert body["metrics"] == {"epoch": 5.0, "val_accuracy": 0.5}
    assert [p[1] for p in body["series"]["val_accuracy"]] == [0.1, 0.2, 0.3, 0.4, 0.5]
    _, body = get(env, f"/jobs/{job.job_id}/tail?lines=2")
    assert body["lines"] == [lines[-1], "model written"]


def test_a_tick_costs_one_describe_and_one_get_log_events_per_running_sagemaker_job(env):
    from chalicelib.reaper import read_metrics

    job = seed(env, "sagemaker")
    logs = boto(env.settings, "logs")
    put_events(logs, GROUP, f"{job.native_name}/algo-1-1", ['JOBPLANE_METRICS {"loss": 1}', "epoch 1 done"])
    calls = []
    client = env.service.backend("sagemaker").client("logs")
    client.meta.events.register("before-call.cloudwatch-logs.*", lambda model, **kw: calls.append(model.name))
    read_metrics(env.service)
    assert calls == ["DescribeLogStreams", "GetLogEvents"]
    calls.clear()
    read_metrics(env.service)  # nothing new: the same two reads, and nothing written
    assert calls == ["DescribeLogStreams", "GetLogEvents"]
    assert env.api.store.get_job(job.job_id).metrics == {"loss": 1.0}
