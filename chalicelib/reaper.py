"""Reconcile: heal missed events by asking backends for the truth about every active job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chalicelib.backends.base import Handle
from chalicelib.errors import BackendError, JobplaneError
from chalicelib.events import to_job_event
from chalicelib.jobs.model import EventSource, FailureKind, Job, JobEvent, JobStatus, utcnow

log = logging.getLogger("jobplane.reaper")
RELAUNCH_REASON = "relaunched by reconcile"


@dataclass(frozen=True)
class Action:
    """One decision about one job, with the reason; recorded per job so one failure aborts nothing."""

    job_id: str
    action: str  # "none" | "apply" | "dispatch" | "recancel" | "relaunch" | "cancelled" | "fail_lost" | "error"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "action": self.action, "reason": self.reason}


def decide_reconcile(job: Job, observation, now, launch_deadline: timedelta) -> Action:
    """Pure: what to do about one active job given what its backend reports (None = no resource)."""
    if job.status is JobStatus.QUEUED:
        return Action(job.job_id, "dispatch", job.status_reason or "queued")
    if observation is None:
        if job.status is JobStatus.CANCELLING:
            return Action(
                job.job_id,
                "cancelled",
                f"backend {job.backend} has no resource {job.native_id or job.native_name} left",
            )
        if job.status is JobStatus.LAUNCHING:
            if (now - (job.updated_at or job.created_at)) < launch_deadline:
                return Action(job.job_id, "none", "launch in progress")
            if not (job.status_reason or "").startswith(RELAUNCH_REASON):
                # The function died between the LAUNCHING write and the launch: launching the same
                # native name again cannot start a second job.
                return Action(job.job_id, "relaunch", f"no resource {job.native_name} after the launch deadline")
        return Action(
            job.job_id, "fail_lost", f"backend {job.backend} has no resource {job.native_id or job.native_name}"
        )
    if observation.status is not job.status:
        if job.status is JobStatus.CANCELLING and not observation.status.terminal:
            return Action(job.job_id, "recancel", f"still {observation.native_status} after a cancel request")
        return Action(job.job_id, "apply", f"backend reports {observation.native_status}")
    return Action(job.job_id, "none", f"in sync ({observation.native_status})")


@dataclass(frozen=True)
class ReapPolicy:
    """When a tagged VM is stopped from outside (the second way every GPU stops)."""

    idle_gpu_percent: float = 5.0
    idle_minutes: int = 30
    overdue_grace_minutes: int = 15

    @classmethod
    def from_settings(cls, settings) -> ReapPolicy:
        return cls(settings.idle_gpu_percent, settings.idle_minutes, settings.overdue_grace_minutes)


def decide_resource(resource, job: Job | None, now, policy: ReapPolicy, usage=None) -> Action | None:
    """Pure: should this tagged, running resource be stopped? `job` is its job (None: no such job)."""
    key = resource.job_id or resource.resource_id
    if resource.kind == "devvm":
        return None  # dev VMs are judged by their own record (idle_minutes / max_hours)
    if not resource.running:
        if resource.stopped and resource.kind == "vm" and (job is None or job.terminal):
            # A powered-off job VM nobody will start again still bills for its disk.
            return Action(
                key,
                "remove_stopped",
                f"{resource.resource_id} is {resource.state} and its job is {job.status.value if job else 'gone'}",
            )
        return None
    if job is None:
        return Action(key, "stop_orphan", f"orphaned: {resource.resource_id} has no job behind it")
    if job.terminal:
        return Action(key, "stop_finished", f"job is {job.status.value}")
    if resource.attempt is not None and resource.attempt < job.attempt:
        return Action(key, "stop_orphan", f"left over from attempt {resource.attempt} (job is on {job.attempt})")
    if resource.kind != "vm":
        return None
    started = resource.launched_at or job.started_at
    if started is None:
        return None
    limit = timedelta(minutes=job.spec.max_runtime_minutes + policy.overdue_grace_minutes)
    if now - started > limit:
        return Action(
            key,
            "stop_overdue",
            f"running {_minutes(now - started)} min, past max_runtime_minutes "
            f"plus {policy.overdue_grace_minutes} min grace",
        )
    window = timedelta(minutes=policy.idle_minutes)
    if usage is None or now - started < window:
        return None  # too young to judge (it is still booting or pulling its image)
    if usage.last_heartbeat is None or now - usage.last_heartbeat > window:
        return Action(key, "stop_idle", f"no heartbeat for {policy.idle_minutes} min")
    if usage.gpu_percent is not None and usage.gpu_percent < policy.idle_gpu_percent:
        return Action(
            key,
            "stop_idle",
            f"GPU utilisation {usage.gpu_percent:.1f}% < {policy.idle_gpu_percent}% for {policy.idle_minutes} min",
        )
    return None


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def sweep(service, active: dict[str, Job], now) -> list[Action]:
    """Stop tagged resources that should not run: job ended, orphaned, overdue or idle.

    Only resources listed by a backend's tag-filtered call for this stage are considered;
    anything without jobplane's tags is never seen, so never touched.
    """
    policy = ReapPolicy.from_settings(service.settings)
    actions: list[Action] = []
    for name in service.settings.enabled_backends:
        try:
            backend = service.backend(name)
            if not backend.reaps:
                continue
            resources = backend.list_managed()
        except JobplaneError as exc:
            actions.append(Action(name, "error", f"listing {name} resources failed: {exc.message}"))
            continue
        for resource in resources:
            try:
                job = active.get(resource.job_id) if resource.job_id else None
                if job is None and resource.job_id:
                    job = service.store.get_job(resource.job_id)  # finished jobs are not in the active map
                usage = None
                if resource.kind == "vm" and job is not None and not job.terminal:
                    usage = backend.utilization(resource, policy.idle_minutes)
                action = decide_resource(resource, job, now, policy, usage)
                if action is None:
                    continue
                reason = f"stopped by jobplane reaper: {action.reason}"
                backend.stop_resource(resource, reason)
                if job is not None and not job.terminal and action.action in ("stop_overdue", "stop_idle"):
                    kind = FailureKind.TIMEOUT if action.action == "stop_overdue" else FailureKind.USER_ERROR
                    service.apply_event(
                        JobEvent(
                            job.job_id,
                            JobStatus.FAILED,
                            EventSource.RECONCILE,
                            reason=reason,
                            failure_kind=kind,
                            attempt=job.attempt,
                        )
                    )
                log.info("reaper: %s %s (%s)", action.action, resource.resource_id, action.reason)
                actions.append(action)
            except JobplaneError as exc:
                actions.append(Action(resource.resource_id, "error", exc.message))
            except Exception as exc:  # best-effort loop: one resource must not stop the sweep
                log.exception("reaping %s failed", resource.resource_id)
                actions.append(Action(resource.resource_id, "error", f"{type(exc).__name__}: {exc}"))
    return actions


def reconcile_all(service, devvm_service=None) -> list[dict[str, Any]]:
    """The scheduled run: jobs (heal, sweep, queue), then dev VMs (idle, max hours)."""
    results = [a.to_dict() for a in reconcile(service)]
    if devvm_service is not None:
        results.extend(devvm_service.reap())
    return results


def reconcile(service) -> list[Action]:
    now = utcnow()
    deadline = timedelta(seconds=service.settings.launch_deadline_seconds)
    actions: list[Action] = []
    active: dict[str, Job] = {}
    for job in service.store.iter_active():
        active[job.job_id] = job
        try:
            obs = None
            if job.status is not JobStatus.QUEUED:
                obs = service.backend(job.backend).describe(Handle.of(job))
            action = decide_reconcile(job, obs, now, deadline)
            if action.action == "dispatch":
                pass  # the queue is served in order once the loop is done
            elif action.action == "apply":
                service.apply_event(to_job_event(obs, EventSource.RECONCILE))
            elif action.action == "recancel":
                service.stop_resource(job)
            elif action.action == "relaunch":
                service.relaunch(job, f"{RELAUNCH_REASON}: {action.reason}")
            elif action.action == "cancelled":
                service.apply_event(
                    JobEvent(
                        job.job_id,
                        JobStatus.CANCELLED,
                        EventSource.RECONCILE,
                        reason=action.reason,
                        attempt=job.attempt,
                    )
                )
            elif action.action == "fail_lost":
                service.apply_event(
                    JobEvent(
                        job.job_id,
                        JobStatus.FAILED,
                        EventSource.RECONCILE,
                        reason=action.reason,
                        failure_kind=FailureKind.BACKEND_ERROR,
                        attempt=job.attempt,
                    )
                )
        except (BackendError, JobplaneError) as exc:
            action = Action(job.job_id, "error", exc.message)
        except Exception as exc:  # best-effort loop: one broken job must not stop the others
            log.exception("reconcile of %s failed", job.job_id)
            action = Action(job.job_id, "error", f"{type(exc).__name__}: {exc}")
        actions.append(action)
    actions.extend(sweep(service, active, now))
    try:
        dispatched = {j.job_id: j for j in service.dispatch_queued()}
    except JobplaneError as exc:
        log.warning("dispatch of queued jobs failed: %s", exc.message)
        dispatched = {}
    return [
        Action(a.job_id, "dispatch", f"now {dispatched[a.job_id].status.value}: {dispatched[a.job_id].status_reason}")
        if a.action == "dispatch" and a.job_id in dispatched
        else a
        for a in actions
    ]
