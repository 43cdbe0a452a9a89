"""The JobStore interface every implementation honours (see tests/store/test_contract.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from chalicelib.jobs.metrics import Cursor
from chalicelib.jobs.model import HistoryEntry, Job, JobStatus, Transition, iso, utcnow


@dataclass(frozen=True)
class IdempotencyRecord:
    owner: str
    key: str
    job_id: str
    request_hash: str
    created_at: datetime


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    # The position after the last job, as plain strings; None when there is nothing more.
    cursor: dict[str, str] | None = field(default=None)


def sort_key(job: Job) -> str:
    """Newest-first listing order, unique per job."""
    return f"{iso(job.created_at)}#{job.job_id}"


def history_key(entry: HistoryEntry) -> str:
    """The sort key of an entry being written. It starts with the time of the write, not `entry.at`: a late
    event may report an earlier time (a job that ended before a cancel was recorded), and the history must
    still read in the order its guarded writes happened. The entry itself keeps the reported time."""
    return f"{iso(utcnow())}#{entry.attempt:03d}#{entry.to_status.value}"


def history_from_transition(transition: Transition, attempt: int) -> HistoryEntry:
    return HistoryEntry(
        job_id=transition.job_id,
        at=transition.at,
        from_status=transition.from_status,
        to_status=transition.to_status,
        reason=transition.reason,
        source=transition.source,
        native_status=transition.native_status,
        attempt=attempt,
    )


def apply_changes(job: Job, transition: Transition) -> Job:
    return job.with_changes(
        status=transition.to_status,
        updated_at=transition.at,
        status_reason=transition.reason,
        **transition.changes,
    )


class JobStore(ABC):
    """Persistence of jobs, their history, capacity claims and idempotency keys (they share transactions).

    API tokens, Slack state and dev VMs have stores of their own (store/tokens.py, slack.py, devvms.py).
    """

    # --- jobs ----------------------------------------------------------------------
    @abstractmethod
    def create_job(self, job: Job, entry: HistoryEntry) -> None:
        """Store a new job and its first history entry; AlreadyExistsError if the id is taken."""

    @abstractmethod
    def get_job(self, job_id: str) -> Job | None: ...

    def get_jobs(self, job_ids: list[str]) -> dict[str, Job]:
        """job_id -> job for those of `job_ids` that exist (a reconcile shard reads its jobs so)."""
        return {job.job_id: job for job in map(self.get_job, dict.fromkeys(job_ids)) if job is not None}

    @abstractmethod
    def apply_transition(self, job: Job, transition: Transition) -> Job:
        """One guarded write (status must equal transition.from_status) plus one history append.

        With capacity to acquire or release, the job write, the counters and the history entry are
        one atomic transaction. Raises StaleStateError when the status guard fails and
        CapacityExhaustedError when a pool would pass its limit (nothing is written then).
        """

    @abstractmethod
    def update_job(self, job: Job, expected: JobStatus, **changes) -> Job:
        """Change fields other than status, guarded on the status; StaleStateError if it moved."""

    @abstractmethod
    def record_metrics(self, job: Job, metrics: dict[str, float], cursor: Cursor) -> Job | None:
        """Set the job's latest metrics and how far its output was read, guarded on the stored cursor still
        being `job.metrics_cursor` (whatever the status: a finished job's output is still read to its end).
        None when another reader moved it first (it read the same output: nothing is lost)."""

    @abstractmethod
    def list_jobs(self, owner: str | None, status: JobStatus | None, limit: int, cursor: dict[str, str] | None) -> Page:
        """Newest first; owner None means every owner. Cursor comes from a previous Page."""

    @abstractmethod
    def iter_created(self, since: datetime, until: datetime | None = None, owner: str | None = None) -> Iterator[Job]:
        """Jobs created in [since, until) (of `owner` when given), oldest first: one range Query of the all or
        owner index on its creation-time sort key, never a Scan (the cost report and budgets read so)."""

    @abstractmethod
    def list_changed(self, owner: str | None, since: str, limit: int, cursor: dict[str, str] | None) -> Page:
        """Jobs written after `since` (an iso() time), least recently written first; owner None means every
        owner. From an index keyed by the time of each job's last write (never a scan), so a poller reads only
        what changed. Jobs last written before that index existed are in it once written again."""

    @abstractmethod
    def iter_active(self) -> Iterator[Job]:
        """Every non-terminal job, from the sparse active index (never a scan of history)."""

    @abstractmethod
    def iter_queued(self) -> Iterator[Job]:
        """Every QUEUED job, from the sparse queued index (what the dispatcher reads)."""

    @abstractmethod
    def history(self, job_id: str) -> list[HistoryEntry]:
        """A job's transitions, oldest first."""

    @abstractmethod
    def capacity_usage(self, pools: list[str]) -> dict[str, int]:
        """Units in use per capacity pool of the quota-aware queue (0 for a pool never used)."""

    # --- idempotency keys ------------------------------------------------------------
    @abstractmethod
    def claim_idempotency_key(self, record: IdempotencyRecord) -> IdempotencyRecord:
        """Store `record` unless the (owner, key) pair exists; return whichever record is stored."""

    # --- lifecycle -------------------------------------------------------------------
    def create_tables(self) -> None:
        """Create whatever backing tables are missing (tests, the local stack)."""
