"""The quota-aware queue: capacity pools, ordering, release on every end, and racing dispatchers."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from chalicelib.auth import Principal
from chalicelib.backends.base import ComputeBackend, LaunchResult
from chalicelib.errors import CapacityExhaustedError, StaleStateError, ValidationError
from chalicelib.jobs.capacity import Claim, claims_for, family_of, queue_order, units_of
from chalicelib.jobs.model import EventSource, FailureKind, JobEvent, JobStatus, Transition, utcnow
from chalicelib.jobs.service import JobService
from chalicelib.jobs.spec_types import JobSpec
from tests.factories import (
    inject_transaction_conflicts,
    make_history,
    make_job,
    make_settings,
    noop_spec,
)

ALICE = Principal("alice")


class InstantBackend(ComputeBackend):
    named_by_us = True  # keyed by the name it is given, as the local backend is
    """Launches nothing and counts launches; the tests play the provider's events."""

    name = "local"

    def __init__(self, settings):
        super().__init__(settings)
        self.launched: list[str] = []
        self._lock = threading.Lock()

    def _launch_impl(self, job, handle):
        with self._lock:
            self.launched.append(handle.native_name)
        return LaunchResult(handle.native_name)

    def _describe_impl(self, handle):
        return None

    def _cancel_impl(self, handle):
        return None


def _service(store, tmp_path, limits="local:cpu=2"):
    settings = make_settings(tmp_path, getattr(store, "endpoint", None), JOBPLANE_CAPACITY_LIMITS=limits)
    backend = InstantBackend(settings)
    return JobService(store, settings, backend_factory=lambda *_: backend), backend


def _finish(service, job, status=JobStatus.SUCCEEDED, kind=None):
    return service.apply_event(
        JobEvent(job.job_id, status, EventSource.BACKEND, failure_kind=kind, attempt=job.attempt)
    )


# --- pure ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("resources", "family", "units"),
    [
        ({}, "cpu", 1),
        ({"gpus": 4, "gpu_type": "A10G"}, "A10G", 4),
        ({"gpus": 1, "instance_type": "ml.g5.xlarge"}, "ml.g5", 1),
        ({"gpus": 8, "instance_type": "p4d.24xlarge"}, "p4d", 8),
        ({"gpus": 1, "instance_type": "a2-highgpu-1g"}, "a2-highgpu", 1),
        ({"tpu": "v5litepod-8"}, "tpu-v5litepod", 1),
    ],
)
def test_a_spec_draws_from_its_family_with_its_gpu_count(resources, family, units):
    spec = JobSpec.from_dict({"name": "n", "command": ["true"], "resources": resources})
    assert family_of(spec) == family
    assert units_of(spec) == units


def test_the_wildcard_pool_covers_gpu_families_but_not_cpu_jobs():
    limits = {"sagemaker:*": 8, "sagemaker:A10G": 4, "sagemaker:cpu": 10}
    gpu = JobSpec.from_dict({"name": "n", "command": ["true"], "resources": {"gpus": 2, "gpu_type": "A10G"}})
    assert claims_for("sagemaker", gpu, limits) == ((Claim("sagemaker:A10G", 2), 4), (Claim("sagemaker:*", 2), 8))
    assert claims_for("sagemaker", JobSpec.from_dict({"name": "n", "command": ["true"]}), limits) == (
        (Claim("sagemaker:cpu", 1), 10),
    )
    assert claims_for("ec2", gpu, limits) == ()


def test_queue_order_is_priority_then_age():
    now = utcnow()

    jobs = [
        make_job(
            spec=noop_spec("n", priority=priority),
            job_id=jid,
            owner="o",
            status=JobStatus.QUEUED,
            created_at=now - timedelta(seconds=age),
        )
        for jid, priority, age in [("a", 0, 10), ("b", 5, 1), ("c", 0, 20), ("d", -1, 99)]
    ]
    assert [j.job_id for j in sorted(jobs, key=queue_order)] == ["b", "c", "a", "d"]


