"""The job record, its status enum, the one internal event type and transitions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from chalicelib.jobs.metrics import Cursor
from chalicelib.jobs.spec_types import JobSpec
from chalicelib.pricing.jobs import cost_to_api


@dataclass(frozen=True)
class Claim:
    """`units` of pool `pool` (e.g. "sagemaker:A10G"), held by a job from LAUNCHING until it ends (the pools
    are decided in jobs/capacity.py)."""

    pool: str
    units: int

    def to_list(self) -> list[Any]:
        return [self.pool, self.units]

    @classmethod
    def from_list(cls, raw: list[Any]) -> Claim:
        return cls(str(raw[0]), int(raw[1]))


class JobStatus(str, Enum):
    """Where a job is in its life. The order of members is the order of progress."""

    #: Accepted and stored; waiting for a launch (or for capacity / quota).
    QUEUED = "QUEUED"
    #: A launch was requested from the backend; the provider has not reported it running yet.
    LAUNCHING = "LAUNCHING"
    #: The provider reports the job's container/process running.
    RUNNING = "RUNNING"
    #: A cancel was requested and sent to the backend; waiting for it to stop.
    CANCELLING = "CANCELLING"
    #: Exited with status 0 / the provider reports success.
    SUCCEEDED = "SUCCEEDED"
    #: Ended without success; `failure_kind` says why.
    FAILED = "FAILED"
    #: Stopped on request before it finished.
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def rank(self) -> int:
        return _RANK[self]


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset(JobStatus) - TERMINAL
_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.LAUNCHING: 1,
    JobStatus.RUNNING: 2,
    JobStatus.CANCELLING: 3,
    JobStatus.SUCCEEDED: 4,
    JobStatus.FAILED: 4,
    JobStatus.CANCELLED: 4,
}


class FailureKind(str, Enum):
    """Why a FAILED job failed, split by who can fix it."""

    #: The job itself failed (non-zero exit, bad image, bad arguments).
    USER_ERROR = "user_error"
    #: The provider had no capacity of the requested kind.
    NO_CAPACITY = "no_capacity"
    #: An account quota was exhausted.
    QUOTA = "quota"
    #: The provider or jobplane failed (API error, lost instance, missing exit status).
    BACKEND_ERROR = "backend_error"
    #: The job ran past max_runtime_minutes.
    TIMEOUT = "timeout"
    #: The machine was taken away (spot interruption, preemption) and no retry was left.
    INTERRUPTED = "interrupted"
    #: The reaper stopped its VM: no heartbeat, or the GPU under the threshold, for the idle window.
    IDLE = "idle"
    #: Reconcile stopped it when its cost reached the spec's max_cost_usd.
    BUDGET = "budget"


class EventSource(str, Enum):
    """Who told us about a state change."""

    API = "api"
    BACKEND = "backend"  # a provider state event (EventBridge, Pub/Sub, local runner)
    RECONCILE = "reconcile"  # a poll of the provider by the reconciler
    DISPATCH = "dispatch"  # jobplane's own launch path


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def new_job_id() -> str:
    # 32 hex chars: unique, URL-safe, and short enough for `jp-<job_id>` in every provider's name limit.
    return uuid.uuid4().hex


def native_name(job_id: str, attempt: int = 1) -> str:
    """The provider-side name of a job's attempt: traceable to the job, stable across retried launches."""
    return f"jp-{job_id}" if attempt <= 1 else f"jp-{job_id}-a{attempt}"


@dataclass(frozen=True)
class Candidate:
    """One place a job may run: a backend, a region (None: the deployment's) and a GPU type (None: the spec's)."""

    backend: str
    region: str | None = None
    gpu_type: str | None = None

    @property
    def text(self) -> str:
        return (
            self.backend + (f"@{self.region}" if self.region else "") + (f"+{self.gpu_type}" if self.gpu_type else "")
        )

    @classmethod
    def parse(cls, text: str) -> Candidate:
        rest, _, gpu = text.partition("+")
        backend, _, region = rest.partition("@")
        return cls(backend, region or None, gpu or None)


