"""Dispatch: claim capacity, launch on the job's backend, fail over on capacity or quota refusals, serve the queue."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable

from chalicelib.backends.base import ComputeBackend
from chalicelib.config import Settings
from chalicelib.errors import BackendError, CapacityExhaustedError, QuotaError, StaleStateError
from chalicelib.jobs.capacity import claims_for, queue_order
from chalicelib.jobs.machine import failover
from chalicelib.jobs.model import (
    EventSource,
    FailureKind,
    Job,
    JobEvent,
    JobStatus,
    Transition,
    native_name,
    utcnow,
)
from chalicelib.store.base import JobStore

log = logging.getLogger("jobplane.dispatch")
# A transient launch error (throttling, a 5xx, a dropped connection) is tried again at once a few times, then
# left LAUNCHING for reconcile to relaunch after the launch deadline, for a bounded number of rounds. The
# native name comes from the job id and attempt, so no try can start a second job.
LAUNCH_TRIES_PER_ROUND = 3
LAUNCH_ROUNDS = 5
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 2.0
TRANSIENT_REASON = "transient launch error"
_ROUND = re.compile(rf"^{TRANSIENT_REASON}, round (\d+) of \d+")


def backoff_seconds(try_number: int) -> float:
    """Full jitter after the `try_number`-th failed try: anywhere up to an exponentially growing cap."""
    cap = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (try_number - 1))
    return random.uniform(0, cap)  # noqa: S311 - jitter, not a secret


def transient_round(status_reason: str | None) -> int:
    """How many rounds of launch tries a LAUNCHING job has already spent on transient errors (0: none)."""
    match = _ROUND.match(status_reason or "")
    return int(match.group(1)) if match else 0


def launch_failure(job: Job, detail: str, kind: FailureKind) -> JobEvent:
    """The one event a launch that cannot succeed becomes, whichever way dispatch found out."""
    return JobEvent(
        job.job_id,
        JobStatus.FAILED,
        EventSource.DISPATCH,
        reason=f"launch failed: {detail}",
        failure_kind=kind,
        attempt=job.attempt,
    )


def claims_limits(claims) -> list[tuple[str, int]]:
    return [(claim.pool, limit) for claim, limit in claims]


class Dispatcher:
    """Moves QUEUED jobs to LAUNCHING and onto a backend. Outcomes that are job events (a failed launch)
    go back through `apply_event`, the service's state machine, so they are applied like any other."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        backend: Callable[[str], ComputeBackend],
        apply_event: Callable[[JobEvent], Job | None],
        sleep: Callable[[float], None] = time.sleep,
        hold: Callable[[Job], str | None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.backend = backend
        self.apply_event = apply_event
        self.sleep = sleep
        # The reason a budget keeps a job QUEUED (chalicelib/budgets), or None to launch it.
        self.hold = hold

    @property
    def quotas(self):
        """The account quotas this process read (jobs/quotas.py), cached for a reconcile tick."""
        from chalicelib.jobs.quotas import book_for

        return book_for(self.settings)

    def claims(self, job: Job):
        """The operator's pools (JOBPLANE_CAPACITY_LIMITS) and the counters of the account quotas the job draws
        on whose usage the provider does not report (their limit: the quota's value)."""
        operator = claims_for(job.backend, job.spec, dict(self.settings.capacity_limits), self.settings)
        return operator + tuple(self.quotas.claims(job.backend, job.spec, job.region))

    def dispatch(self, job: Job) -> Job:
        """Launch a QUEUED job: claim it (and its capacity) with one guarded write, then ask the backend.

        A job whose capacity pool is full stays QUEUED with the reason; dispatch_queued() retries it.
        """
        if self.hold is not None:
            try:
                held = self.hold(job)
            except Exception as exc:  # a budget that cannot be read holds the job: it must not spend unchecked
                log.warning("job %s: budget check failed, held: %s", job.job_id, exc)
                held = f"held: the budgets could not be read ({type(exc).__name__}); reconcile tries again"
            if held is not None:
                return self._keep_queued(job, held)
        name = native_name(job.job_id, job.attempt)
        # Services that address a resource by the name we give it have their id before the launch call.
        named = {"native_id": name} if self.backend(job.backend).named_by_us else {}
        refused = self.quotas.refusal(job.backend, job.spec, job.region)
        if refused:  # the account's quota cannot take it here: the next candidate, as a provider refusal would
            return self._failover(job, QuotaError(refused))
        claims = self.claims(job)
        transition = Transition(
            job.job_id,
            job.status,
            JobStatus.LAUNCHING,
            f"launching attempt {job.attempt} on {job.backend}",
            EventSource.DISPATCH,
            utcnow(),
            changes={"native_name": name, **named, "claims": tuple(c for c, _ in claims)},
            acquire=claims,
        )
        try:
            job = self.store.apply_transition(job, transition)
        except StaleStateError:
            return self.store.get_job(job.job_id) or job  # someone else dispatched it
        except CapacityExhaustedError as exc:
            return self._wait_for_capacity(job, exc.pool, dict(claims_limits(claims)))
        return self._launch(job)

    def _launch(self, job: Job, round_number: int = 1) -> Job:
        backend = self.backend(job.backend)
        for try_number in range(1, LAUNCH_TRIES_PER_ROUND + 1):
            try:
                result = backend.launch(job)
                break
            except BackendError as exc:
                kind = FailureKind(exc.failure_kind)
                if kind in (FailureKind.NO_CAPACITY, FailureKind.QUOTA):
                    return self._failover(job, exc)
                if not exc.retryable:
                    return self._fail(job, exc.message, kind)
                if try_number == LAUNCH_TRIES_PER_ROUND:
                    return self._retry_later(job, exc, round_number)
                log.info("job %s: launch try %d failed (%s); trying again", job.job_id, try_number, exc.message)
                self.sleep(backoff_seconds(try_number))
        recorded = {"native_id": result.native_id} if result.native_id not in (None, job.native_id) else {}
        if result.operation is not None and result.operation != job.launch_operation:
            recorded["launch_operation"] = result.operation  # describe reads it until the resource exists
        if recorded:
            try:
                job = self.store.update_job(job, JobStatus.LAUNCHING, **recorded)
            except StaleStateError:
                pass  # an event already moved it on, and events carry the native id too
        return job

    def _retry_later(self, job: Job, exc: BackendError, round_number: int) -> Job:
        """Every try of this round met a transient error: the job stays LAUNCHING, the round recorded in its
        status reason, and reconcile relaunches it after the launch deadline; past the last round it fails."""
        tries = f"{LAUNCH_TRIES_PER_ROUND} tries"
        if round_number >= LAUNCH_ROUNDS:
            detail = f"{exc.message} (transient, still failing after {round_number} rounds of {tries})"
            return self._fail(job, detail, FailureKind(exc.failure_kind))
        reason = f"{TRANSIENT_REASON}, round {round_number} of {LAUNCH_ROUNDS} ({tries}): {exc.message}"
        log.warning("job %s: %s; reconcile relaunches it", job.job_id, reason)
        try:
            return self.store.update_job(job, JobStatus.LAUNCHING, status_reason=reason, updated_at=utcnow())
        except StaleStateError:
            return self.store.get_job(job.job_id) or job

    def _fail(self, job: Job, detail: str, kind: FailureKind) -> Job:
        return self.apply_event(launch_failure(job, detail, kind)) or job

    def relaunch(self, job: Job, reason: str) -> Job:
        """Launch a LAUNCHING job's attempt again (its launch was lost, or met transient errors); the
        deadline starts anew."""
        round_number = transient_round(job.status_reason) + 1
        if round_number > 1:
            reason = f"{reason} (launch round {round_number} of {LAUNCH_ROUNDS})"
        try:
            job = self.store.update_job(job, JobStatus.LAUNCHING, status_reason=reason, updated_at=utcnow())
        except StaleStateError:
            return self.store.get_job(job.job_id) or job
        return self._launch(job, round_number)

    def _failover(self, job: Job, exc: BackendError) -> Job:
        """No capacity or quota on this backend: move to the next candidate, or wait, or fail (machine.failover)."""
        transition = failover(job, exc.message, exc.CODE, EventSource.DISPATCH, utcnow(), new_attempt=False)
        if transition is None:
            return self._fail(job, f"{job.backend}: {exc.message}", FailureKind(exc.failure_kind))
        try:
            job = self.store.apply_transition(job, transition)
        except StaleStateError:
            return self.store.get_job(job.job_id) or job
        log.info("job %s: %s", job.job_id, transition.reason)
        if transition.hold:
            return job  # waits in QUEUED; reconcile and every release try again
        return self.dispatch(job)

    def _wait_for_capacity(self, job: Job, pool: str, limits: dict[str, int]) -> Job:
        return self._keep_queued(job, f"waiting for capacity: {pool} is at its limit of {limits.get(pool, 0)}")

    def _keep_queued(self, job: Job, reason: str) -> Job:
        if job.status_reason == reason:
            return job  # already says so: no write
        try:
            return self.store.update_job(job, JobStatus.QUEUED, status_reason=reason)
        except StaleStateError:
            return self.store.get_job(job.job_id) or job

    def dispatch_queued(self) -> list[Job]:
        """Dispatch QUEUED jobs by priority, then age. A full pool stops later jobs that need it
        (no small job overtakes a big one), but not jobs of other pools."""
        queued = sorted(self.store.iter_queued(), key=queue_order)
        full: set[str] = set()
        results = []
        for job in queued:
            pools = {claim.pool for claim, _ in self.claims(job)}
            if pools & full:
                results.append(job)
                continue
            after = self.dispatch(job)
            if after.status is JobStatus.QUEUED:
                full |= pools
            results.append(after)
        return results