# --- store: the counters move only with the job, atomically -----------------------------------
def _queued(store, name="j"):
    job = make_job("local", JobSpec.from_dict({"name": name, "command": ["true"]}), status=JobStatus.QUEUED)
    store.create_job(job, make_history(job, reason="s"))
    return job


def _launch(job, claims):
    return Transition(
        job.job_id,
        JobStatus.QUEUED,
        JobStatus.LAUNCHING,
        "go",
        EventSource.DISPATCH,
        utcnow(),
        changes={"claims": tuple(c for c, _ in claims)},
        acquire=claims,
    )


def test_store_acquires_up_to_the_limit_and_refuses_past_it(store):
    pool = [(Claim("local:cpu", 1), 2)]
    jobs = [_queued(store, f"j{i}") for i in range(3)]
    store.apply_transition(jobs[0], _launch(jobs[0], pool))
    store.apply_transition(jobs[1], _launch(jobs[1], pool))
    with pytest.raises(CapacityExhaustedError) as err:
        store.apply_transition(jobs[2], _launch(jobs[2], pool))
    assert err.value.pool == "local:cpu"
    assert store.capacity_usage(["local:cpu"]) == {"local:cpu": 2}
    assert store.get_job(jobs[2].job_id).status is JobStatus.QUEUED  # nothing written
    assert [e.to_status for e in store.history(jobs[2].job_id)] == [JobStatus.QUEUED]


def test_store_releases_with_the_terminal_write_and_a_stale_write_changes_no_counter(store):
    pool = [(Claim("local:cpu", 3), 4)]
    job = _queued(store)
    launched = store.apply_transition(job, _launch(job, pool))
    assert launched.claims == (Claim("local:cpu", 3),)
    with pytest.raises(StaleStateError):
        store.apply_transition(job, _launch(job, pool))  # a second dispatcher with the old status
    assert store.capacity_usage(["local:cpu"]) == {"local:cpu": 3}
    done = Transition(
        job.job_id,
        JobStatus.LAUNCHING,
        JobStatus.SUCCEEDED,
        "ok",
        EventSource.BACKEND,
        utcnow(),
        changes={"claims": ()},
        release=launched.claims,
    )
    store.apply_transition(launched, done)
    assert store.capacity_usage(["local:cpu"]) == {"local:cpu": 0}
    assert store.get_job(job.job_id).claims == ()
    with pytest.raises(StaleStateError):
        store.apply_transition(launched, done)  # a duplicate end releases nothing twice
    assert store.capacity_usage(["local:cpu"]) == {"local:cpu": 0}


def test_a_pool_too_small_for_the_job_refuses_it(store):
    job = _queued(store)
    with pytest.raises(CapacityExhaustedError):
        store.apply_transition(job, _launch(job, [(Claim("local:cpu", 3), 2)]))


# --- service ----------------------------------------------------------------------------------
def test_jobs_past_the_limit_wait_in_queued_with_the_reason(memory_store, tmp_path):
    service, backend = _service(memory_store, tmp_path)
    jobs = [service.submit(ALICE, noop_spec(f"j{i}"))[0] for i in range(4)]
    statuses = [memory_store.get_job(j.job_id).status for j in jobs]
    assert statuses == [JobStatus.LAUNCHING, JobStatus.LAUNCHING, JobStatus.QUEUED, JobStatus.QUEUED]
    waiting = memory_store.get_job(jobs[2].job_id)
    assert waiting.status_reason == "waiting for capacity: local:cpu is at its limit of 2"
    assert len(backend.launched) == 2


