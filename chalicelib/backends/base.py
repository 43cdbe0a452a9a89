"""The ComputeBackend interface: launch, describe, cancel, parse_event, with checks in one place."""

from __future__ import annotations

import base64
import binascii
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from functools import cached_property
from typing import Any, ClassVar

from chalicelib.config import Settings
from chalicelib.errors import UnsupportedError, ValidationError
from chalicelib.jobs.model import FailureKind, Job, JobStatus, native_name, utcnow
from chalicelib.jobs.spec_types import JobSpec
from chalicelib.pricing import Catalog, Quote, Unknown, for_settings
from chalicelib.pricing.jobs import AttemptCost, Usage, attempt_cost, with_usage

NATIVE_RE = re.compile(r"^jp-(?P<job_id>[0-9a-f]{32})(?:-a(?P<attempt>[0-9]+))?$")


@dataclass(frozen=True)
class Handle:
    """What a backend needs to find a job's resource again: our name always, the provider's id once known."""

    job_id: str
    native_name: str
    attempt: int = 1
    native_id: str | None = None
    #: the provider's long-running operation that creates the resource (GCE insert), read until it is done
    operation: str | None = None
    #: the region the job runs in (None: the deployment's)
    region: str | None = None

    @classmethod
    def of(cls, job: Job) -> Handle:
        name = job.native_name or native_name(job.job_id, job.attempt)
        return cls(job.job_id, name, job.attempt, job.native_id, job.launch_operation, job.region)


#: the region of the job a backend call is about (None: the deployment's). The public methods below set it
#: around their `_impl`, so a backend builds its clients for the job's region without passing it everywhere.
CALL_REGION: ContextVar[str | None] = ContextVar("jobplane_call_region", default=None)


@contextmanager
def in_region(region: str | None) -> Iterator[None]:
    token = CALL_REGION.set(region)
    try:
        yield
    finally:
        CALL_REGION.reset(token)


def parse_native_name(name: str | None) -> tuple[str, int] | None:
    """`jp-<job_id>[-a<attempt>]` -> (job_id, attempt); None for names jobplane did not make."""
    match = NATIVE_RE.match(name or "")
    if not match:
        return None
    return match["job_id"], int(match["attempt"] or 1)


def job_env(spec: JobSpec, handle: Handle) -> dict[str, str]:
    """The job's environment plus what jobplane tells every job about itself, by the same names on every
    backend: JOBPLANE_JOB_ID, JOBPLANE_ATTEMPT, and JOBPLANE_OUTPUT_URI / JOBPLANE_CHECKPOINT_URI when set."""
    env = dict(spec.env)
    env["JOBPLANE_JOB_ID"] = handle.job_id
    env["JOBPLANE_ATTEMPT"] = str(handle.attempt)
    if spec.checkpoint_uri:
        env["JOBPLANE_CHECKPOINT_URI"] = spec.checkpoint_uri
    if spec.outputs:
        env["JOBPLANE_OUTPUT_URI"] = spec.outputs
    return env


@dataclass(frozen=True)
class Observation:
    """What a backend saw of one job's resource, already in jobplane's terms."""

    status: JobStatus
    native_status: str
    native_id: str | None = None
    job_id: str | None = None
    attempt: int | None = None
    reason: str = ""
    failure_kind: FailureKind | None = None
    exit_code: int | None = None
    at: datetime | None = None
    started_at: datetime | None = None
    #: still in the provider's own queue (Batch RUNNABLE, Vertex PENDING/QUEUED, SageMaker starting with a
    #: capacity message): reconcile moves it on after the spec's capacity_wait_minutes
    waiting_for_capacity: bool = False
    #: what the provider says the attempt runs on and billed (chalicelib.pricing.jobs.Usage), when it says
    usage: Any = None
    #: why the launched resource waits, in the provider's own words (Kueue's admission message, a pod that
    #: cannot be scheduled): reconcile records it as the job's status_reason while the job stays LAUNCHING
    waiting_reason: str | None = None

    def __post_init__(self) -> None:
        if self.status is JobStatus.FAILED and self.failure_kind is None:
            object.__setattr__(self, "failure_kind", FailureKind.BACKEND_ERROR)


#: what GET /jobs/{id}/logs?offset= takes and gives back: a byte offset where the output is a file
#: (local, the EC2 log object), an encoded provider cursor (LOG_CURSOR_PREFIX...) where the provider pages
Offset = int | str
LOG_CURSOR_PREFIX = "t~"


