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
            return Action(job.job_id, "cancelled", f"backend {job.backend} has no resource {job.native_id} left")
        if job.status is JobStatus.LAUNCHING:
            if (now - (job.updated_at or job.created_at)) < launch_deadline:
                return Action(job.job_id, "none", "launch in progress")
            if not (job.status_reason or "").startswith(RELAUNCH_REASON):
                # The function died between the LAUNCHING write and the launch: launching the same
                # native name again cannot start a second job.
                return Action(job.job_id, "relaunch", f"no resource {job.native_id} after the launch deadline")
        return Action(job.job_id, "fail_lost", f"backend {job.backend} has no resource {job.native_id}")
    if observation.status is not job.status:
        if job.status is JobStatus.CANCELLING and not observation.status.terminal:
            return Action(job.job_id, "recancel", f"still {observation.native_status} after a cancel request")
        return Action(job.job_id, "apply", f"backend reports {observation.native_status}")
    return Action(job.job_id, "none", f"in sync ({observation.native_status})")


def reconcile(service) -> list[Action]:
    now = utcnow()
    deadline = timedelta(seconds=service.settings.launch_deadline_seconds)
    actions: list[Action] = []
    for job in service.store.iter_active():
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