def test_a_finished_job_frees_its_capacity_for_the_oldest_queued_job(memory_store, tmp_path):
    service, backend = _service(memory_store, tmp_path, "local:cpu=1")
    first, second, third = (service.submit(ALICE, noop_spec(f"j{i}"))[0] for i in range(3))
    _finish(service, memory_store.get_job(first.job_id), JobStatus.FAILED, FailureKind.USER_ERROR)
    assert memory_store.get_job(second.job_id).status is JobStatus.LAUNCHING
    assert memory_store.get_job(third.job_id).status is JobStatus.QUEUED
    service.cancel(ALICE, second.job_id)  # CANCELLING holds the slot until the backend confirms
    assert memory_store.get_job(third.job_id).status is JobStatus.QUEUED
    _finish(service, memory_store.get_job(second.job_id), JobStatus.CANCELLED)
    assert memory_store.get_job(third.job_id).status is JobStatus.LAUNCHING
    _finish(service, memory_store.get_job(third.job_id))
    assert memory_store.capacity_usage(["local:cpu"]) == {"local:cpu": 0}


def test_priority_reorders_the_queue(memory_store, tmp_path):
    service, backend = _service(memory_store, tmp_path, "local:cpu=1")
    running = service.submit(ALICE, noop_spec("running"))[0]
    low = service.submit(ALICE, noop_spec("low"))[0]
    high = service.submit(ALICE, noop_spec("high", priority=10))[0]
    _finish(service, memory_store.get_job(running.job_id))
    assert memory_store.get_job(high.job_id).status is JobStatus.LAUNCHING
    assert memory_store.get_job(low.job_id).status is JobStatus.QUEUED


def test_a_job_bigger_than_its_pool_is_refused_at_submit(memory_store, tmp_path):
    service, _ = _service(memory_store, tmp_path, "local:cpu=0")
    with pytest.raises(ValidationError) as err:
        service.submit(ALICE, noop_spec("big"))
    assert err.value.details[0]["field"] == "resources.gpus"


def test_a_retry_gives_back_its_capacity_and_keeps_its_place_in_the_queue(memory_store, tmp_path):
    service, backend = _service(memory_store, tmp_path, "local:cpu=1")
    spot = service.submit(ALICE, noop_spec("spot", retries={"max_attempts": 2, "on": ["interruption"]}))[0]
    younger = service.submit(ALICE, noop_spec("younger"))[0]
    after = _finish(service, memory_store.get_job(spot.job_id), JobStatus.FAILED, FailureKind.INTERRUPTED)
    # The interrupted attempt released its slot; the retry is older than `younger`, so it goes first.
    assert after.status is JobStatus.LAUNCHING and after.attempt == 2
    assert backend.launched[-1] == f"jp-{spot.job_id}-a2"
    assert memory_store.get_job(younger.job_id).status is JobStatus.QUEUED
    assert memory_store.capacity_usage(["local:cpu"]) == {"local:cpu": 1}
    history = [(e.from_status, e.to_status) for e in memory_store.history(spot.job_id)]
    assert (JobStatus.LAUNCHING, JobStatus.QUEUED) in history
    _finish(service, memory_store.get_job(spot.job_id))
    assert memory_store.get_job(younger.job_id).status is JobStatus.LAUNCHING


def test_reconcile_dispatches_the_queue(memory_store, tmp_path):
    from chalicelib.reaper import reconcile

    service, backend = _service(memory_store, tmp_path, "local:cpu=1")
    first, second = (service.submit(ALICE, noop_spec(f"j{i}"))[0] for i in range(2))
    # The capacity comes free without an event reaching us (a lost event): reconcile still moves the queue.
    done = memory_store.get_job(first.job_id)
    memory_store.apply_transition(
        done,
        Transition(
            done.job_id,
            done.status,
            JobStatus.SUCCEEDED,
            "x",
            EventSource.BACKEND,
            utcnow(),
            changes={"claims": ()},
            release=done.claims,
        ),
    )
    actions = {a.job_id: a for a in reconcile(service)}
    assert actions[second.job_id].action == "dispatch"
    assert memory_store.get_job(second.job_id).status is JobStatus.LAUNCHING


