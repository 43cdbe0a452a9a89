"""Dispatch on its own: a failed launch becomes one FAILED event, handed to the service's state machine."""

from __future__ import annotations

import pytest

from chalicelib.errors import BackendError, CapacityError, QuotaError
from chalicelib.jobs.dispatch import Dispatcher, launch_failure
from chalicelib.jobs.model import EventSource, FailureKind, Job, JobStatus
from tests.factories import ScriptedBackend, make_history, make_job, make_settings


def _queued(store) -> Job:
    spec = {"name": "j", "command": ["true"], "image": "train:1"}
    job = make_job("local", spec, status=JobStatus.QUEUED, candidates=("local",))
    store.create_job(job, make_history(job, reason="seeded"))
    return job


def test_a_failed_launch_is_a_failed_event_from_dispatch_for_the_jobs_attempt(memory_store):
    job = _queued(memory_store).with_changes(attempt=2)
    event = launch_failure(job, "bad image", FailureKind.USER_ERROR)
    assert (event.job_id, event.status, event.source) == (job.job_id, JobStatus.FAILED, EventSource.DISPATCH)
    assert (event.reason, event.failure_kind, event.attempt) == ("launch failed: bad image", FailureKind.USER_ERROR, 2)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # refused outright: the backend's own words
        (BackendError("InvalidParameterValue: no such image"), "launch failed: InvalidParameterValue: no such image"),
        # refused for capacity or quota with no candidate left and no wait: the backend is named too
        (CapacityError("no spot capacity"), "launch failed: local: no spot capacity"),
        (QuotaError("VcpuLimitExceeded"), "launch failed: local: VcpuLimitExceeded"),
    ],
)
def test_every_way_a_launch_fails_reaches_the_service_as_the_same_event(memory_store, tmp_path, error, expected):
    settings = make_settings(tmp_path)
    backend = ScriptedBackend(settings, [error])
    applied = []
    dispatcher = Dispatcher(memory_store, settings, lambda _name: backend, lambda event: applied.append(event))
    job = _queued(memory_store)
    after = dispatcher.dispatch(job)
    assert backend.launch_calls == 1
    (event,) = applied
    fields = (event.job_id, event.status, event.source, event.reason, event.failure_kind, event.attempt)
    assert fields == (job.job_id, JobStatus.FAILED, EventSource.DISPATCH, expected, FailureKind(error.failure_kind), 1)
    assert after.status is JobStatus.LAUNCHING  # the stub state machine applied nothing: dispatch wrote no FAILED
