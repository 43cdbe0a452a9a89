"""The pure state machine: decide(job, event) -> Transition | None. No I/O here."""

from __future__ import annotations

from chalicelib.jobs.model import (
    EventSource,
    FailureKind,
    Job,
    JobEvent,
    JobStatus,
    Transition,
)

# failure kinds that a spec's `retries.on` can name
RETRYABLE_KINDS = {FailureKind.INTERRUPTED: "interruption", FailureKind.NO_CAPACITY: "capacity"}


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
        changes={"attempt": job.attempt + 1, "native_id": None, "native_name": None, "started_at": None, "claims": ()},
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
