"""In-memory JobStore: the twin of the DynamoDB store for unit tests and the CLI's dry runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from chalicelib.errors import (
    AlreadyExistsError,
    CapacityExhaustedError,
    StaleStateError,
    ValidationError,
)
from chalicelib.jobs.metrics import Cursor
from chalicelib.jobs.model import HistoryEntry, Job, JobStatus, Transition, iso, utcnow
from chalicelib.jobs.spec_types import JobSpec
from chalicelib.store.base import (
    IdempotencyRecord,
    JobStore,
    Page,
    apply_changes,
    history_from_transition,
    history_key,
    sort_key,
)


class InMemoryJobStore(JobStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._history: dict[str, dict[str, HistoryEntry]] = {}
        self._idempotency: dict[tuple[str, str], IdempotencyRecord] = {}
        self._capacity: dict[str, int] = {}
        self._changed: dict[str, str] = {}  # job_id -> iso() of its last write (the DynamoDB store's `changed`)

    def create_job(self, job: Job, entry: HistoryEntry) -> None:
        with self._lock:
            if job.job_id in self._jobs:
                raise AlreadyExistsError(f"job {job.job_id} already exists")
            # Through the same document the DynamoDB store writes: what it cannot hold, this cannot either.
            self._jobs[job.job_id] = job.with_changes(spec=JobSpec.from_dict(job.spec.to_dict()))
            self._changed[job.job_id] = iso(utcnow())
            self._history.setdefault(job.job_id, {})[history_key(entry)] = entry

    def get_job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def apply_transition(self, job: Job, transition: Transition) -> Job:
        with self._lock:
            current = self._jobs.get(job.job_id)
            if current is None or current.status is not transition.from_status:
                raise StaleStateError(f"job {job.job_id} is no longer {transition.from_status.value}")
            for claim, limit in transition.acquire:
                if self._capacity.get(claim.pool, 0) + claim.units > limit:
                    raise CapacityExhaustedError(claim.pool)
            for claim, _limit in transition.acquire:
                self._capacity[claim.pool] = self._capacity.get(claim.pool, 0) + claim.units
            for claim in transition.release:
                self._capacity[claim.pool] = self._capacity.get(claim.pool, 0) - claim.units
            updated = apply_changes(current, transition)
            self._jobs[job.job_id] = updated
            self._changed[job.job_id] = iso(utcnow())
            entry = history_from_transition(transition, updated.attempt)
            self._history.setdefault(job.job_id, {})[history_key(entry)] = entry
            return updated

    def update_job(self, job: Job, expected: JobStatus, **changes) -> Job:
        with self._lock:
            current = self._jobs.get(job.job_id)
            if current is None or current.status is not expected:
                raise StaleStateError(f"job {job.job_id} is no longer {expected.value}")
            updated = current.with_changes(**changes)
            self._jobs[job.job_id] = updated
            self._changed[job.job_id] = iso(utcnow())
            return updated

    def record_metrics(self, job: Job, metrics: dict[str, float], cursor: Cursor) -> Job | None:
        with self._lock:
            current = self._jobs.get(job.job_id)
            if current is None or current.metrics_cursor != job.metrics_cursor:
                return None
            updated = current.with_changes(metrics=dict(metrics), metrics_cursor=cursor)
            self._jobs[job.job_id] = updated
            self._changed[job.job_id] = iso(utcnow())
            return updated

    def list_jobs(self, owner, status, limit, cursor) -> Page:
        after = None
        if cursor is not None:
            after = cursor.get("sk")
            if not isinstance(after, str):
                raise ValidationError("next_token is not valid", [{"field": "next_token", "message": "malformed"}])
        jobs = sorted(self._jobs.values(), key=sort_key, reverse=True)
        selected: list[Job] = []
        for job in jobs:
            if after is not None and sort_key(job) >= after:
                continue
            if owner is not None and job.owner != owner:
                continue
            if status is not None and job.status is not status:
                continue
            selected.append(job)
            if len(selected) == limit:
                break
        more = len(selected) == limit and any(
            sort_key(j) < sort_key(selected[-1])
            and (owner is None or j.owner == owner)
            and (status is None or j.status is status)
            for j in jobs
        )
        return Page(selected, {"sk": sort_key(selected[-1])} if more else None)

    def list_changed(self, owner, since, limit, cursor) -> Page:
        after = (since, "")
        if cursor is not None:
            if not isinstance(cursor.get("changed"), str) or not isinstance(cursor.get("job_id"), str):
                raise ValidationError("next_token is not valid", [{"field": "next_token", "message": "malformed"}])
            after = (cursor["changed"], cursor["job_id"])
        with self._lock:
            keyed = sorted(
                (changed, job_id)
                for job_id, changed in self._changed.items()
                if (changed, job_id) > after
                and changed > since
                and (owner is None or self._jobs[job_id].owner == owner)
            )
            selected = [self._jobs[job_id] for _changed, job_id in keyed[:limit]]
        if len(keyed) > limit:
            changed, job_id = keyed[limit - 1]
            return Page(selected, {"changed": changed, "job_id": job_id})
        return Page(selected, None)

    def capacity_usage(self, pools: list[str]) -> dict[str, int]:
        return {pool: self._capacity.get(pool, 0) for pool in pools}

    def iter_queued(self) -> Iterator[Job]:
        return iter(sorted((j for j in list(self._jobs.values()) if j.status is JobStatus.QUEUED), key=sort_key))

    def iter_created(self, since, until=None, owner=None) -> Iterator[Job]:
        return iter(
            sorted(
                (
                    j
                    for j in list(self._jobs.values())
                    if j.created_at >= since
                    and (until is None or j.created_at < until)
                    and (owner is None or j.owner == owner)
                ),
                key=sort_key,
            )
        )

    def iter_active(self) -> Iterator[Job]:
        return iter(sorted((j for j in list(self._jobs.values()) if not j.terminal), key=sort_key))

    def history(self, job_id: str) -> list[HistoryEntry]:
        entries = self._history.get(job_id, {})
        return [entries[k] for k in sorted(entries)]

    def claim_idempotency_key(self, record: IdempotencyRecord) -> IdempotencyRecord:
        with self._lock:
            return self._idempotency.setdefault((record.owner, record.key), record)
