"""Reconcile: heal missed events by asking backends for the truth about every active job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

from chalicelib.backends.base import Handle, ManagedResource, ResourceKind
from chalicelib.errors import BackendError, JobplaneError
from chalicelib.events import to_job_event
from chalicelib.jobs.model import EventSource, FailureKind, Job, JobEvent, JobStatus, utcnow
from chalicelib.notify.slack import drain_outbox

log = logging.getLogger("jobplane.reaper")
RELAUNCH_REASON = "relaunched by reconcile"


class Action(str, Enum):
    """Everything reconcile can decide, about an active job or about a tagged resource."""

    # --- about an active job (decide_reconcile) ---
    #: in sync with its backend, or its launch is still within the deadline
    NONE = "none"
    #: the backend reports another status: its observation goes through the state machine
    APPLY = "apply"
    #: QUEUED: served with the queue, in order, once every job was looked at
    DISPATCH = "dispatch"
    #: CANCELLING but the resource still runs: ask the backend to stop it again
    RECANCEL = "recancel"
    #: LAUNCHING with no resource past the deadline (the launch was lost): launch the same attempt again
    RELAUNCH = "relaunch"
    #: CANCELLING and the resource is gone: the cancel is done
    CANCELLED = "cancelled"
    #: the resource vanished (or a relaunch found nothing either): the job fails as a backend error
    FAIL_LOST = "fail_lost"
    # --- about a tagged resource (decide_resource) ---
    #: no job behind it, or left over from an earlier attempt
    STOP_ORPHAN = "stop_orphan"
    #: its job is terminal and it still runs
    STOP_FINISHED = "stop_finished"
    #: past max_runtime_minutes plus the grace: stopped, and the job fails as a timeout
    STOP_OVERDUE = "stop_overdue"
    #: no heartbeat or GPU use over the idle window: stopped, and the job fails as a user error
    STOP_IDLE = "stop_idle"
    #: a powered-off job VM nobody will start again (it still bills for its disk)
    REMOVE_STOPPED = "remove_stopped"
    # --- either ---
    #: asking a backend failed; recorded, and the next run tries again
    ERROR = "error"


@dataclass(frozen=True)
class Effect:
    """How an action is applied, in this order: stop the tagged resource, stop the job's resource again,
    feed the backend's observation, relaunch, then record an event of reconcile's own on the job."""

    stop_resource: bool = False
    recancel: bool = False
    observe: bool = False
    relaunch: bool = False
    to_status: JobStatus | None = None
    failure_kind: FailureKind | None = None


EFFECTS: dict[Action, Effect] = {
    Action.NONE: Effect(),
    Action.DISPATCH: Effect(),  # the queue is served in order once the loop is done
    Action.ERROR: Effect(),
    Action.APPLY: Effect(observe=True),
    Action.RECANCEL: Effect(recancel=True),
    Action.RELAUNCH: Effect(relaunch=True),
    Action.CANCELLED: Effect(to_status=JobStatus.CANCELLED),
    Action.FAIL_LOST: Effect(to_status=JobStatus.FAILED, failure_kind=FailureKind.BACKEND_ERROR),
    Action.STOP_ORPHAN: Effect(stop_resource=True),
    Action.STOP_FINISHED: Effect(stop_resource=True),
    Action.REMOVE_STOPPED: Effect(stop_resource=True),
    Action.STOP_OVERDUE: Effect(stop_resource=True, to_status=JobStatus.FAILED, failure_kind=FailureKind.TIMEOUT),
    Action.STOP_IDLE: Effect(stop_resource=True, to_status=JobStatus.FAILED, failure_kind=FailureKind.USER_ERROR),
}


@dataclass(frozen=True)
class Decision:
    """One decision about one job or resource, with the reason; recorded per item so one failure aborts nothing."""

    job_id: str
    action: Action
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "action": self.action.value, "reason": self.reason}


def decide_reconcile(job: Job, observation, now, launch_deadline: timedelta) -> Decision:
    """Pure: what to do about one active job given what its backend reports (None = no resource)."""
    if job.status is JobStatus.QUEUED:
        return Decision(job.job_id, Action.DISPATCH, job.status_reason or "queued")
    if observation is None:
        if job.status is JobStatus.CANCELLING:
            return Decision(
                job.job_id,
                Action.CANCELLED,
                f"backend {job.backend} has no resource {job.native_id or job.native_name} left",
            )
        if job.status is JobStatus.LAUNCHING:
            if (now - (job.updated_at or job.created_at)) < launch_deadline:
                return Decision(job.job_id, Action.NONE, "launch in progress")
            if not (job.status_reason or "").startswith(RELAUNCH_REASON):
                # The function died between the LAUNCHING write and the launch: launching the same
                # native name again cannot start a second job.
                return Decision(job.job_id, Action.RELAUNCH, f"no resource {job.native_name} after the launch deadline")
        return Decision(
            job.job_id, Action.FAIL_LOST, f"backend {job.backend} has no resource {job.native_id or job.native_name}"
        )
    if observation.status is not job.status:
        if job.status is JobStatus.CANCELLING and not observation.status.terminal:
            return Decision(job.job_id, Action.RECANCEL, f"still {observation.native_status} after a cancel request")
        return Decision(job.job_id, Action.APPLY, f"backend reports {observation.native_status}")
    return Decision(job.job_id, Action.NONE, f"in sync ({observation.native_status})")


@dataclass(frozen=True)
class ReapPolicy:
    """When a tagged VM is stopped from outside (the second way every GPU stops)."""

    idle_gpu_percent: float = 5.0
    idle_minutes: int = 30
    overdue_grace_minutes: int = 15

    @classmethod
    def from_settings(cls, settings) -> ReapPolicy:
        return cls(settings.idle_gpu_percent, settings.idle_minutes, settings.overdue_grace_minutes)


def decide_resource(resource, job: Job | None, now, policy: ReapPolicy, usage=None) -> Decision | None:
    """Pure: should this tagged, running resource be stopped? `job` is its job (None: no such job)."""
    key = resource.job_id or resource.resource_id
    if resource.kind is ResourceKind.DEVVM:
        return None  # dev VMs are judged by their own record (idle_minutes / max_hours)
    if not resource.running:
        if resource.stopped and resource.kind is ResourceKind.VM and (job is None or job.terminal):
            # A powered-off job VM nobody will start again still bills for its disk.
            return Decision(
                key,
                Action.REMOVE_STOPPED,
                f"{resource.resource_id} is {resource.state} and its job is {job.status.value if job else 'gone'}",
            )
        return None
    if job is None:
        return Decision(key, Action.STOP_ORPHAN, f"orphaned: {resource.resource_id} has no job behind it")
    if job.terminal:
        return Decision(key, Action.STOP_FINISHED, f"job is {job.status.value}")
    if resource.attempt is not None and resource.attempt < job.attempt:
        return Decision(key, Action.STOP_ORPHAN, f"left over from attempt {resource.attempt} (job is on {job.attempt})")
    if resource.kind is not ResourceKind.VM:
        return None
    started = resource.launched_at or job.started_at
    if started is None:
        return None
    limit = timedelta(minutes=job.spec.max_runtime_minutes + policy.overdue_grace_minutes)
    if now - started > limit:
        return Decision(
            key,
            Action.STOP_OVERDUE,
            f"running {_minutes(now - started)} min, past max_runtime_minutes "
            f"plus {policy.overdue_grace_minutes} min grace",
        )
    window = timedelta(minutes=policy.idle_minutes)
    if usage is None or now - started < window:
        return None  # too young to judge (it is still booting or pulling its image)
    if usage.last_heartbeat is None or now - usage.last_heartbeat > window:
        return Decision(key, Action.STOP_IDLE, f"no heartbeat for {policy.idle_minutes} min")
    if usage.gpu_percent is not None and usage.gpu_percent < policy.idle_gpu_percent:
        return Decision(
            key,
            Action.STOP_IDLE,
            f"GPU utilisation {usage.gpu_percent:.1f}% < {policy.idle_gpu_percent}% for {policy.idle_minutes} min",
        )
    return None


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def sweep(service, active: dict[str, Job], now) -> list[Decision]:
    """Stop tagged resources that should not run: job ended, orphaned, overdue or idle.

    Only resources listed by a backend's tag-filtered call for this stage are considered;
    anything without jobplane's tags is never seen, so never touched.
    """
    policy = ReapPolicy.from_settings(service.settings)
    decisions: list[Decision] = []
    for name in service.settings.enabled_backends:
        try:
            backend = service.backend(name)
            if not backend.reaps:
                continue
            resources = backend.list_managed()
        except JobplaneError as exc:
            decisions.append(Decision(name, Action.ERROR, f"listing {name} resources failed: {exc.message}"))
            continue
        for resource in resources:
            try:
                job = active.get(resource.job_id) if resource.job_id else None
                if job is None and resource.job_id:
                    job = service.store.get_job(resource.job_id)  # finished jobs are not in the active map
                usage = None
                if resource.kind is ResourceKind.VM and job is not None and not job.terminal:
                    usage = backend.utilization(resource, policy.idle_minutes)
                decision = decide_resource(resource, job, now, policy, usage)
                if decision is None:
                    continue
                apply(service, decision, job, resource=resource, backend=backend)
                log.info("reaper: %s %s (%s)", decision.action.value, resource.resource_id, decision.reason)
                decisions.append(decision)
            except JobplaneError as exc:
                decisions.append(Decision(resource.resource_id, Action.ERROR, exc.message))
            except Exception as exc:  # best-effort loop: one resource must not stop the sweep
                log.exception("reaping %s failed", resource.resource_id)
                decisions.append(Decision(resource.resource_id, Action.ERROR, f"{type(exc).__name__}: {exc}"))
    return decisions


def apply(
    service,
    decision: Decision,
    job: Job | None,
    *,
    observation=None,
    resource: ManagedResource | None = None,
    backend=None,
) -> None:
    """Carry out one decision through its entry in EFFECTS (the only place decisions meet I/O)."""
    effect = EFFECTS[decision.action]
    reason = decision.reason
    if effect.stop_resource:
        reason = f"stopped by jobplane reaper: {decision.reason}"
        backend.stop_resource(resource, reason)
    if effect.recancel:
        service.stop_resource(job)
    if effect.observe:
        service.apply_event(to_job_event(observation, EventSource.RECONCILE))
    if effect.relaunch:
        service.dispatcher.relaunch(job, f"{RELAUNCH_REASON}: {decision.reason}")
    if effect.to_status is not None and job is not None and not job.terminal:
        service.apply_event(
            JobEvent(
                job.job_id,
                effect.to_status,
                EventSource.RECONCILE,
                reason=reason,
                failure_kind=effect.failure_kind,
                attempt=job.attempt,
            )
        )


def reconcile_all(service, devvm_service=None) -> list[dict[str, Any]]:
    """The scheduled run: jobs (heal, sweep, queue), then dev VMs (idle, max hours)."""
    results = [d.to_dict() for d in reconcile(service)]
    results.extend(read_metrics(service))
    if devvm_service is not None:
        results.extend(devvm_service.reap())
    results.extend(drain_outbox())
    return results


def read_metrics(service) -> list[dict[str, Any]]:
    """Each RUNNING job's output read on from its metrics cursor, one logs() page of at most TICK_BYTES a job;
    a summary when anything was read or failed (nothing without a metrics store)."""
    from chalicelib.jobs.metrics_reader import TICK_BYTES, TICK_PAGES

    reader = service.metrics_reader
    if reader is None:
        return []
    read, errors = 0, []
    for job in service.store.iter_active():
        if job.status is not JobStatus.RUNNING:
            continue
        try:
            reader.catch_up(service.store, job, TICK_BYTES, TICK_PAGES)
            read += 1
        except Exception as exc:  # best-effort loop: one job's log failing must not stop the others
            log.warning("reconcile: reading metrics of %s failed: %s", job.job_id, exc)
            errors.append({"job_id": job.job_id, "error": f"{type(exc).__name__}: {exc}"})
    return [{"metrics": {"jobs_read": read, "errors": errors}}] if read or errors else []


def reconcile(service) -> list[Decision]:
    now = utcnow()
    deadline = timedelta(seconds=service.settings.launch_deadline_seconds)
    decisions: list[Decision] = []
    active: dict[str, Job] = {}
    for job in service.store.iter_active():
        active[job.job_id] = job
        try:
            obs = None
            if job.status is not JobStatus.QUEUED:
                obs = service.backend(job.backend).describe(Handle.of(job))
            decision = decide_reconcile(job, obs, now, deadline)
            apply(service, decision, job, observation=obs)
        except (BackendError, JobplaneError) as exc:
            decision = Decision(job.job_id, Action.ERROR, exc.message)
        except Exception as exc:  # best-effort loop: one broken job must not stop the others
            log.exception("reconcile of %s failed", job.job_id)
            decision = Decision(job.job_id, Action.ERROR, f"{type(exc).__name__}: {exc}")
        decisions.append(decision)
    decisions.extend(sweep(service, active, now))
    try:
        dispatched = {j.job_id: j for j in service.dispatcher.dispatch_queued()}
    except JobplaneError as exc:
        log.warning("dispatch of queued jobs failed: %s", exc.message)
        dispatched = {}
    return [
        Decision(
            a.job_id, Action.DISPATCH, f"now {dispatched[a.job_id].status.value}: {dispatched[a.job_id].status_reason}"
        )
        if a.action is Action.DISPATCH and a.job_id in dispatched
        else a
        for a in decisions
    ]
