"""JobService: the use cases (submit, get, list, cancel, apply_event, history) over a store; dispatch is composed in."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from chalicelib.backends import get_backend
from chalicelib.backends.base import ComputeBackend, Handle, LogChunk, Offset
from chalicelib.config import Settings
from chalicelib.errors import (
    AlreadyExistsError,
    BackendError,
    ConflictError,
    IdempotencyMismatchError,
    JobplaneError,
    NotFoundError,
    StaleStateError,
    UnsupportedError,
    ValidationError,
)
from chalicelib.jobs.capacity import claims_for
from chalicelib.jobs.dispatch import LAUNCH_TRIES_PER_ROUND, Dispatcher, backoff_seconds
from chalicelib.jobs.machine import decide
from chalicelib.jobs.metrics_reader import REQUEST_BYTES, MetricsReader, readable
from chalicelib.jobs.model import (
    Candidate,
    EventSource,
    HistoryEntry,
    Job,
    JobEvent,
    JobStatus,
    Transition,
    iso,
    new_job_id,
    utcnow,
)
from chalicelib.jobs.spec_types import JobSpec
from chalicelib.pricing import Cost
from chalicelib.pricing.jobs import AttemptCost, current_cost, with_attempt
from chalicelib.store.base import IdempotencyRecord, JobStore, Page
from chalicelib.store.metrics import MetricsStore

if TYPE_CHECKING:
    from chalicelib.auth import Principal  # annotations only: an event handler needs no auth

log = logging.getLogger("jobplane.service")
DEFAULT_LIMIT = 20
IDEMPOTENCY_KEY_MAX = 255
_APPLY_ATTEMPTS = 8
TAIL_LINES = 15
TAIL_SLACK_BYTES = 2048  # a Slack section holds 3000 characters, and escaping makes text longer
TAIL_API_BYTES = 16 * 1024


def _encode_token(scope: dict[str, Any], cursor: dict[str, str]) -> str:
    raw = json.dumps({"scope": scope, "cursor": cursor}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_token(token: str, scope: dict[str, Any]) -> dict[str, str]:
    bad = ValidationError(
        "next_token is not valid",
        [{"field": "next_token", "message": "pass the next_token the previous page returned, unchanged"}],
    )
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if not isinstance(data, dict) or data.get("scope") != scope or not isinstance(data.get("cursor"), dict):
        raise bad
    return data["cursor"]


# GET /jobs answers with as_of: pass it back as updated_since. It is this much before the read, so a write
# still in flight (its time taken before it landed, a retried transaction) or an index not yet caught up is
# read by the next poll; a job written in that window comes twice, which a poller's merge by id absorbs.
CHANGES_OVERLAP = timedelta(seconds=30)


def changes_as_of(now: datetime | None = None) -> datetime:
    """The updated_since that a poll reading now should send next."""
    return (now or utcnow()) - CHANGES_OVERLAP


class JobService:
    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        backend_factory: Callable[[str, Settings], ComputeBackend] = get_backend,
        metrics_store: MetricsStore | None = None,
        objects: Callable[[], Any] | None = None,
        budgets: Any = None,
        gcs_objects: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._backend = backend_factory
        # Monthly budgets (chalicelib.budgets.service.BudgetService): refused at submit, held at dispatch.
        self.budgets = budgets
        # The stage's object store (packed code, artifacts), made on first use: most calls never need it.
        self._objects_factory = objects
        self._objects: Any = None
        self._gcs_objects_factory = gcs_objects
        self._gcs_objects: Any = None
        hold = budgets.hold_reason if budgets is not None else None
        self.dispatcher = Dispatcher(store, settings, self.backend, self.apply_event, hold=hold)
        # Without a metrics store (unit tests of other use cases) no output is read for metrics.
        self.metrics_reader = MetricsReader(metrics_store, self.backend) if metrics_store is not None else None

    def backend(self, name: str) -> ComputeBackend:
        return self._backend(name, self.settings)

    def objects(self):
        """The stage's object store (chalicelib.store.objects.S3Objects unless one was given)."""
        if self._objects is None:
            if self._objects_factory is not None:
                self._objects = self._objects_factory()
            else:
                from chalicelib.store.objects import S3Objects

                self._objects = S3Objects.from_settings(self.settings)
        return self._objects

    def gcs_objects(self):
        """A job's artifacts in Cloud Storage (chalicelib.store.gcs_objects.GcsObjects unless one was given)."""
        if self._gcs_objects is None:
            if self._gcs_objects_factory is not None:
                self._gcs_objects = self._gcs_objects_factory()
            else:
                from chalicelib.store.gcs_objects import GcsObjects

                self._gcs_objects = GcsObjects.from_settings(self.settings)
        return self._gcs_objects

    # --- code and artifacts ------------------------------------------------------------
    def code_upload(self, principal: Principal, body: Any):  # noqa: ARG002 - any signed-in user may upload code
        """POST /code: where packed code with this digest lives, and an upload URL unless it is there already."""
        from chalicelib.store.objects import parse_code_request

        sha, size = parse_code_request(body, self.settings.code_max_mb)
        return self._code_store(body.get("backend")).issue_code_upload(sha, size)

    def _code_store(self, backend: Any):
        """Where code for a job on `backend` is uploaded: the store that backend reads (Cloud Storage for the
        Google Cloud ones), S3 when no backend (or `auto`) is named."""
        from chalicelib.backends import names
        from chalicelib.jobs.contract import store_for

        if backend is None or backend == "auto":
            return self.objects()
        enabled = self.settings.enabled_backends
        if not isinstance(backend, str) or backend not in names() or backend not in enabled:
            what = "is not enabled in this deployment" if backend in names() else "is not a backend"
            raise ValidationError(
                f"backend {backend!r} {what}",
                [{"field": "backend", "message": f"one of: auto, {', '.join(enabled)}"}],
            )
        _, scheme = store_for(backend, self.settings)
        return self.gcs_objects() if scheme == "gs" else self.objects()

    def _check_code(self, spec: JobSpec) -> None:
        """A job may name only code that was uploaded (and is within the size limit): refused now, not at launch."""
        if not spec.code_uri or not spec.code_uri.startswith(("s3://", "gs://")):
            return
        store = self.gcs_objects() if spec.code_uri.startswith("gs://") else self.objects()
        size = store.size_of(spec.code_uri)
        if size is None:
            raise ValidationError(
                f"code_uri {spec.code_uri} does not exist; upload the packed code first (POST /code, as "
                "`jobplane submit` does with a workdir)",
                [{"field": "code_uri", "message": "an uploaded object (POST /code issues its upload URL)"}],
            )
        limit = self.settings.code_max_mb
        if size > limit * 1024 * 1024:
            raise ValidationError(
                f"code_uri {spec.code_uri} is {size} bytes, over this deployment's limit of {limit} MB",
                [{"field": "code_uri", "message": f"at most {limit} MB (JOBPLANE_CODE_MAX_MB)"}],
            )

    def artifacts(self, principal: Principal, job_id: str, cursor: str | None = None, limit: int = 100):
        """GET /jobs/{id}/artifacts: a page of the files under the job's artifacts_uri, and the next cursor."""
        from chalicelib.jobs.contract import store_for

        job = self.get(principal, job_id)
        uri = job.artifacts_uri(*store_for(job.backend, self.settings, job.spec))
        if uri.startswith("gs://"):
            items, next_cursor = self.gcs_objects().list_artifacts(uri, cursor, limit)
        elif uri.startswith("s3://"):
            items, next_cursor = self.objects().list_artifacts(uri, cursor, limit)
        else:
            raise UnsupportedError(
                f"this deployment lists s3:// and gs:// artifacts only; the job's outputs are at {uri}",
                [{"field": "outputs", "message": "an s3:// or gs:// URI"}],
            )
        return uri, items, next_cursor

    # --- planning --------------------------------------------------------------------
    def plan(self, spec: JobSpec) -> tuple[str, str]:
        """Pick (and validate, once) the backend for `spec`; returns (backend, why). The planner holds the reasoning."""
        from chalicelib.planner import plan

        return plan(spec, self.settings, self.backend)

    def _candidates(self, first: str, spec: JobSpec) -> tuple[str, ...]:
        """Where the job may run, in failover order (the planner holds the ordering)."""
        from chalicelib.planner import candidates

        return candidates(spec, first, self.settings, self.backend)

    # --- submit ------------------------------------------------------------------------
    def _placed(self, spec: JobSpec) -> tuple[str, str, str | None, JobSpec, tuple[str, ...]]:
        """(backend, why, region, spec, candidates) of a new job, after every check a submit makes before storing."""
        backend_name, why = self.plan(spec)
        candidates = self._candidates(backend_name, spec)
        # The first candidate may be another region or GPU type than the spec's first (cheaper), or (a backend
        # that cannot run in the named regions) another backend.
        first = Candidate.parse(candidates[0])
        backend_name, region = first.backend, first.region
        if first.gpu_type and first.gpu_type != spec.resources.gpu_type:
            spec = spec.with_changes(resources=replace(spec.resources, gpu_type=first.gpu_type))
        self._check_code(spec)
        for claim, limit in claims_for(backend_name, spec, dict(self.settings.capacity_limits), self.settings):
            if claim.units > limit:
                raise ValidationError(
                    f"this job needs {claim.units} units of {claim.pool}, more than the {limit} this deployment allows",
                    [{"field": "resources.gpus", "message": f"at most {limit} for {claim.pool}"}],
                )
        return backend_name, why, region, spec, candidates

    def dry_run(self, principal: Principal, spec: JobSpec) -> dict[str, Any]:
        """What submit would do, storing and launching nothing: the backend, why, and the provider request."""
        backend_name, why, region, spec, candidates = self._placed(spec)
        now = utcnow()
        job = Job(
            job_id=new_job_id(),
            name=spec.name,
            owner=principal.user,
            status=JobStatus.QUEUED,
            backend=backend_name,
            spec=spec,
            created_at=now,
            updated_at=now,
            planner_reason=why,
            candidates=candidates,
            region=region,
        )
        request, note = None, None
        try:
            request = self.backend(backend_name).launch_request(job)
        except JobplaneError as exc:  # the plan stands; the request needs something only a launch has
            note = f"the request cannot be shown: {exc.message}"
        if request is None and note is None:
            note = f"backend {backend_name!r} does not show its provider request in a dry run"
        return {
            "dry_run": True,
            "backend": backend_name,
            "planner_reason": why,
            "candidates": list(candidates),
            "region": region,
            "request": request,
            "request_note": note,
            "spec": spec.to_dict(),
        }

    def submit(self, principal: Principal, spec: JobSpec, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Store and launch a job. Returns (job, created); a replayed key returns the first job."""
        backend_name, why, region, spec, candidates = self._placed(spec)
        job_id = new_job_id()
        if self.budgets is not None:
            probe = Job(
                job_id, spec.name, principal.user, JobStatus.QUEUED, backend_name, spec, utcnow(), region=region
            )
            self.budgets.refuse_if_over(probe)
        if idempotency_key is not None:
            if not (0 < len(idempotency_key) <= IDEMPOTENCY_KEY_MAX) or not idempotency_key.isprintable():
                raise ValidationError(
                    "Idempotency-Key is not valid",
                    [{"field": "Idempotency-Key", "message": "1..255 printable characters"}],
                )
            request_hash = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()
            claimed = self.store.claim_idempotency_key(
                IdempotencyRecord(principal.user, idempotency_key, job_id, request_hash, utcnow())
            )
            if claimed.request_hash != request_hash:
                raise IdempotencyMismatchError(
                    "this Idempotency-Key was already used with a different job spec",
                    [{"field": "Idempotency-Key", "message": "use a new key for a different job"}],
                )
            if claimed.job_id != job_id:
                existing = self.store.get_job(claimed.job_id)
                if existing is not None:
                    return existing, False
                # The first request claimed the key but has not stored its job yet (or died):
                # create it under the claimed id; a create-only write lets exactly one of us win.
                job_id = claimed.job_id
        now = utcnow()
        job = Job(
            job_id=job_id,
            name=spec.name,
            owner=principal.user,
            status=JobStatus.QUEUED,
            backend=backend_name,
            spec=spec,
            created_at=now,
            updated_at=now,
            planner_reason=why,
            candidates=candidates,
            region=region,
            status_reason="submitted",
        )
        entry = HistoryEntry(job_id, now, None, JobStatus.QUEUED, f"submitted by {principal.user}", EventSource.API)
        try:
            self.store.create_job(job, entry)
        except AlreadyExistsError:
            existing = self.store.get_job(job_id)
            if existing is None:  # pragma: no cover - a create that failed cannot leave nothing behind
                raise
            return existing, False
        # Straight to dispatch: jobs wait in the queue only while their pool is full, and every
        # release serves the queue in order before new capacity can be seen here.
        return self.dispatcher.dispatch(job), True

    def _release(self, job: Job) -> None:
        if job.native_name is None:
            return  # this attempt was never dispatched: nothing to release
        try:
            self.backend(job.backend).release(Handle.of(job), f"job {job.status.value.lower()}")
        except JobplaneError as exc:  # the reaper's sweep stops it on its next run
            log.warning("releasing %s of job %s failed: %s", job.native_name, job.job_id, exc.message)

    # --- read --------------------------------------------------------------------------
    def get(self, principal: Principal, job_id: str) -> Job:
        job = self.store.get_job(job_id) if _plausible_id(job_id) else None
        if job is None or (not principal.admin and job.owner != principal.user):
            raise NotFoundError(f"no job {job_id!r}")
        return job

    def list(
        self,
        principal: Principal,
        status: JobStatus | None = None,
        limit: int | None = None,
        next_token: str | None = None,
        updated_since: datetime | None = None,
    ) -> tuple[list[Job], str | None]:
        """A page of the jobs `principal` may see, newest first, and the token of the next page.

        With `updated_since`: only the jobs written after it, least recently written first (from the
        *-changed indexes: a poller's read grows with what changed, not with the history)."""
        size = DEFAULT_LIMIT if limit is None else limit
        owner = None if principal.admin else principal.user
        scope = {"owner": owner, "status": status.value if status else None}
        if updated_since is not None:
            if status is not None:
                raise ValidationError(
                    "updated_since cannot be combined with status",
                    [{"field": "updated_since", "message": "give status or updated_since, not both"}],
                )
            scope = {"owner": owner, "updated_since": iso(updated_since)}
        cursor = _decode_token(next_token, scope) if next_token is not None else None
        if updated_since is not None:
            page: Page = self.store.list_changed(owner, iso(updated_since), size, cursor)
        else:
            page = self.store.list_jobs(owner, status, size, cursor)
        token = _encode_token(scope, page.cursor) if page.cursor else None
        return page.jobs, token

    def history(self, principal: Principal, job_id: str) -> list[HistoryEntry]:
        self.get(principal, job_id)
        return self.store.history(job_id)

    def logs(self, principal: Principal, job_id: str, offset: Offset = 0, node: int | None = None) -> LogChunk:
        """A slice of the job's output from `offset` (`node`: that node's alone); a job with nothing to show
        says why in `note`."""
        job = self.get(principal, job_id)
        nodes = job.spec.resources.nodes
        if node is not None and not 0 <= node < nodes:
            raise ValidationError(
                f"node {node}: this job runs on {nodes} node{'s' if nodes > 1 else ''}, ranks 0 to {nodes - 1}",
                [{"field": "node", "message": f"an integer from 0 to {nodes - 1}"}],
            )
        note = not_started_note(job)
        # A launch the provider has not answered yet has no resource to read from.
        unlaunched = job.status is JobStatus.LAUNCHING and job.native_id is None
        if job.native_name is None or job.status is JobStatus.QUEUED or unlaunched:
            return LogChunk("", offset, job.terminal, note)
        chunk = self.backend(job.backend).logs(Handle.of(job), offset, node=node)
        # A provider's log cannot tell that nothing more will come; the job's status can.
        complete = chunk.complete and job.terminal
        if chunk.text or not note:
            return replace(chunk, complete=complete)
        return replace(chunk, complete=complete, note=chunk.note or note)

    def metrics(self, principal: Principal, job_id: str) -> JobMetrics:
        """The job's latest metrics and series per key, after reading its output on from the cursor."""
        job = self.get(principal, job_id)
        if self.metrics_reader is None:
            return JobMetrics(job, {}, caught_up=False)
        job, progress = self.metrics_reader.catch_up(self.store, job, REQUEST_BYTES)
        series = progress.series if progress is not None and progress.series is not None else None
        if series is None:
            series = self.metrics_reader.store.series(job.job_id)
        return JobMetrics(job, series, caught_up=progress is not None and progress.caught_up)

    def tail(self, principal: Principal, job_id: str, lines: int = TAIL_LINES) -> tuple[list[str] | None, str | None]:
        """The last lines of the job's output (None when they cannot be had cheaply) and a note saying why not."""
        job = self.get(principal, job_id)
        found = self.tail_of(job, lines, TAIL_API_BYTES)
        if found is None:
            return None, not_started_note(job) or "the output is too long to find its end by paging"
        return found, None

    def tail_of(self, job: Job, lines: int = TAIL_LINES, max_bytes: int = TAIL_SLACK_BYTES) -> list[str] | None:
        """The last lines of a job's output, or None (never started, or the end is out of reach)."""
        if not readable(job):
            return None
        return self.backend(job.backend).tail(Handle.of(job), lines, max_bytes)

    def _final_metrics(self, job: Job) -> dict[str, Any]:
        """The metrics fields a terminal transition writes: the output read to its end. Best effort: a job
        always reaches its end state, with the metrics of the last read when this one fails."""
        if self.metrics_reader is None:
            return {}
        try:
            return self.metrics_reader.final_changes(job)
        except Exception:  # a provider's log failing must never keep a job from its terminal state
            log.warning("final metrics read of job %s failed; kept the last ones read", job.job_id, exc_info=True)
            return {}

    # --- cost --------------------------------------------------------------------------
    def current_cost(self, job: Job, now: datetime | None = None) -> Cost:
        """What `job` has cost so far, with its price date (see chalicelib.pricing.jobs.current_cost)."""
        return current_cost(job, self.backend(job.backend), now)

    def _cost_changes(self, job: Job, event: JobEvent, transition: Transition) -> dict[str, Any]:
        """The fields that record the current attempt's cost as of `transition`: final when the attempt ends
        (the job ends, or a retry or failover moves it to its next attempt), live when it starts running."""
        ends = transition.to_status.terminal or transition.changes.get("attempt", job.attempt) != job.attempt
        if job.native_name is None or not (ends or transition.to_status is JobStatus.RUNNING):
            return {}  # never dispatched (cancelled in the queue): no attempt ran, nothing to price
        # A job first seen at its end gets started_at from this very transition: it has a cost too.
        started_at = job.started_at or transition.changes.get("started_at")
        try:
            backend = self.backend(job.backend)
            usage = event.usage
            if usage is None and backend.priced_by_placement and transition.to_status is JobStatus.RUNNING:
                # Its start came from a batched read that does not say where it runs: asked once, now.
                seen = backend.describe(Handle.of(job))
                usage = seen.usage if seen is not None else None
            figure = backend.attempt_cost(job.with_changes(started_at=started_at), transition.at, usage, final=ends)
        except JobplaneError as exc:  # the job's transition matters more than its figure: logged, not raised
            log.warning("pricing attempt %d of job %s failed: %s", job.attempt, job.job_id, exc.message)
            return {}
        return with_attempt(job, figure)

    def record_live_cost(self, job: Job, figure: AttemptCost) -> Job:
        """Write a running attempt's cost when it moved by 5 % and a cent (or its rate changed): reconcile's
        tick keeps GET /jobs/{id} within 5 % of the truth without a write per job per tick (a free job is never
        written)."""
        stored = next((c for c in job.costs if c.attempt == figure.attempt), None)
        if (stored is not None and stored.final) or not _moved(stored, figure):
            return job
        try:
            return self.store.update_job(job, job.status, **with_attempt(job, figure))
        except StaleStateError:
            return job  # it moved on (ended): that transition wrote the final figure

    # --- cancel ------------------------------------------------------------------------
    def cancel(self, principal: Principal, job_id: str) -> Job:
        job = self.get(principal, job_id)
        if job.terminal:
            raise ConflictError(
                f"job {job_id} is already {job.status.value}",
                [{"field": "status", "message": f"{job.status.value} is terminal"}],
            )
        updated = self.apply_event(
            JobEvent(job_id, JobStatus.CANCELLING, EventSource.API, reason=f"cancel requested by {principal.user}")
        )
        if updated is None:
            raise NotFoundError(f"no job {job_id!r}")
        if updated.terminal and updated.status is not JobStatus.CANCELLED:
            raise ConflictError(f"job {job_id} is already {updated.status.value}")
        if updated.status is JobStatus.CANCELLING:
            self.stop_resource(updated)
        return self.store.get_job(job_id) or updated

    def stop_resource(self, job: Job) -> None:
        """Ask the backend to stop a job's resource. A transient error (throttling, a 5xx, a dropped
        connection) is tried again with backoff; what still fails is recorded on the job, which stays
        CANCELLING for the next reconcile to ask again."""
        backend = self.backend(job.backend)
        for try_number in range(1, LAUNCH_TRIES_PER_ROUND + 1):
            try:
                backend.cancel(Handle.of(job))
                return
            except BackendError as exc:
                if exc.retryable and try_number < LAUNCH_TRIES_PER_ROUND:
                    self.dispatcher.sleep(backoff_seconds(try_number))
                    continue
                log.warning(
                    "cancel of %s on %s failed (reconcile will retry): %s", job.job_id, job.backend, exc.message
                )
                reason = f"cancel request failed after {try_number} tries: {exc.message}; reconcile asks again"
                try:
                    self.store.update_job(job, job.status, status_reason=reason)
                except StaleStateError:
                    pass  # it moved on (the resource ended): nothing is left to ask
                return

    # --- events ------------------------------------------------------------------------
    def apply_event(self, event: JobEvent, current: Job | None = None) -> Job | None:
        """Apply one event through the state machine; harmless when duplicated or stale.

        `current` is the job as the caller just read it (saves a read); a lost race re-reads.
        Returns the job after the event, or None when the job does not exist.
        """
        final: dict[str, Any] | None = None
        for attempt in range(_APPLY_ATTEMPTS):
            job = current if attempt == 0 and current is not None else self.store.get_job(event.job_id)
            if job is None:
                return None
            transition = decide(job, event)
            if transition is None:
                return job
            if transition.to_status.terminal:
                # Read once: a lost race decides again, and the same output gives the same metrics.
                final = self._final_metrics(job) if final is None else final
                transition.changes.update(final)
            transition.changes.update(self._cost_changes(job, event, transition))
            try:
                updated = self.store.apply_transition(job, transition)
            except StaleStateError:
                continue  # another writer moved the job; decide again on what it wrote
            if updated.terminal:
                self._release(updated)
            log.info(
                "job %s: %s -> %s (%s)",
                job.job_id,
                transition.from_status.value,
                transition.to_status.value,
                transition.reason,
            )
            if transition.hold:
                return updated  # waits for capacity: reconcile dispatches it with the queue
            if transition.release:
                self.dispatcher.dispatch_queued()  # capacity came free: the queue moves (a retry takes its turn)
                return self.store.get_job(updated.job_id) or updated
            if updated.status is JobStatus.QUEUED:
                return self.dispatcher.dispatch(updated)  # a retry: launch the next attempt
            return updated
        raise StaleStateError(f"job {event.job_id} kept changing; event not applied")


@dataclass(frozen=True)
class JobMetrics:
    """GET /jobs/{id}/metrics: the job (its latest metrics and cursor) and each key's series."""

    job: Job
    series: dict[str, Any]
    caught_up: bool

    def to_api(self) -> dict[str, Any]:
        cursor = self.job.metrics_cursor
        return {
            "job_id": self.job.job_id,
            "metrics": dict(self.job.metrics),
            "series": {key: s.to_api() for key, s in sorted(self.series.items())},
            "lines": cursor.lines if cursor else 0,
            "malformed_lines": cursor.malformed if cursor else 0,
            "caught_up": self.caught_up,
        }


#: a live figure is written once it moved this share of the stored one (and a cent): what GET /jobs/{id} shows
#: is at most that far behind, and a job's writes grow with the log of its cost, not with its ticks
LIVE_COST_STEP = 0.05


def _moved(stored: AttemptCost | None, figure: AttemptCost) -> bool:
    """A live figure worth writing over the stored one: a known figure a cent and LIVE_COST_STEP away from
    it, or at another rate. An unknown one stays as the RUNNING transition recorded it (it cannot move)."""
    if figure.instance_type and (stored is None or stored.instance_type != figure.instance_type):
        return True  # where it runs became known: kept, so it is not asked again
    if figure.usd is None:
        return False
    if stored is not None and stored.usd_per_hour != figure.usd_per_hour:
        return True
    before = stored.usd if stored is not None and stored.usd is not None else 0.0
    return abs(figure.usd - before) >= max(0.01, LIVE_COST_STEP * before)


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


def not_started_note(job: Job) -> str | None:
    """Why a job has no output of its own yet, or None once it has run (then its log speaks for it)."""
    reason = job.status_reason or ""
    if job.status is JobStatus.QUEUED:
        return f"QUEUED: not started yet ({reason or 'waiting for capacity'})"
    if job.status is JobStatus.LAUNCHING:
        where = f" on {job.backend}" + (f" as {job.native_id}" if job.native_id else "")
        return f"LAUNCHING{where}: the job's process has not started yet" + (f" ({reason})" if reason else "")
    if job.started_at is not None or job.status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
        return None
    if job.status is JobStatus.FAILED:
        kind = job.failure_kind.value if job.failure_kind else "backend_error"
        return f"FAILED before it started ({kind}): {job.failure_reason or reason or 'no reason given'}"
    return f"{job.status.value} before it started" + (f": {reason}" if reason else "")
