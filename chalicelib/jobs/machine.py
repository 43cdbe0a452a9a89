"""The pure state machine: decide(job, event) -> Transition | None. No I/O here."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from chalicelib.jobs.model import (
    Candidate,
    EventSource,
    FailureKind,
    Job,
    JobEvent,
    JobStatus,
    Transition,
    iso,
)

# failure kinds that a spec's `retries.on` can name
RETRYABLE_KINDS = {FailureKind.INTERRUPTED: "interruption", FailureKind.NO_CAPACITY: "capacity"}


# failure kinds that, before the job's code started, move the job to its next candidate: no capacity, no
# quota, and a preemption of a machine the job never ran on
FAILOVER_KINDS = frozenset({FailureKind.NO_CAPACITY, FailureKind.QUOTA, FailureKind.INTERRUPTED})


def failover(
    job: Job,
    detail: str,
    code: str,
    source: EventSource,
    at: datetime,
    *,
    new_attempt: bool,
    native_status: str | None = None,
) -> Transition | None:
    """A capacity or quota failure before the job's code started: QUEUED on the next candidate, else (none
    left) QUEUED on the first one again until `capacity_wait_minutes` after the first refusal; None past it.

    `new_attempt` when the provider had accepted the job (its resource has our name, so the next launch needs
    a new one, and late events of this attempt must be stale); a launch refused outright keeps the attempt.
    """
    if job.terminal or job.status is JobStatus.CANCELLING:
        return None
    current = job.candidate
    candidates = job.candidates or (current,)
    position = candidates.index(current) if current in candidates else len(candidates) - 1
    first = job.first_refusal_at or at
    until = first + timedelta(minutes=job.spec.capacity_wait_minutes)
    tried = f"{current}: {detail}"
    changes: dict = {
        "native_id": None,
        "native_name": None,
        "launch_operation": None,
        "claims": (),
        "first_refusal_at": first,
    }
    if new_attempt:
        changes["attempt"] = job.attempt + 1
    hold = False
    if position + 1 < len(candidates):
        target = candidates[position + 1]
        reason = f"{tried}; failing over to {target}"
        changes["planner_reason"] = f"failover from {current} ({code}) to {target}"
    elif at < until:
        target = candidates[0]
        reason = f"{tried}; no candidate left ({', '.join(candidates)}); retrying until {iso(until)}"
        hold = True
    else:
        return None
    changes.update(_moved_to(job, Candidate.parse(target)))
    return Transition(
        job_id=job.job_id,
        from_status=job.status,
        to_status=JobStatus.QUEUED,
        reason=reason,
        source=source,
        at=at,
        native_status=native_status,
        changes=changes,
        release=job.claims,
        hold=hold,
    )


def _moved_to(job: Job, target: Candidate) -> dict:
    """The job's fields on `target`: its backend and region, and the GPU type in its spec (the rest, the
    checkpoint_uri included, follows the job unchanged)."""
    changes: dict = {"backend": target.backend, "region": target.region}
    resources = job.spec.resources
    if target.gpu_type and target.gpu_type != resources.gpu_type:
        changes["spec"] = job.spec.with_changes(resources=replace(resources, gpu_type=target.gpu_type))
    return changes


def _failover(job: Job, event: JobEvent) -> Transition | None:
    """A provider-side failure for capacity after the launch was accepted (dispatch fails over its own refusals)."""
    if event.source is EventSource.DISPATCH or event.failure_kind not in FAILOVER_KINDS:
        return None
    if job.started_at is not None or event.started_at is not None:
        return None  # the job's code ran: an interruption now is a retry's business, not a failover's
    detail = event.reason or event.native_status or event.failure_kind.value
    return failover(
        job,
        detail,
        event.failure_kind.value,
        event.source,
        event.at,
        new_attempt=True,
        native_status=event.native_status,
    )


def _retry(job: Job, event: JobEvent) -> Transition | None:
    """A failed attempt that the spec's retry policy covers goes back to QUEUED as the next attempt."""
    if job.status is JobStatus.CANCELLING or event.failure_kind not in RETRYABLE_KINDS:
        return None
    policy = job.spec.retries
    max_attempts = policy.max_attempts
    if RETRYABLE_KINDS[event.failure_kind] not in policy.on or job.attempt >= max_attempts:
        return None
    reason = (
        f"attempt {job.attempt} {event.failure_kind.value}: {event.reason or event.native_status or 'no detail'}; "
        f"retrying as attempt {job.attempt + 1} of {max_attempts}"
    )
    return Transition(
        job_id=job.job_id,
        from_status=job.status,
        to_status=JobStatus.QUEUED,
        reason=reason,
        source=event.source,
        at=event.at,
        native_status=event.native_status,
        changes={
            "attempt": job.attempt + 1,
            "native_id": None,
            "native_name": None,
            "launch_operation": None,
            "started_at": None,
            "claims": (),
        },
        release=job.claims,
    )


def decide(job: Job, event: JobEvent) -> Transition | None:
    """Return the transition `event` causes for `job`, or None when it changes nothing.

    Duplicates and out-of-order delivery are normal: an event that would move a job
    backwards, repeats its status, belongs to an earlier attempt, or arrives after the job
    is terminal decides nothing.
    """
    if job.terminal:
        return None
    if event.attempt is not None and event.attempt < job.attempt:
        return None  # a late event from an attempt that was already retried
    target = event.status
    if target is job.status:
        return None

    # A cancel request: nothing launched yet means nothing to stop.
    if target is JobStatus.CANCELLING:
        if job.status is JobStatus.QUEUED:
            target = JobStatus.CANCELLED
        elif job.status.rank >= JobStatus.CANCELLING.rank:
            return None
    elif not target.terminal and target.rank <= job.status.rank:
        return None  # stale: the job is already further along

    failure_kind = None
    reason = event.reason
    if target is JobStatus.FAILED:
        moved = _failover(job, event)
        if moved is not None:
            return moved
        retry = _retry(job, event)
        if retry is not None:
            return retry
        if job.status is JobStatus.CANCELLING:
            # The stop we asked for usually surfaces as a failure (killed process, stopped job).
            target = JobStatus.CANCELLED
            reason = f"cancelled ({reason})" if reason else "cancelled"
        else:
            failure_kind = event.failure_kind or FailureKind.BACKEND_ERROR

    changes: dict = {}
    if event.native_id and event.native_id != job.native_id:
        changes["native_id"] = event.native_id
    if job.started_at is None and (target is JobStatus.RUNNING or (target.terminal and event.started_at)):
        changes["started_at"] = event.started_at or event.at
    if target.terminal:
        changes["finished_at"] = event.at
        if job.claims:
            changes["claims"] = ()
        if failure_kind is not None:
            changes["failure_kind"] = failure_kind
            changes["failure_reason"] = reason or event.native_status or failure_kind.value
    return Transition(
        job_id=job.job_id,
        from_status=job.status,
        to_status=target,
        reason=reason or _default_reason(target, event.source),
        source=event.source,
        at=event.at,
        native_status=event.native_status,
        changes=changes,
        release=job.claims if target.terminal else (),
    )


def _default_reason(status: JobStatus, source: EventSource) -> str:
    return f"{status.value.lower()} (reported by {source.value})"
