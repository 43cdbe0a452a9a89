"""The reaper: which tagged resources are stopped, why, and that nothing else is ever touched."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest

from chalicelib.auth import Principal
from chalicelib.backends.base import PowerState, ResourceKind, Utilization
from chalicelib.backends.local.backend import LocalBackend, pid_alive
from chalicelib.errors import UnsupportedError
from chalicelib.jobs.model import EventSource, FailureKind, JobEvent, JobStatus, utcnow
from chalicelib.jobs.service import JobService
from chalicelib.reaper import EFFECTS, Action, Decision, ReapPolicy, apply, decide_resource, reconcile
from tests.factories import (
    make_job,
    make_observation,
    make_resource,
    make_settings,
    make_spec,
    resource_job,
    sleeper_spec,
)

NOW = utcnow()
POLICY = ReapPolicy(idle_gpu_percent=5, idle_minutes=30, overdue_grace_minutes=15)


def _vm(**kw):
    return make_resource(now=NOW, **kw)


BUSY = Utilization(gpu_percent=87.0, last_heartbeat=NOW - timedelta(minutes=1))


@pytest.mark.parametrize(
    ("resource", "job", "usage", "expected"),
    [
        (_vm(), None, None, ("stop_orphan", "orphaned: i-0abc has no job behind it")),
        (_vm(), resource_job(NOW, JobStatus.SUCCEEDED), None, ("stop_finished", "job is SUCCEEDED")),
        (_vm(attempt=1), resource_job(NOW, attempt=2), BUSY, ("stop_orphan", "left over from attempt 1 (job is on 2)")),
        (
            _vm(launched_at=NOW - timedelta(minutes=136)),
            resource_job(NOW, max_runtime=120),
            BUSY,
            ("stop_overdue", "running 136 min, past max_runtime_minutes plus 15 min grace"),
        ),
        (
            _vm(),
            resource_job(NOW),
            Utilization(2.5, NOW - timedelta(minutes=1)),
            ("stop_idle", "GPU utilisation 2.5% < 5% for 30 min"),
        ),
        (
            _vm(),
            resource_job(NOW),
            Utilization(None, NOW - timedelta(minutes=45)),
            ("stop_idle", "no heartbeat for 30 min"),
        ),
        (_vm(), resource_job(NOW), Utilization(None, None), ("stop_idle", "no heartbeat for 30 min")),
        (
            _vm(power=PowerState.STOPPED, state="TERMINATED"),
            None,
            None,
            ("remove_stopped", "i-0abc is TERMINATED and its job is gone"),
        ),
        (
            _vm(power=PowerState.STOPPED, state="stopped"),
            resource_job(NOW, JobStatus.FAILED),
            None,
            ("remove_stopped", "i-0abc is stopped and its job is FAILED"),
        ),
    ],
)
def test_a_tagged_vm_is_stopped_for_the_right_reason(resource, job, usage, expected):
    action = decide_resource(resource, job, NOW, POLICY, usage)
    assert (action.action, action.reason) == expected


@pytest.mark.parametrize(
    ("resource", "job", "usage"),
    [
        (_vm(), resource_job(NOW), BUSY),  # working
        (_vm(launched_at=NOW - timedelta(minutes=10)), resource_job(NOW), Utilization(0.0, None)),  # still booting
        (_vm(power=PowerState.GONE, state="ended"), None, None),  # gone: a local process that exited
        (_vm(power=PowerState.STOPPED, state="stopped"), resource_job(NOW), None),  # its job may still need it
        (_vm(kind=ResourceKind.DEVVM), None, None),  # judged by its own record
        (_vm(kind=ResourceKind.JOB, backend="sagemaker"), resource_job(NOW), None),  # a managed job: no idle notion
        (_vm(launched_at=NOW - timedelta(minutes=134)), resource_job(NOW, max_runtime=120), BUSY),  # inside the grace
    ],
)
def test_a_tagged_resource_that_should_run_is_left_alone(resource, job, usage):
    assert decide_resource(resource, job, NOW, POLICY, usage) is None


# --- the sweep, on real local processes -----------------------------------------------------------
def _wait(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _runner_pids(backend, native_id):
    import json

    folder = backend.job_dir(native_id)
    assert _wait(lambda: (folder / "runner.json").exists())
    return int((folder / "runner.pid").read_text()), json.loads((folder / "runner.json").read_text())["pid"]


def test_an_orphaned_local_process_is_stopped_and_told_why(memory_store, tmp_path):
    settings = make_settings(tmp_path)
    service = JobService(memory_store, settings)
    backend = service.backend("local")
    orphan = make_job("local", sleeper_spec(120, "ghost"), job_id="b" * 32, owner="nobody")
    backend.launch(orphan)  # a process jobplane started for a job the store does not know
    runner, job_pid = _runner_pids(backend, "jp-" + "b" * 32)
    actions = reconcile(service)
    assert [(a.action, a.reason) for a in actions] == [("stop_orphan", f"orphaned: jp-{'b' * 32} has no job behind it")]
    assert _wait(lambda: not pid_alive(job_pid) and not pid_alive(runner))
    stopped = (backend.job_dir("jp-" + "b" * 32) / "stopped_by.json").read_text()
    assert "stopped by jobplane reaper: orphaned" in stopped


def test_a_job_that_ends_has_its_process_stopped_in_the_same_invocation(memory_store, tmp_path):
    settings = make_settings(tmp_path)
    service = JobService(memory_store, settings)
    job, _ = service.submit(Principal("alice"), make_spec(**sleeper_spec(120)))
    runner, job_pid = _runner_pids(service.backend("local"), job.native_id)
    ended = service.apply_event(
        JobEvent(
            job.job_id,
            JobStatus.FAILED,
            EventSource.API,
            reason="operator says so",
            failure_kind=FailureKind.BACKEND_ERROR,
        )
    )
    assert ended.status is JobStatus.FAILED
    # release() ran inside apply_event: the stop request is already sent, no reconcile needed.
    assert (service.backend("local").job_dir(job.native_id) / "cancel").exists()
    assert _wait(lambda: not pid_alive(job_pid))


def test_another_stages_resources_are_never_listed_or_stopped(memory_store, tmp_path):
    ours = LocalBackend(make_settings(tmp_path, JOBPLANE_STAGE="prod"))
    theirs = _vm(backend="local", stage="dev", resource_id="jp-" + "c" * 32)
    with pytest.raises(UnsupportedError):
        ours.stop_resource(theirs, "should never happen")
    not_ours = _vm(backend="ec2", stage="prod")
    with pytest.raises(UnsupportedError):
        ours.stop_resource(not_ours, "another backend's resource")


def test_folders_jobplane_did_not_make_are_invisible_to_the_reaper(tmp_path):
    backend = LocalBackend(make_settings(tmp_path))
    stray = tmp_path / "jobs" / "somebody-elses-dir"
    stray.mkdir(parents=True)
    (stray / "runner.pid").write_text(str(os.getpid()))  # even a live pid: not ours, never touched
    assert backend.list_managed() == []


# --- one table from action to effect ----------------------------------------------------------------
class _Recorder:
    """The service, dispatcher and backend calls an applied decision makes, in order."""

    def __init__(self):
        self.calls = []
        self.dispatcher = self

    def stop_resource(self, target, reason=None):
        self.calls.append(("stop_resource", reason) if reason is not None else ("recancel",))

    def apply_event(self, event, current=None):
        self.calls.append(("event", event.status, event.failure_kind, event.reason))
        self.current = current

    def relaunch(self, job, reason):
        self.calls.append(("relaunch", reason))

    def stop_overdue(self, handle, reason):
        self.calls.append(("stop_overdue", handle.job_id, reason))


def test_every_action_has_one_effect_and_leaves_as_its_plain_string():
    assert set(EFFECTS) == set(Action)
    for action in Action:
        value = Decision("j", action, "r").to_dict()["action"]
        assert type(value) is str and value == action.value


@pytest.mark.parametrize(
    ("action", "calls"),
    [
        (Action.NONE, []),
        (Action.DISPATCH, []),  # served with the queue after the loop
        (Action.ERROR, []),
        (Action.RECANCEL, [("recancel",)]),
        (Action.RELAUNCH, [("relaunch", "relaunched by reconcile: why")]),
        (Action.CANCELLED, [("event", JobStatus.CANCELLED, None, "why")]),
        (Action.FAIL_LOST, [("event", JobStatus.FAILED, FailureKind.BACKEND_ERROR, "why")]),
        (
            Action.STOP_OVERRUN,
            [
                ("stop_overdue", "a" * 32, "stopped by jobplane reconcile: why"),
                ("event", JobStatus.FAILED, FailureKind.TIMEOUT, "stopped by jobplane reconcile: why"),
            ],
        ),
        (Action.STOP_ORPHAN, [("stop_resource", "stopped by jobplane reaper: why")]),
        (Action.STOP_FINISHED, [("stop_resource", "stopped by jobplane reaper: why")]),
        (Action.REMOVE_STOPPED, [("stop_resource", "stopped by jobplane reaper: why")]),
        (
            Action.STOP_OVERDUE,
            [
                ("stop_resource", "stopped by jobplane reaper: why"),
                ("event", JobStatus.FAILED, FailureKind.TIMEOUT, "stopped by jobplane reaper: why"),
            ],
        ),
        (
            Action.STOP_IDLE,
            [
                ("stop_resource", "stopped by jobplane reaper: why"),
                ("event", JobStatus.FAILED, FailureKind.IDLE, "stopped by jobplane reaper: why"),
            ],
        ),
    ],
)
def test_each_action_is_applied_by_its_entry_in_the_table(action, calls):
    recorder = _Recorder()
    apply(recorder, Decision("a" * 32, action, "why"), resource_job(NOW), resource=_vm(), backend=recorder)
    assert recorder.calls == calls


def test_an_observation_is_applied_as_reconciles_event():
    recorder = _Recorder()
    seen = make_observation(
        resource_job(NOW), JobStatus.SUCCEEDED, native_status="Completed", native_id="jp-" + "a" * 32, reason="done"
    )
    apply(recorder, Decision("a" * 32, Action.APPLY, "backend reports Completed"), resource_job(NOW), observation=seen)
    assert recorder.calls == [("event", JobStatus.SUCCEEDED, None, "done")]


def test_a_job_that_already_ended_gets_no_event_from_a_stop():
    recorder = _Recorder()
    apply(
        recorder,
        Decision("a" * 32, Action.STOP_IDLE, "why"),
        resource_job(NOW, JobStatus.SUCCEEDED),
        resource=_vm(),
        backend=recorder,
    )
    assert recorder.calls == [("stop_resource", "stopped by jobplane reaper: why")]


@pytest.mark.parametrize(
    ("minutes", "grace", "expected"),
    [
        (
            76,
            timedelta(minutes=15),
            ("stop_overrun", "running 76 min, past max_runtime_minutes (60) plus 15 min grace"),
        ),
        (74, timedelta(minutes=15), ("none", "in sync (RUNNING)")),  # within the grace
        (500, None, ("none", "in sync (RUNNING)")),  # the backend stops it itself (Batch, SageMaker, the VM agent)
    ],
)
def test_a_running_job_past_max_runtime_is_stopped_only_where_the_backend_does_not(minutes, grace, expected):
    from chalicelib.reaper import decide_reconcile

    job = resource_job(NOW, JobStatus.RUNNING, max_runtime=60).with_changes(started_at=NOW - timedelta(minutes=minutes))
    seen = make_observation(job, JobStatus.RUNNING, native_status="RUNNING")
    decision = decide_reconcile(job, seen, NOW, timedelta(minutes=10), grace)
    assert (decision.action.value, decision.reason) == expected
