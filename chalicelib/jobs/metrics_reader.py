"""Reading a job's metrics from its output, incrementally, from the cursor on the job record (any backend)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chalicelib.backends.base import Handle
from chalicelib.jobs.metrics import Cursor, Series, by_key, latest, scan
from chalicelib.jobs.model import Job, JobStatus

if TYPE_CHECKING:
    from chalicelib.backends.base import ComputeBackend
    from chalicelib.store.base import JobStore
    from chalicelib.store.metrics import MetricsStore

# Bytes of output read per job: at each reconcile tick (RUNNING jobs: one logs() page), at the terminal
# transition (before the record the final Slack message is built from is written), per GET /jobs/{id}/metrics.
TICK_BYTES = 64 * 1024
TICK_PAGES = 1
FINAL_BYTES = 256 * 1024
REQUEST_BYTES = 256 * 1024
PAGE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Progress:
    """What one read found: where it stopped, the latest values, the series it changed, whether it reached
    the end of the output as it stands (False: the budget ran out first)."""

    cursor: Cursor
    metrics: dict[str, float]
    series: dict[str, Series] | None
    caught_up: bool


def readable(job: Job) -> bool:
    """True once the job's current attempt has a resource whose output can be read."""
    if job.native_name is None or job.status is JobStatus.QUEUED:
        return False
    return not (job.status is JobStatus.LAUNCHING and job.native_id is None)


class MetricsReader:
    """Reads output from the job's cursor through the backend's logs(), appends the points to the metrics
    store (idempotent per seq) and records the cursor and latest values on the job (guarded on the cursor)."""

    def __init__(self, store: MetricsStore, backend: Callable[[str], ComputeBackend]) -> None:
        self.store = store
        self._backend = backend

    def read(self, job: Job, budget: int, *, final: bool = False, pages: int | None = None) -> Progress:
        """Read at most about `budget` bytes (and `pages` logs() calls) from the job's cursor and store the
        series; `final` when the job is over (a line the output ends inside is then a whole line). Nothing
        is written to the job here."""
        cursor = (job.metrics_cursor or Cursor(attempt=job.attempt)).for_attempt(job.attempt)
        backend = self._backend(job.backend)
        handle = Handle.of(job)
        found: list = []
        spent, caught_up = 0, False
        calls = 0
        while spent < budget and (pages is None or calls < pages):
            calls += 1
            chunk = backend.logs(handle, cursor.offset, min(PAGE_BYTES, budget - spent))
            if not chunk.text:
                caught_up = True
                if final and cursor.carry:
                    last = scan(cursor, "", cursor.offset, final=True)
                    cursor, found = last.cursor, [*found, *last.lines]
                break
            spent += len(chunk.text.encode("utf-8", errors="replace"))
            step = scan(cursor, chunk.text, chunk.next_offset)
            cursor, found = step.cursor, [*found, *step.lines]
        lines = tuple(found)
        metrics = latest(job.metrics, lines)
        points = by_key(lines, metrics)
        series = self.store.append(job.job_id, points) if points else None
        return Progress(cursor, metrics, series, caught_up)

    def catch_up(self, jobs: JobStore, job: Job, budget: int, pages: int | None = None) -> tuple[Job, Progress | None]:
        """Read and record on the job; (the job as stored after, what was read or None when nothing can be)."""
        if not readable(job):
            return job, None
        progress = self.read(job, budget, final=job.terminal, pages=pages)
        if progress.cursor == job.metrics_cursor:
            return job, progress
        recorded = jobs.record_metrics(job, progress.metrics, progress.cursor)
        # None: another reader recorded the same output first; what it wrote is the job now.
        return (recorded or jobs.get_job(job.job_id) or job), progress

    def final_changes(self, job: Job) -> dict:
        """The metrics fields of a terminal transition: the output read to its end (within FINAL_BYTES)."""
        if not readable(job):
            return {}
        progress = self.read(job, FINAL_BYTES, final=True)
        return {"metrics": progress.metrics, "metrics_cursor": progress.cursor}
