"""Fault injection: crashes between steps, DynamoDB throttling, provider capacity and quota errors.

The promise under test: no job is lost, no launch happens twice.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from chalicelib.auth import Principal
from chalicelib.errors import CapacityError, QuotaError
from chalicelib.jobs.model import FailureKind, JobStatus, utcnow
from chalicelib.jobs.service import JobService
from chalicelib.reaper import reconcile
from tests.factories import ScriptedBackend, make_history, make_job, make_settings, noop_spec

ALICE = Principal("alice")


def _setup(store, tmp_path, script=(), **env):
    settings = make_settings(tmp_path, getattr(store, "endpoint", None), **env)
    backend = ScriptedBackend(settings, script)
    return JobService(store, settings, backend_factory=lambda *_: backend), backend


def _age(store, job, seconds):
    """Pretend the job's last write happened `seconds` ago (the launch deadline counts from it)."""
    return store.update_job(job, job.status, updated_at=utcnow() - timedelta(seconds=seconds))


def test_a_crash_between_the_launching_write_and_the_launch_is_relaunched_once(memory_store, tmp_path):
    service, backend = _setup(memory_store, tmp_path, script=["crash"], JOBPLANE_LAUNCH_DEADLINE_SECONDS="60")
    with pytest.raises(SystemExit):
        service.submit(ALICE, noop_spec())
    (job,) = memory_store.iter_active()
    assert job.status is JobStatus.LAUNCHING and backend.resources == {}
    assert reconcile(service)[0].action == "none"  # inside the deadline: the launch may still be under way
    _age(memory_store, job, 120)
    actions = reconcile(service)
    assert [a.action for a in actions] == ["relaunch"]
    assert list(backend.resources) == [job.native_id]
    assert reconcile(service)[0].action == "apply"  # the relaunched resource reports RUNNING
    assert memory_store.get_job(job.job_id).status is JobStatus.RUNNING
    assert backend.launch_calls == 2 and len(backend.resources) == 1


def test_a_launch_lost_twice_fails_instead_of_looping(memory_store, tmp_path):
    service, backend = _setup(memory_store, tmp_path, script=["crash", "crash"])
    with pytest.raises(SystemExit):
        service.submit(ALICE, noop_spec())
    (job,) = memory_store.iter_active()
    _age(memory_store, job, 3600)
    with pytest.raises(SystemExit):
        reconcile(service)
    job = _age(memory_store, memory_store.get_job(job.job_id), 3600)
    assert [a.action for a in reconcile(service)] == ["fail_lost"]
    final = memory_store.get_job(job.job_id)
    assert final.status is JobStatus.FAILED and final.failure_kind is FailureKind.BACKEND_ERROR


def test_a_resource_launched_before_a_crash_is_adopted_not_launched_again(memory_store, tmp_path):
    service, backend = _setup(memory_store, tmp_path)
    job, _ = service.submit(ALICE, noop_spec())
    _age(memory_store, memory_store.get_job(job.job_id), 3600)
    assert [a.action for a in reconcile(service)] == ["apply"]
    assert memory_store.get_job(job.job_id).status is JobStatus.RUNNING
    assert backend.launch_calls == 1


def test_concurrent_dispatches_of_one_job_launch_it_once(dynamo_store, tmp_path, moto_endpoint):
    dynamo_store.endpoint = moto_endpoint
    service, backend = _setup(dynamo_store, tmp_path)
    job = make_job("local", noop_spec("j"), status=JobStatus.QUEUED)
    dynamo_store.create_job(job, make_history(job, reason="s"))
    barrier = threading.Barrier(6)

    def go():
        barrier.wait()
        service.dispatcher.dispatch(job)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert backend.launch_calls == 1
    assert [e.to_status for e in dynamo_store.history(job.job_id)] == [JobStatus.QUEUED, JobStatus.LAUNCHING]


def test_concurrent_dispatches_meeting_transaction_conflicts_launch_once(dynamo_store, tmp_path, moto_endpoint):
    """Single writes that meet another transaction answer TransactionConflictException; they are written again."""
    from tests.factories import inject_transaction_conflicts

    dynamo_store.endpoint = moto_endpoint
    service, backend = _setup(dynamo_store, tmp_path)
    job = make_job("local", noop_spec("j"), status=JobStatus.QUEUED)
    dynamo_store.create_job(job, make_history(job, reason="s"))
    conflicts = inject_transaction_conflicts(dynamo_store, 4, operations=("UpdateItem", "PutItem"))
    barrier = threading.Barrier(4)
    errors = []

    def go():
        barrier.wait()
        try:
            service.dispatcher.dispatch(job)
        except Exception as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and conflicts["seen"] == 4
    assert backend.launch_calls == 1
    assert dynamo_store.get_job(job.job_id).status is JobStatus.LAUNCHING
    assert [e.to_status for e in dynamo_store.history(job.job_id)] == [JobStatus.QUEUED, JobStatus.LAUNCHING]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (CapacityError("InsufficientInstanceCapacity: no g5.xlarge in us-east-1a"), FailureKind.NO_CAPACITY),
        (QuotaError("ResourceLimitExceeded: ml.g5.xlarge for training job usage is 0"), FailureKind.QUOTA),
    ],
)
def test_capacity_and_quota_errors_fail_the_job_with_the_provider_message(memory_store, tmp_path, error, kind):
    service, backend = _setup(memory_store, tmp_path, script=[error])
    job, _ = service.submit(ALICE, noop_spec())
    assert job.status is JobStatus.FAILED
    assert job.failure_kind is kind
    assert error.message in job.failure_reason


def test_a_capacity_error_is_retried_when_the_spec_asks(memory_store, tmp_path):
    service, backend = _setup(memory_store, tmp_path, script=[CapacityError("no capacity")])
    job, _ = service.submit(ALICE, noop_spec(retries={"max_attempts": 2, "on": ["capacity"]}))
    assert job.status is JobStatus.LAUNCHING and job.attempt == 2
    assert list(backend.resources) == [f"jp-{job.job_id}-a2"]


def test_dynamodb_throttling_is_retried_and_loses_nothing(dynamo_store, tmp_path, moto_endpoint):
    """The first writes answer ThrottlingException (HTTP 400), as DynamoDB does under load."""
    from botocore.awsrequest import AWSResponse

    dynamo_store.endpoint = moto_endpoint
    service, backend = _setup(dynamo_store, tmp_path)
    throttled = {"left": 3, "seen": 0}

    class _Raw:
        def stream(self, **_):
            yield b""

    def throttle(request, **_):
        if throttled["left"] > 0:
            throttled["left"] -= 1
            throttled["seen"] += 1
            body = b'{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate exceeded"}'
            response = AWSResponse(request.url, 400, {"x-amzn-requestid": "throttled"}, _Raw())
            response._content = body
            return response
        return None

    clients = {m._get_connection().connection.client for m in dynamo_store.models.values()}
    for client in clients:
        client.meta.events.register("before-send.dynamodb.PutItem", throttle)
        client.meta.events.register("before-send.dynamodb.UpdateItem", throttle)
    job, created = service.submit(ALICE, noop_spec())
    assert created and throttled["seen"] == 3
    stored = dynamo_store.get_job(job.job_id)
    assert stored.status is JobStatus.LAUNCHING
    assert [e.to_status for e in dynamo_store.history(job.job_id)] == [JobStatus.QUEUED, JobStatus.LAUNCHING]
    assert backend.launch_calls == 1