def encode_log_token(state: dict[str, Any]) -> str:
    """A provider cursor as an opaque offset (URL-safe, so it travels in a query string as it is)."""
    raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    return LOG_CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_log_token(offset: str) -> dict[str, Any]:
    """The cursor inside an offset encode_log_token made; ValidationError naming `offset` otherwise."""
    if not offset.startswith(LOG_CURSOR_PREFIX):
        raise bad_offset()
    body = offset[len(LOG_CURSOR_PREFIX) :]
    try:
        state = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_offset() from None
    if not isinstance(state, dict):
        raise bad_offset()
    return state


def bad_offset(why: str = "offset must be a non-negative integer or a next_offset returned earlier") -> ValidationError:
    return ValidationError(why, [{"field": "offset", "message": "the next_offset of the previous call, or 0"}])


@dataclass(frozen=True)
class LogChunk:
    """A slice of a job's output: `text` from `offset`, where to continue, and whether it can grow.

    `note` says why there is no output (yet) when that is known: never started, not shipped yet."""

    text: str
    next_offset: Offset
    complete: bool
    note: str | None = None


#: pages of logs() the default tail() reads from the start to find the end (at 64 KiB a page: 1 MiB)
TAIL_PAGES = 16


def last_lines(text: str, max_lines: int, max_bytes: int, *, cut: bool = False) -> list[str]:
    """The last `max_lines` lines of `text`, together at most `max_bytes` of UTF-8 (newlines counted); a last
    line longer than that keeps its end after "…". `cut`: the text starts inside a line (dropped)."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if cut and len(lines) > 1:
        lines = lines[1:]
    picked: list[str] = []
    size = 0
    for line in reversed(lines):
        if len(picked) == max_lines:
            break
        cost = len(line.encode("utf-8", errors="replace")) + 1
        if size + cost > max_bytes:
            if not picked and max_bytes > 4:
                end = line.encode("utf-8", errors="replace")[-(max_bytes - 4) :]
                picked.append("…" + end.decode("utf-8", errors="ignore"))
            break
        picked.append(line)
        size += cost
    return picked[::-1]


class ResourceKind(str, Enum):
    """What a tagged resource is, which decides the rules the reaper judges it by."""

    #: a managed-service job (SageMaker, Batch, ...): stopped with its job, no idle notion
    JOB = "job"
    #: an ad-hoc VM running one job: also stopped when overdue or idle
    VM = "vm"
    #: a dev VM: judged by its own record (idle_minutes, max_hours), never by the job sweep
    DEVVM = "devvm"


class PowerState(str, Enum):
    """Where a tagged resource is in its life, in the terms that decide what it costs."""

    #: powered on (or starting, or stopping): it bills for its machine and can be stopped
    RUNNING = "running"
    #: powered off but still there: a stopped VM keeps its disk, and its bill for it
    STOPPED = "stopped"
    #: ended or being deleted: nothing is left to stop
    GONE = "gone"


@dataclass(frozen=True)
class ManagedResource:
    """A provider resource carrying jobplane's tags: the only kind of thing the reaper may act on."""

    backend: str
    resource_id: str  # the provider's id: i-0abc..., a GCE instance name, a training job name
    kind: ResourceKind
    state: str  # the provider's state, as it says it
    power: PowerState
    stage: str | None  # the jobplane:stage tag: another stage's resources are never touched
    native_name: str | None = None  # our name for it (jp-<job_id>[-a<attempt>]), from its tags
    job_id: str | None = None
    attempt: int | None = None
    launched_at: datetime | None = None
    #: listed by name only (a managed service's list shows no tags): its own tags are read (confirm) before
    #: anything is done to it, and until then it has no stage
    unverified: bool = False

    @property
    def running(self) -> bool:
        """True while it costs money for its machine and can be stopped."""
        return self.power is PowerState.RUNNING

    @property
    def stopped(self) -> bool:
        """Powered off but still there (and still billing for its disk)."""
        return self.power is PowerState.STOPPED


@dataclass(frozen=True)
class Utilization:
    """What a VM reported over the idle window (CloudWatch / Cloud Monitoring, published by the VM)."""

    gpu_percent: float | None  # mean GPU utilisation over the window; None when nothing was published
    last_heartbeat: datetime | None


@dataclass(frozen=True)
class LaunchResult:
    """The provider's id or ARN for what it launched (None when it gave none) and its status."""

    native_id: str | None
    native_status: str = "Submitted"
    #: the operation that still creates the resource (GCE insert answers before the VM exists)
    operation: str | None = None