@dataclass(frozen=True)
class Job:
    job_id: str
    name: str
    owner: str
    status: JobStatus
    backend: str
    spec: JobSpec
    created_at: datetime
    # The provider's id or ARN of the current attempt's resource; None until the provider gave one.
    native_id: str | None = None
    # Our name for the current attempt's resource (`jp-<job_id>[-a<attempt>]`); None until it is dispatched.
    native_name: str | None = None
    attempt: int = 1
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failure_kind: FailureKind | None = None
    failure_reason: str | None = None
    cost_estimate_usd: float | None = None
    planner_reason: str | None = None
    updated_at: datetime | None = None
    status_reason: str | None = None
    # Capacity the job holds in the quota-aware queue (from LAUNCHING until it ends or is retried).
    claims: tuple[Claim, ...] = ()
    # Where this job may run, in order (Candidate.text: backend[@region][+gpu_type]): the planned one first.
    candidates: tuple[str, ...] = ()
    # The region the current attempt runs in (None: the deployment's own); backends build their clients for it.
    region: str | None = None
    # When a provider first refused this job capacity or quota (capacity_wait_minutes counts from here).
    first_refusal_at: datetime | None = None
    # The provider operation creating this attempt's resource (GCE insert), read by describe until done.
    launch_operation: str | None = None
    # The latest value of each key the job reported (JOBPLANE_METRICS lines), and how far its output was read.
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_cursor: Cursor | None = None
    # Each attempt's cost (chalicelib.pricing.jobs.AttemptCost): the rate it ran at, the hours, the figure.
    costs: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.spec, JobSpec):
            raise TypeError(f"Job.spec must be a JobSpec (chalicelib.jobs.spec_types), got {type(self.spec).__name__}")

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def candidate(self) -> str:
        """The candidate the current attempt runs on, as its text in `candidates`."""
        gpu = self.spec.resources.gpu_type if self.spec.gpu_types else None
        return Candidate(self.backend, self.region, gpu).text

    def with_changes(self, **changes: Any) -> Job:
        return replace(self, **changes)

    def artifacts_uri(self, bucket: str, scheme: str = "s3") -> str:
        """Where this job's $JOBPLANE_OUTPUT_DIR ends up (the spec's outputs, else the stage's bucket in the
        store of the job's cloud: contract.store_for)."""
        from chalicelib.jobs.contract import artifacts_uri

        return artifacts_uri(self.spec, self.job_id, bucket, scheme)

    def to_api(self, artifacts_bucket: str | None = None, scheme: str = "s3") -> dict[str, Any]:
        """The job as the API shows it; artifacts_uri needs the stage's bucket unless the spec names outputs."""
        artifacts = self.artifacts_uri(artifacts_bucket, scheme) if artifacts_bucket or self.spec.outputs else None
        return {
            "job_id": self.job_id,
            "name": self.name,
            "owner": self.owner,
            "status": self.status.value,
            "backend": self.backend,
            "native_id": self.native_id,
            "native_name": self.native_name,
            "spec": self.spec.to_dict(),
            "attempt": self.attempt,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "failure_kind": self.failure_kind.value if self.failure_kind else None,
            "failure_reason": self.failure_reason,
            "cost_estimate_usd": self.cost_estimate_usd,
            "planner_reason": self.planner_reason,
            "status_reason": self.status_reason,
            "candidates": list(self.candidates),
            "region": self.region,
            "first_refusal_at": iso(self.first_refusal_at),
            "metrics": dict(self.metrics),
            "artifacts_uri": artifacts,
            "cost": cost_to_api(self.costs),
        }


@dataclass(frozen=True)
class JobEvent:
    """Something a source says about a job; every source is adapted to this one shape."""

    job_id: str
    status: JobStatus
    source: EventSource
    at: datetime = field(default_factory=utcnow)
    reason: str = ""
    native_status: str | None = None
    native_id: str | None = None
    attempt: int | None = None
    failure_kind: FailureKind | None = None
    exit_code: int | None = None
    # When the provider says the work began (lets a late terminal event still give a duration).
    started_at: datetime | None = None
    # What the provider said the attempt ran on and billed (chalicelib.pricing.jobs.Usage), when it said.
    usage: Any = None


@dataclass(frozen=True)
class Transition:
    """A decided status change; applied with one guarded write (status must still be from_status)."""

    job_id: str
    from_status: JobStatus
    to_status: JobStatus
    reason: str
    source: EventSource
    at: datetime
    native_status: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    # Capacity taken (claim, limit) or given back with this transition, in the same atomic write.
    acquire: tuple[tuple[Claim, int], ...] = ()
    release: tuple[Claim, ...] = ()
    # A QUEUED job that waits for the next reconcile tick instead of launching at once (no candidate left).
    hold: bool = False


@dataclass(frozen=True)
class HistoryEntry:
    job_id: str
    at: datetime
    from_status: JobStatus | None
    to_status: JobStatus
    reason: str
    source: EventSource
    native_status: str | None = None
    attempt: int = 1

    def to_api(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "from": self.from_status.value if self.from_status else None,
            "to": self.to_status.value,
            "reason": self.reason,
            "source": self.source.value,
            "native_status": self.native_status,
            "attempt": self.attempt,
        }
