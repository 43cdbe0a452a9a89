"""Failover: a launch refused for capacity or quota moves to the next candidate, waits, or fails."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib.auth import Principal
from chalicelib.errors import CapacityError, QuotaError, ValidationError
from chalicelib.jobs.model import FailureKind, JobStatus, utcnow
from chalicelib.jobs.service import JobService
from chalicelib.jobs.spec import parse_spec
from chalicelib.reaper import reconcile
from tests.factories import ScriptedBackend, make_settings, noop_spec

ALICE = Principal("alice")


def _setup(store, tmp_path, scripts):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="local,ec2,aws-batch")
    backends = {}
    for name in ("local", "ec2", "aws-batch"):
        backend = ScriptedBackend(settings, scripts.get(name, ()))
        backend.name = name
        backends[name] = backend
    return JobService(store, settings, backend_factory=lambda name, _settings: backends[name]), backends


def test_no_capacity_fails_over_to_the_next_candidate_and_records_each_attempt(memory_store, tmp_path):
    service, backends = _setup(
        memory_store,
        tmp_path,
        {
            "local": [CapacityError("InsufficientInstanceCapacity: none in us-east-1a")],
            "ec2": [QuotaError("VcpuLimitExceeded: 0 vCPUs left for G instances")],
        },
    )
    job, _ = service.submit(ALICE, noop_spec(image="train:1", fallback=["ec2", "aws-batch"]))
    assert job.status is JobStatus.LAUNCHING and job.backend == "aws-batch"
    assert job.candidates == ("local", "ec2", "aws-batch")
    assert job.planner_reason == "failover from ec2 (quota_exceeded) to aws-batch"
    assert [b.launch_calls for b in backends.values()] == [1, 1, 1]
    reasons = [e.reason for e in memory_store.history(job.job_id) if e.to_status is JobStatus.QUEUED][1:]
    assert reasons == [
        "local: InsufficientInstanceCapacity: none in us-east-1a; failing over to ec2",
        "ec2: VcpuLimitExceeded: 0 vCPUs left for G instances; failing over to aws-batch",
    ]


def test_with_no_candidate_left_the_job_waits_then_runs_when_capacity_returns(memory_store, tmp_path):
    service, backends = _setup(
        memory_store,
        tmp_path,
        {
            "local": [CapacityError("no capacity")],
            "ec2": [CapacityError("no spot capacity")],
        },
    )
    job, _ = service.submit(ALICE, noop_spec(image="train:1", fallback=["ec2"], capacity_wait_minutes=30))
    assert job.status is JobStatus.QUEUED and job.backend == "local"
    assert job.status_reason.startswith("ec2: no spot capacity; no candidate left (local, ec2); retrying until ")
    actions = reconcile(service)  # capacity is back: the scripts are used up
    assert [a.action for a in actions] == ["dispatch"]
    assert memory_store.get_job(job.job_id).status is JobStatus.LAUNCHING
    assert memory_store.get_job(job.job_id).backend == "local"


def test_past_the_capacity_wait_the_job_fails_with_no_capacity(memory_store, tmp_path):
    service, backends = _setup(memory_store, tmp_path, {"local": [CapacityError("no capacity")] * 3})
    job, _ = service.submit(ALICE, noop_spec(image="train:1", capacity_wait_minutes=5))
    assert job.status is JobStatus.QUEUED
    memory_store.update_job(job, JobStatus.QUEUED, first_refusal_at=utcnow() - timedelta(minutes=6))
    reconcile(service)
    final = memory_store.get_job(job.job_id)
    assert final.status is JobStatus.FAILED and final.failure_kind is FailureKind.NO_CAPACITY
    assert final.failure_reason == "launch failed: local: no capacity"


def test_a_fallback_that_is_not_enabled_or_cannot_run_the_job_is_refused_at_submit(memory_store, tmp_path):
    service, _ = _setup(memory_store, tmp_path, {})
    with pytest.raises(ValidationError) as err:
        service.submit(ALICE, noop_spec(image="train:1", fallback=["ec2", "sagemaker"]))
    assert err.value.details[0]["field"] == "fallback[1]"
    with pytest.raises(ValidationError) as err:
        parse_spec({"name": "j", "command": ["x"], "backend": "local", "fallback": ["auto"]})
    assert "fallback" in err.value.message


def test_failover_hands_capacity_back_to_the_pool_it_leaves(memory_store, tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="local,ec2", JOBPLANE_CAPACITY_LIMITS="local:cpu=1,ec2:cpu=1")
    backends = {n: ScriptedBackend(settings, s) for n, s in (("local", [CapacityError("full")]), ("ec2", []))}
    service = JobService(memory_store, settings, backend_factory=lambda name, _s: backends[name])
    job, _ = service.submit(ALICE, noop_spec(image="train:1", fallback=["ec2"]))
    assert job.backend == "ec2" and job.status is JobStatus.LAUNCHING
    assert memory_store.capacity_usage(["local:cpu", "ec2:cpu"]) == {"local:cpu": 0, "ec2:cpu": 1}