class ComputeBackend(ABC):
    """A service that runs training jobs. Public methods wrap the `_impl` ones."""

    #: registry key, as written in a spec's `backend`
    name: ClassVar[str]
    #: feature -> why this backend cannot offer it (checked before every launch)
    unsupported_features: ClassVar[dict[str, str]] = {}
    #: IAM actions the control plane needs for this backend (the checked-in policy grants exactly these)
    iam_actions: ClassVar[tuple[str, ...]] = ()
    #: `source` values of the state events this backend understands
    event_sources: ClassVar[tuple[str, ...]] = ()
    #: True when the provider addresses the resource by the name jobplane gives it (so native_id = native_name)
    named_by_us: ClassVar[bool] = False

    #: the backend's facts (chalicelib.backends.BackendDescriptor); the attributes above are copied from it
    descriptor: ClassVar[Any] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Declared once in the descriptor; copied so the methods keep reading self.name, self.iam_actions...
        found = cls.__dict__.get("descriptor")
        if found is not None:
            cls.name = found.name
            cls.unsupported_features = dict(found.unsupported_features)
            cls.iam_actions = tuple(found.iam_actions)
            cls.event_sources = tuple(found.event_sources)
            cls.reaps = found.reaps

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def defers_capacity(cls, settings: Settings, spec: JobSpec) -> bool:  # noqa: ARG003 (the interface)
        """True when the provider queues this job itself (Kueue): jobplane's capacity limits do not apply."""
        return False

    def roles(self) -> tuple[tuple[str, str], ...]:
        """(role, service) pairs the control plane passes to the provider (AWS backends name theirs)."""
        return ()

    # --- cross-cutting checks, in one place ---------------------------------------------
    def validate(self, spec: JobSpec) -> None:
        """Raise UnsupportedError naming the field when this backend cannot run `spec`.

        Called once per launch decision (the planner, a fallback candidate), not again at launch."""
        resources = spec.resources
        wanted = {
            "gpu": resources.gpus > 0,
            "spot": resources.spot,
            "tpu": resources.tpu is not None,
            "checkpoint": spec.checkpoint_uri is not None,
        }
        fields = {
            "gpu": "resources.gpus",
            "spot": "resources.spot",
            "tpu": "resources.tpu",
            "checkpoint": "checkpoint_uri",
        }
        for feature, needed in wanted.items():
            if needed and feature in self.unsupported_features:
                raise UnsupportedError(
                    f"backend {self.name!r} cannot run this job: {self.unsupported_features[feature]}",
                    [{"field": fields[feature], "message": self.unsupported_features[feature]}],
                )
        most = getattr(self.descriptor, "max_nodes", 1)
        if resources.nodes > most:
            from chalicelib.jobs.spec import nodes_refusal

            why = nodes_refusal(self.descriptor, resources.nodes) if self.descriptor else f"at most {most} node"
            raise UnsupportedError(
                f"backend {self.name!r} cannot run this job: {why}",
                [{"field": "resources.nodes", "message": why}],
            )
        self._validate_impl(spec)

    def launch(self, job: Job) -> LaunchResult:
        """Start the job's current attempt; idempotent (a retried launch starts nothing new)."""
        with in_region(job.region):
            return self._launch_impl(job, Handle.of(job))

    def launch_request(self, job: Job) -> dict[str, Any] | None:
        """For a dry run: the provider call(s) launch() would make, as {"service", "calls": [{"operation",
        "request"}]}; None when this backend does not show them. Sends nothing."""
        with in_region(job.region):
            return self._launch_request_impl(job, Handle.of(job))

    def _launch_request_impl(self, job: Job, handle: Handle) -> dict[str, Any] | None:  # noqa: ARG002
        return None

    def describe(self, handle: Handle) -> Observation | None:
        """The resource's current state, or None when it does not exist."""
        with in_region(handle.region):
            return self._describe_impl(handle)

    #: ids one batched describe call takes (Batch DescribeJobs, ECS DescribeTasks); reconcile's shards are
    #: cut at multiples of it, so every batch but a backend's last is full
    describe_batch: ClassVar[int] = 100

    #: True when describe_many lists everything the backend runs (whatever handles it is given): reconcile
    #: then keeps all of the backend's jobs in one shard, so the list is read once a tick
    describes_by_listing: ClassVar[bool] = False
    #: Observation fields describe_many may leave unset because a list page does not carry them; reconcile
    #: describes a job again before applying such an observation
    listed_fields_unknown: ClassVar[frozenset[str]] = frozenset()

    def describe_many(self, handles: list[Handle]) -> dict[str, Observation | None]:
        """job_id -> what `describe` would answer for each handle (None: no such resource), in as few
        provider calls as the provider allows; backends that batch or list override `_describe_many_impl`."""
        if not handles:
            return {}
        by_region: dict[str | None, list[Handle]] = {}
        for handle in handles:
            by_region.setdefault(handle.region, []).append(handle)
        found: dict[str, Observation | None] = {}
        for region, group in by_region.items():  # one batch (or listing) per region the jobs run in
            with in_region(region):
                found.update(self._describe_many_impl(group))
        return found

    def _describe_many_impl(self, handles: list[Handle]) -> dict[str, Observation | None]:
        return {h.job_id: self.describe(h) for h in handles}

    def cancel(self, handle: Handle) -> None:
        """Ask the provider to stop the resource; returns without waiting for it to stop."""
        with in_region(handle.region):
            self._cancel_impl(handle)

    def parse_event(self, raw: dict[str, Any]) -> Observation | None:
        """Translate one provider state event; None when it is not about a jobplane resource."""
        return self._parse_event_impl(raw)

    def logs(self, handle: Handle, offset: Offset = 0, limit: int = 65536, node: int | None = None) -> LogChunk:
        """About `limit` bytes of the job's output from `offset` (0, or a next_offset this backend gave);
        `node`: one node's output of a multi-node job (None: every node's, merged)."""
        start = max(offset, 0) if isinstance(offset, int) else offset
        with in_region(handle.region):
            if node is None:
                return self._logs_impl(handle, start, limit)
            return self._node_logs_impl(handle, node, start, limit)

    def _node_logs_impl(self, handle: Handle, node: int, offset: Offset, limit: int) -> LogChunk:
        raise UnsupportedError(
            f"backend {self.name!r} serves a multi-node job's output merged, not per node",
            [{"field": "node", "message": "omit it to read every node's output"}],
        )

    def tail(self, handle: Handle, max_lines: int = 15, max_bytes: int = 2048) -> list[str] | None:
        """The last lines of the job's output (see last_lines), or None when its end is out of reach:
        never lines from the middle presented as the end."""
        return self._tail_impl(handle, max_lines, max_bytes)

    def _tail_impl(self, handle: Handle, max_lines: int, max_bytes: int) -> list[str] | None:
        # Providers page forward only: read from the start, keep the end, give up past TAIL_PAGES pages.
        offset: Offset = 0
        window, cut = "", False
        for _ in range(TAIL_PAGES):
            chunk = self.logs(handle, offset)
            if not chunk.text:
                return last_lines(window, max_lines, max_bytes, cut=cut)
            window += chunk.text
            if len(window) > max_bytes + 1:
                window, cut = window[-(max_bytes + 1) :], True
            offset = chunk.next_offset
        return None

    # --- cost ------------------------------------------------------------------------------
    def hourly_quote(self, spec: JobSpec, region: str | None, usage: Usage | None = None) -> tuple[str, Quote]:
        """(what is priced, the catalog's price per hour of everything one attempt of `spec` runs on) in
        `region` (None: the deployment's); `usage` is what the provider reported the attempt ran on, which
        wins over what the spec asks for. Unknown, with the reason, where the catalog has no price."""
        return self.name, Unknown(f"backend {self.name!r} has no prices in the catalog")

    #: True when hourly_quote already prices every node of a multi-node job (SageMaker's InstanceCount)
    quotes_every_node: ClassVar[bool] = False

    def node_quote(self, spec: JobSpec, region: str | None, usage: Usage | None = None) -> tuple[str, Quote]:
        """hourly_quote for the whole job: a multi-node job bills every node (`resources.nodes` machines of the
        one hourly_quote prices), unless the backend's quote counts them itself."""
        priced, quote = self.hourly_quote(spec, region, usage)
        nodes = spec.resources.nodes
        if nodes > 1 and not self.quotes_every_node:
            return f"{priced} x {nodes} nodes", quote.times(nodes)
        return priced, quote

    @cached_property
    def catalog(self) -> Catalog:
        """The packaged price catalog, with this deployment's local price (JOBPLANE_LOCAL_PRICE_PER_HOUR)."""
        return for_settings(self.settings)

    #: True when an attempt's price depends on where the provider placed it, which describe() and state events
    #: read (with a call of their own: ECS and Batch container instances) and describe_many() does not: a start
    #: applied from a batched read is described once more, so in-sync ticks stay one batched call
    priced_by_placement: ClassVar[bool] = False

    def attempt_cost(self, job: Job, until: datetime, usage: Usage | None = None, final: bool = False) -> AttemptCost:
        """The current attempt's cost up to `until`: hourly_quote times the hours it billed (see
        chalicelib.pricing.jobs.attempt_cost), with what the record already says it ran on."""
        usage = with_usage(job.costs, job.attempt, usage)
        try:
            priced, quote = self.node_quote(job.spec, job.region, usage)
        except ValidationError as exc:  # a spec the catalog cannot map (no instance type fits): unknown, why
            priced, quote = self.name, Unknown(exc.message)
        return attempt_cost(
            quote,
            attempt=job.attempt,
            backend=self.name,
            region=job.region,
            priced=priced,
            started_at=job.started_at,
            until=until,
            usage=usage,
            final=final,
        )

    # --- max runtime -----------------------------------------------------------------------
    #: False when nothing on the provider's side stops a job at max_runtime_minutes (ECS): reconcile does,
    #: through stop_overdue
    enforces_max_runtime: ClassVar[bool] = True

    def stop_overdue(self, handle: Handle, reason: str) -> None:
        """Stop a job that ran past max_runtime_minutes, saying why where the provider keeps a reason."""
        self.cancel(handle)

    # --- the reaper's view: resources that carry jobplane's tags ---------------------------
    #: True when list_managed / stop_resource are implemented (ad-hoc VMs must have them)
    reaps: ClassVar[bool] = False

    #: native ids the sweep already accounts for (the active jobs' current resources): a backend that reads
    #: each listed resource again for its tags (ECS) leaves these out, since no rule stops a live job's own
    known_native_ids: frozenset[str] = frozenset()

    def list_managed(self, known: frozenset[str] = frozenset()) -> list[ManagedResource]:
        """Every resource tagged jobplane:managed=true for this stage (one tag-filtered list call)."""
        if not self.reaps:
            return []
        self.known_native_ids = frozenset(known)
        return [r for r in self._list_managed_impl() if r.stage == self.settings.stage or r.unverified]

    def confirm(self, resources: list[ManagedResource]) -> list[ManagedResource]:
        """Of resources listed unverified, those whose own tags say this stage's jobplane made them, with the
        tags' job and attempt; the rest (untagged, another stage's) are dropped, so never touched."""
        if not resources:
            return []
        found = self._confirm_impl([r for r in resources if r.unverified])
        return [r for r in found if not r.unverified and r.stage == self.settings.stage and r.backend == self.name]

    def _confirm_impl(self, resources: list[ManagedResource]) -> list[ManagedResource]:
        return []  # a backend that lists unverified resources reads their tags here

    def stop_resource(self, resource: ManagedResource, reason: str) -> None:
        """Stop (or terminate) a tagged resource and record on it who stopped it and why."""
        if resource.stage != self.settings.stage or resource.backend != self.name:
            raise UnsupportedError(f"refusing to stop {resource.resource_id}: not this deployment's resource")
        self._stop_resource_impl(resource, reason)

    def release(self, handle: Handle, reason: str) -> None:
        """Called once, in the invocation that made the job terminal: stop whatever still runs for it
        (an ad-hoc VM). The reaper's sweep is the second, independent way."""
        self._release_impl(handle, reason)

    def _release_impl(self, handle: Handle, reason: str) -> None:
        return None

    def utilization(self, resource: ManagedResource, window_minutes: int) -> Utilization | None:
        """GPU activity and heartbeat over the window, or None when the backend cannot tell."""
        return None

    def _list_managed_impl(self) -> list[ManagedResource]:
        return []

    def _stop_resource_impl(self, resource: ManagedResource, reason: str) -> None:
        raise UnsupportedError(f"backend {self.name!r} cannot stop resources")

    def estimate_cost(self, job: Job, until: datetime | None = None) -> float | None:
        """USD of the current attempt up to `until` (default: its end, else now); None when unknown."""
        return self.attempt_cost(job, until or job.finished_at or utcnow()).usd

    # --- what each backend implements --------------------------------------------------
    def _validate_impl(self, spec: JobSpec) -> None:
        return None

    @abstractmethod
    def _launch_impl(self, job: Job, handle: Handle) -> LaunchResult: ...

    @abstractmethod
    def _describe_impl(self, handle: Handle) -> Observation | None: ...

    @abstractmethod
    def _cancel_impl(self, handle: Handle) -> None: ...

    def _parse_event_impl(self, raw: dict[str, Any]) -> Observation | None:
        return None

    def _logs_impl(self, handle: Handle, offset: Offset, limit: int) -> LogChunk:
        raise UnsupportedError(
            f"backend {self.name!r} does not serve logs through jobplane yet",
            [{"field": "backend", "message": "read them in the provider's console"}],
        )