def test_racing_dispatchers_never_pass_a_limit(dynamo_store, tmp_path, moto_endpoint):
    dynamo_store.endpoint = moto_endpoint
    service, backend = _service(dynamo_store, tmp_path, "local:cpu=3")
    # Fill the queue without dispatching (as if every submit had found the pool full).
    jobs = [_queued(dynamo_store, f"j{i}") for i in range(8)]
    barrier = threading.Barrier(4)
    errors = []

    def dispatcher():
        barrier.wait()
        try:
            service.dispatcher.dispatch_queued()
        except Exception as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    statuses = [dynamo_store.get_job(j.job_id).status for j in jobs]
    assert statuses.count(JobStatus.LAUNCHING) == 3
    assert statuses.count(JobStatus.QUEUED) == 5
    assert dynamo_store.capacity_usage(["local:cpu"]) == {"local:cpu": 3}
    assert len(backend.launched) == len(set(backend.launched)) == 3


def test_racing_dispatchers_under_transaction_conflicts_lose_nothing(dynamo_store, tmp_path, moto_endpoint):
    dynamo_store.endpoint = moto_endpoint
    service, backend = _service(dynamo_store, tmp_path, "local:cpu=3")
    jobs = [_queued(dynamo_store, f"j{i}") for i in range(8)]
    conflicts = inject_transaction_conflicts(dynamo_store, 6)
    barrier = threading.Barrier(4)
    errors = []

    def dispatcher():
        barrier.wait()
        try:
            service.dispatcher.dispatch_queued()
        except Exception as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert conflicts["seen"] == 6
    statuses = [dynamo_store.get_job(j.job_id).status for j in jobs]
    assert statuses.count(JobStatus.LAUNCHING) == 3
    assert statuses.count(JobStatus.QUEUED) == 5
    # No claim leaked: the counter holds exactly the launched jobs' units, and each was launched once.
    assert dynamo_store.capacity_usage(["local:cpu"]) == {"local:cpu": 3}
    assert len(backend.launched) == len(set(backend.launched)) == 3
    for job in jobs:
        history = [e.to_status for e in dynamo_store.history(job.job_id)]
        assert history in ([JobStatus.QUEUED], [JobStatus.QUEUED, JobStatus.LAUNCHING])


def test_a_release_under_a_transaction_conflict_is_written_once(dynamo_store, tmp_path, moto_endpoint):
    dynamo_store.endpoint = moto_endpoint
    service, backend = _service(dynamo_store, tmp_path, "local:cpu=1")
    job, _ = service.submit(ALICE, noop_spec("a"))
    conflicts = inject_transaction_conflicts(dynamo_store, 2)
    finished = _finish(service, job)
    assert conflicts["seen"] == 2
    assert finished.status is JobStatus.SUCCEEDED
    assert dynamo_store.capacity_usage(["local:cpu"]) == {"local:cpu": 0}
    assert [e.to_status for e in dynamo_store.history(job.job_id)].count(JobStatus.SUCCEEDED) == 1


def test_conflicts_past_the_bound_are_raised_not_retried_forever(dynamo_store, tmp_path, moto_endpoint):
    from chalicelib.errors import StoreError
    from chalicelib.store.edge import CONFLICT_TRIES

    dynamo_store.endpoint = moto_endpoint
    _service(dynamo_store, tmp_path, "local:cpu=1")
    job = _queued(dynamo_store)
    conflicts = inject_transaction_conflicts(dynamo_store, 100)
    with pytest.raises(StoreError) as raised:
        dynamo_store.apply_transition(job, _launch(job, [(Claim("local:cpu", 1), 1)]))
    assert raised.value.conflict and raised.value.retryable
    assert conflicts["seen"] == CONFLICT_TRIES
    assert dynamo_store.get_job(job.job_id).status is JobStatus.QUEUED
    assert dynamo_store.capacity_usage(["local:cpu"]) == {"local:cpu": 0}
