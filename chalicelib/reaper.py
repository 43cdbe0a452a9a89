"""Reconcile: heal missed events by asking backends for the truth about every active job."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

from chalicelib.backends.base import Handle, ManagedResource, ResourceKind
from chalicelib.errors import JobplaneError, StaleStateError, ValidationError
from chalicelib.events import to_job_event
from chalicelib.jobs.model import EventSource, FailureKind, Job, JobEvent, JobStatus, utcnow
from chalicelib.notify.slack import drain_outbox
from chalicelib.pricing import Cost
from chalicelib.pricing.jobs import merged, total

log = logging.getLogger("jobplane.reaper")
RELAUNCH_REASON = "relaunched by reconcile"


class Action(str, Enum):
    """Everything reconcile can decide, about an active job or about a tagged resource."""

    # --- about an active job (decide_reconcile) ---
    #: in sync with its backend, or its launch is still within the deadline
    NONE = "none"
    #: the backend reports another status: its observation goes through the state machine
    APPLY = "apply"
    #: QUEUED: served with the queue, in order, once every job was looked at
    DISPATCH = "dispatch"
    #: CANCELLING but the resource still runs: ask the backend to stop it again
    RECANCEL = "recancel"
    #: LAUNCHING with no resource past the deadline (the launch was lost): launch the same attempt again
    RELAUNCH = "relaunch"
    #: CANCELLING and the resource is gone: the cancel is done
    CANCELLED = "cancelled"
    #: the resource vanished (or a relaunch found nothing either): the job fails as a backend error
    FAIL_LOST = "fail_lost"
    #: first seen waiting in the provider's own queue for capacity: the wait is recorded on the job
    QUEUE_WAIT = "queue_wait"
    #: LAUNCHING and the provider says why it waits (Observation.waiting_reason): recorded as status_reason
    NOTE_WAIT = "note_wait"
    #: in the provider's queue past capacity_wait_minutes: stopped there, and failed over (machine.failover)
    QUEUE_FAILOVER = "queue_failover"
    #: RUNNING past max_runtime_minutes plus the grace on a backend that does not stop it (ECS): stopped
    #: with the reason, and the job fails as a timeout
    STOP_OVERRUN = "stop_overrun"
    #: RUNNING and its cost reached the spec's max_cost_usd: stopped with the figures, and the job fails as
    #: budget
    STOP_BUDGET = "stop_budget"
    # --- about a tagged resource (decide_resource) ---
    #: no job behind it, or left over from an earlier attempt
    STOP_ORPHAN = "stop_orphan"
    #: its job is terminal and it still runs
    STOP_FINISHED = "stop_finished"
    #: past max_runtime_minutes plus the grace: stopped, and the job fails as a timeout
    STOP_OVERDUE = "stop_overdue"
    #: no heartbeat or GPU use over the idle window: stopped, and the job fails as idle
    STOP_IDLE = "stop_idle"
    #: a powered-off job VM nobody will start again (it still bills for its disk)
    REMOVE_STOPPED = "remove_stopped"
    # --- about the tick ---
    #: a shard of active jobs was handed to another invocation (reconcile_shard), which reads their truth
    SHARD = "shard"
    # --- either ---
    #: asking a backend failed; recorded, and the next run tries again
    ERROR = "error"


@dataclass(frozen=True)
class Effect:
    """How an action is applied, in this order: stop the tagged resource (or the job's, as overdue), stop the
    job's resource again,
    feed the backend's observation, relaunch, then record an event of reconcile's own on the job."""

    stop_resource: bool = False
    stop_job: bool = False
    recancel: bool = False
    observe: bool = False
    relaunch: bool = False
    to_status: JobStatus | None = None
    failure_kind: FailureKind | None = None
    mark_wait: bool = False
    note: bool = False


EFFECTS: dict[Action, Effect] = {
    Action.NONE: Effect(),
    Action.DISPATCH: Effect(),  # the queue is served in order once the loop is done
    Action.ERROR: Effect(),
    Action.SHARD: Effect(),
    Action.APPLY: Effect(observe=True),
    Action.RECANCEL: Effect(recancel=True),
    Action.RELAUNCH: Effect(relaunch=True),
    Action.CANCELLED: Effect(to_status=JobStatus.CANCELLED),
    Action.FAIL_LOST: Effect(to_status=JobStatus.FAILED, failure_kind=FailureKind.BACKEND_ERROR),
    Action.QUEUE_WAIT: Effect(mark_wait=True),
    Action.NOTE_WAIT: Effect(note=True),
    Action.QUEUE_FAILOVER: Effect(recancel=True, to_status=JobStatus.FAILED, failure_kind=FailureKind.NO_CAPACITY),
    Action.STOP_OVERRUN: Effect(stop_job=True, to_status=JobStatus.FAILED, failure_kind=FailureKind.TIMEOUT),
    Action.STOP_BUDGET: Effect(stop_job=True, to_status=JobStatus.FAILED, failure_kind=FailureKind.BUDGET),
    Action.STOP_ORPHAN: Effect(stop_resource=True),
    Action.STOP_FINISHED: Effect(stop_resource=True),
    Action.REMOVE_STOPPED: Effect(stop_resource=True),
    Action.STOP_OVERDUE: Effect(stop_resource=True, to_status=JobStatus.FAILED, failure_kind=FailureKind.TIMEOUT),
    Action.STOP_IDLE: Effect(stop_resource=True, to_status=JobStatus.FAILED, failure_kind=FailureKind.IDLE),
}


@dataclass(frozen=True)
class Decision:
    """One decision about one job or resource, with the reason; recorded per item so one failure aborts nothing."""

    job_id: str
    action: Action
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "action": self.action.value, "reason": self.reason}


def decide_reconcile(
    job: Job, observation, now, launch_deadline: timedelta, overrun_grace: timedelta | None = None
) -> Decision:
    """Pure: what to do about one active job given what its backend reports (None = no resource).
    `overrun_grace`: the backend does not stop jobs at max_runtime_minutes, reconcile does after this grace."""
    if job.status is JobStatus.QUEUED:
        return Decision(job.job_id, Action.DISPATCH, job.status_reason or "queued")
    if observation is None:
        if job.status is JobStatus.CANCELLING:
            return Decision(
                job.job_id,
                Action.CANCELLED,
                f"backend {job.backend} has no resource {job.native_id or job.native_name} left",
            )
        if job.status is JobStatus.LAUNCHING:
            if (now - (job.updated_at or job.created_at)) < launch_deadline:
                return Decision(job.job_id, Action.NONE, "launch in progress")
            if not (job.status_reason or "").startswith(RELAUNCH_REASON):
                # The function died between the LAUNCHING write and the launch: launching the same
                # native name again cannot start a second job.
                return Decision(job.job_id, Action.RELAUNCH, f"no resource {job.native_name} after the launch deadline")
        return Decision(
            job.job_id, Action.FAIL_LOST, f"backend {job.backend} has no resource {job.native_id or job.native_name}"
        )
    waiting = observation.waiting_reason
    if waiting and job.status is JobStatus.LAUNCHING and observation.status.rank <= job.status.rank:
        if waiting != job.status_reason:
            return Decision(job.job_id, Action.NOTE_WAIT, waiting)
        if not (observation.waiting_for_capacity and job.spec.capacity_wait_minutes):
            return Decision(job.job_id, Action.NONE, f"waiting ({waiting})")
    if observation.status is not job.status:
        if job.status is JobStatus.CANCELLING and not observation.status.terminal:
            return Decision(job.job_id, Action.RECANCEL, f"still {observation.native_status} after a cancel request")
        return Decision(job.job_id, Action.APPLY, f"backend reports {observation.native_status}")
    if job.status is JobStatus.LAUNCHING and observation.waiting_for_capacity and job.spec.capacity_wait_minutes:
        return _queue_wait(job, observation, now)
    started = job.started_at or observation.started_at
    if overrun_grace is not None and job.status is JobStatus.RUNNING and started is not None:
        limit = timedelta(minutes=job.spec.max_runtime_minutes) + overrun_grace
        if now - started > limit:
            return Decision(
                job.job_id,
                Action.STOP_OVERRUN,
                f"running {_minutes(now - started)} min, past max_runtime_minutes "
                f"({job.spec.max_runtime_minutes}) plus {_minutes(overrun_grace)} min grace",
            )
    return Decision(job.job_id, Action.NONE, f"in sync ({observation.native_status})")


def decide_budget(job: Job, spent: Cost) -> Decision | None:
    """Pure: a RUNNING job whose cost so far (every attempt, the running one up to now) reached the spec's
    max_cost_usd is stopped; an unknown cost cannot be judged (submit refuses a cap it could not price)."""
    cap = job.spec.max_cost_usd
    if cap is None or job.status is not JobStatus.RUNNING or spent.usd is None or spent.usd < cap:
        return None
    return Decision(
        job.job_id,
        Action.STOP_BUDGET,
        f"cost ${spent.usd:,.4f} reached max_cost_usd ${cap:,.4f}"
        + (f" (prices of {spent.read_at.isoformat()})" if spent.read_at else ""),
    )


def _queue_wait(job: Job, observation, now) -> Decision:
    """A job in its provider's queue waits capacity_wait_minutes from its first refusal, then moves on."""
    where = f"{job.backend}'s queue ({observation.native_status})"
    if job.first_refusal_at is None:
        return Decision(job.job_id, Action.QUEUE_WAIT, f"waiting for capacity in {where}")
    limit = job.spec.capacity_wait_minutes
    waited = now - job.first_refusal_at
    if waited >= timedelta(minutes=limit):
        reason = f"waited {_minutes(waited)} minutes for capacity in {where}, past capacity_wait_minutes ({limit})"
        return Decision(job.job_id, Action.QUEUE_FAILOVER, reason)
    return Decision(
        job.job_id, Action.NONE, f"waiting for capacity in {where} for {_minutes(waited)} of {limit} minutes"
    )


@dataclass(frozen=True)
class ReapPolicy:
    """When a tagged VM is stopped from outside (the second way every GPU stops)."""

    idle_gpu_percent: float = 5.0
    idle_minutes: float = 30
    overdue_grace_minutes: int = 15

    @classmethod
    def from_settings(cls, settings) -> ReapPolicy:
        return cls(settings.idle_gpu_percent, settings.idle_minutes, settings.overdue_grace_minutes)


def decide_resource(resource, job: Job | None, now, policy: ReapPolicy, usage=None) -> Decision | None:
    """Pure: should this tagged, running resource be stopped? `job` is its job (None: no such job)."""
    key = resource.job_id or resource.resource_id
    if resource.kind is ResourceKind.DEVVM:
        return None  # dev VMs are judged by their own record (idle_minutes / max_hours)
    if not resource.running:
        if resource.stopped and resource.kind is ResourceKind.VM and (job is None or job.terminal):
            # A powered-off job VM nobody will start again still bills for its disk.
            return Decision(
                key,
                Action.REMOVE_STOPPED,
                f"{resource.resource_id} is {resource.state} and its job is {job.status.value if job else 'gone'}",
            )
        return None
    if job is None:
        return Decision(key, Action.STOP_ORPHAN, f"orphaned: {resource.resource_id} has no job behind it")
    if job.terminal:
        return Decision(key, Action.STOP_FINISHED, f"job is {job.status.value}")
    if resource.attempt is not None and resource.attempt < job.attempt:
        return Decision(key, Action.STOP_ORPHAN, f"left over from attempt {resource.attempt} (job is on {job.attempt})")
    if resource.kind is not ResourceKind.VM:
        return None
    started = resource.launched_at or job.started_at
    if started is None:
        return None
    limit = timedelta(minutes=job.spec.max_runtime_minutes + policy.overdue_grace_minutes)
    if now - started > limit:
        return Decision(
            key,
            Action.STOP_OVERDUE,
            f"running {_minutes(now - started)} min, past max_runtime_minutes "
            f"plus {policy.overdue_grace_minutes} min grace",
        )
    window = timedelta(minutes=policy.idle_minutes)
    if usage is None or now - started < window:
        return None  # too young to judge (it is still booting or pulling its image)
    if usage.last_heartbeat is None or now - usage.last_heartbeat > window:
        return Decision(key, Action.STOP_IDLE, f"no heartbeat for {policy.idle_minutes:g} min")
    if usage.gpu_percent is not None and usage.gpu_percent < policy.idle_gpu_percent:
        return Decision(
            key,
            Action.STOP_IDLE,
            f"GPU utilisation {usage.gpu_percent:.1f}% < {policy.idle_gpu_percent}% for {policy.idle_minutes:g} min",
        )
    return None


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def sweep(service, active: dict[str, Job], now) -> list[Decision]:
    """Stop tagged resources that should not run: job ended, orphaned, overdue or idle.

    Only resources listed by a backend's tag-filtered call for this stage are considered;
    anything without jobplane's tags is never seen, so never touched.
    """
    policy = ReapPolicy.from_settings(service.settings)
    decisions: list[Decision] = []
    for name in service.settings.enabled_backends:
        try:
            backend = service.backend(name)
            if not backend.reaps:
                continue
            known = frozenset(j.native_id for j in active.values() if j.backend == name and j.native_id)
            resources = backend.list_managed(known)
        except JobplaneError as exc:
            decisions.append(Decision(name, Action.ERROR, f"listing {name} resources failed: {exc.message}"))
            continue
        unverified = _sweep_resources(service, backend, resources, active, now, policy, decisions)
        if not unverified:
            continue
        # Listed by name only: their own tags are read (one call per batch the provider allows) for those
        # that would be stopped, and only this stage's jobplane resources are judged again and stopped.
        try:
            confirmed = backend.confirm(unverified)
        except JobplaneError as exc:
            decisions.append(
                Decision(name, Action.ERROR, f"reading the tags of {name} resources failed: {exc.message}")
            )
            continue
        _sweep_resources(service, backend, confirmed, active, now, policy, decisions)
    return decisions


def _sweep_resources(service, backend, resources, active, now, policy, decisions) -> list[ManagedResource]:
    """Judge and stop each resource; return the unverified ones that would be stopped (confirm them first)."""
    pending: list[ManagedResource] = []
    for resource in resources:
        try:
            job = active.get(resource.job_id) if resource.job_id else None
            if job is None and resource.job_id:
                job = service.store.get_job(resource.job_id)  # finished jobs are not in the active map
            usage = None
            if resource.kind is ResourceKind.VM and job is not None and not job.terminal:
                started = resource.launched_at or job.started_at
                # a VM younger than the idle window cannot be judged idle: its heartbeat is not read
                if started is not None and now - started >= timedelta(minutes=policy.idle_minutes):
                    usage = backend.utilization(resource, policy.idle_minutes)
            decision = decide_resource(resource, job, now, policy, usage)
            if decision is None:
                continue
            if resource.unverified:
                pending.append(resource)
                continue
            apply(service, decision, job, resource=resource, backend=backend)
            log.info("reaper: %s %s (%s)", decision.action.value, resource.resource_id, decision.reason)
            decisions.append(decision)
        except JobplaneError as exc:
            decisions.append(Decision(resource.resource_id, Action.ERROR, exc.message))
        except Exception as exc:  # best-effort loop: one resource must not stop the sweep
            log.exception("reaping %s failed", resource.resource_id)
            decisions.append(Decision(resource.resource_id, Action.ERROR, f"{type(exc).__name__}: {exc}"))
    return pending


def apply(
    service,
    decision: Decision,
    job: Job | None,
    *,
    observation=None,
    resource: ManagedResource | None = None,
    backend=None,
) -> None:
    """Carry out one decision through its entry in EFFECTS (the only place decisions meet I/O)."""
    effect = EFFECTS[decision.action]
    reason = decision.reason
    if effect.stop_resource:
        reason = f"stopped by jobplane reaper: {decision.reason}"
        backend.stop_resource(resource, reason)
    if effect.mark_wait:
        try:
            service.store.update_job(job, job.status, first_refusal_at=utcnow(), status_reason=reason)
        except StaleStateError:
            pass  # it moved on meanwhile: the next run looks again
    if effect.note:
        try:
            service.store.update_job(job, job.status, status_reason=reason)
        except StaleStateError:
            pass  # it moved on meanwhile: the next run looks again
    if effect.stop_job:
        reason = f"stopped by jobplane reconcile: {decision.reason}"
        (backend or service.backend(job.backend)).stop_overdue(Handle.of(job), reason)
    if effect.recancel:
        service.stop_resource(job)
    if effect.observe:
        # The job as this run read it: a healing write needs no second read (a lost race reads again).
        service.apply_event(to_job_event(observation, EventSource.RECONCILE), current=job)
    if effect.relaunch:
        service.dispatcher.relaunch(job, f"{RELAUNCH_REASON}: {decision.reason}")
    if effect.to_status is not None and job is not None and not job.terminal:
        service.apply_event(
            JobEvent(
                job.job_id,
                effect.to_status,
                EventSource.RECONCILE,
                reason=reason,
                failure_kind=effect.failure_kind,
                attempt=job.attempt,
            ),
            current=job,
        )


def reconcile_all(
    service, devvm_service=None, fan_out: FanOut | None = None, endpoint_service=None
) -> list[dict[str, Any]]:
    """The scheduled run: jobs (heal, sweep, queue), their metrics, then dev VMs (idle, max hours), then
    inference endpoints (their state, and deletion of the idle ones)."""
    service.dispatcher.quotas.new_tick()  # account quotas are read again once per tick (jobs/quotas.py)
    jobs = list(service.store.iter_active())  # one read of the active index for the whole tick
    results = [d.to_dict() for d in reconcile(service, fan_out, jobs=jobs)]
    results.extend(read_metrics(service, jobs))
    if jobs and getattr(service, "budgets", None) is not None:
        # Spend moves only while jobs are active: an idle tick reads no budget (and the stream covers a job's end).
        from chalicelib.budgets.service import evaluate_safely

        results.extend(evaluate_safely(service, jobs))
    if devvm_service is not None:
        results.extend(d.to_dict() for d in devvm_service.reap())
    if endpoint_service is not None:
        results.extend(d.to_dict() for d in endpoint_service.reconcile())
    results.extend(drain_outbox())
    return results


def read_metrics(service, jobs: list[Job] | None = None) -> list[dict[str, Any]]:
    """Each RUNNING job's output read on from its metrics cursor, one logs() page of at most TICK_BYTES a job;
    a summary when anything was read or failed (nothing without a metrics store).

    `jobs`: the active jobs as this tick's reconcile read them (no second query of the active index). A job
    reconcile just saw start is read from the next tick; one it just saw end had its output read to the end
    by that transition, and the cursor guard makes this read's write a no-op."""
    from chalicelib.jobs.metrics_reader import TICK_BYTES, TICK_PAGES

    reader = service.metrics_reader
    if reader is None:
        return []
    read, errors = 0, []
    for job in service.store.iter_active() if jobs is None else jobs:
        if job.status is not JobStatus.RUNNING:
            continue
        try:
            reader.catch_up(service.store, job, TICK_BYTES, TICK_PAGES)
            read += 1
        except Exception as exc:  # best-effort loop: one job's log failing must not stop the others
            log.warning("reconcile: reading metrics of %s failed: %s", job.job_id, exc)
            errors.append({"job_id": job.job_id, "error": f"{type(exc).__name__}: {exc}"})
    return [{"metrics": {"jobs_read": read, "errors": errors}}] if read or errors else []


#: hands one shard's job ids to another invocation (a Lambda invoked with InvocationType=Event, a thread)
FanOut = Callable[[list[str]], None]


def oldest_first(jobs) -> list[Job]:
    """The jobs whose last event is oldest first: the likeliest to have missed one, read before the rest."""
    return sorted(jobs, key=lambda j: (j.updated_at or j.created_at, j.job_id))


def plan_shards(
    jobs: list[Job], shard_jobs: int, batch: int = 100, whole: frozenset[str] = frozenset()
) -> list[list[Job]]:
    """Pure: cut the jobs to read (oldest first) into shards of at most `shard_jobs` each.

    A backend's jobs stay together, in runs of whole batches of `batch` (only its last run is short), so the
    batched reads of a tick are ceil(active/batch) per backend however it is cut. The backends in `whole`
    read by listing everything they run (one list per shard it appears in): their jobs are never split.
    """
    shard_jobs = max(shard_jobs, batch)
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.backend, []).append(job)
    shards: list[list[Job]] = []
    current: list[Job] = []
    for name, group in groups.items():
        i = 0
        while i < len(group):
            room = shard_jobs - len(current)
            rest = len(group) - i
            if name in whole:
                take = rest if rest <= room or not current else 0
            else:
                take = rest if rest <= room else (room // batch) * batch
            if take == 0:
                shards.append(current)
                current = []
                continue
            current.extend(group[i : i + take])
            i += take
    if current:
        shards.append(current)
    return shards


def _listing_backends(service, jobs: list[Job]) -> frozenset[str]:
    found = set()
    for name in {j.backend for j in jobs}:
        try:
            if service.backend(name).describes_by_listing:
                found.add(name)
        except JobplaneError:
            continue  # heal() records the error against each of its jobs
    return frozenset(found)


def reconcile(service, fan_out: FanOut | None = None, jobs: list[Job] | None = None) -> list[Decision]:
    """One tick: read the active jobs (the sparse index; or `jobs`, read from it already), heal them oldest
    first, sweep tagged resources, serve the queue. With `fan_out`, a tick with more than reconcile_shard_jobs
    jobs to read keeps the first shard and hands each other one to fan_out; without it, this invocation reads
    them all."""
    now = utcnow()
    decisions: list[Decision] = []
    active: dict[str, Job] = {}
    to_read: list[Job] = []
    for job in service.store.iter_active() if jobs is None else jobs:
        active[job.job_id] = job
        if job.status is JobStatus.QUEUED:
            decisions.append(decide_reconcile(job, None, now, _launch_deadline(service)))
        else:
            to_read.append(job)
    to_read = oldest_first(to_read)
    shards = plan_shards(to_read, service.settings.reconcile_shard_jobs, whole=_listing_backends(service, to_read))
    here = shards if fan_out is None else shards[:1]
    for number, shard in enumerate(shards[len(here) :], start=len(here)):
        backends = ", ".join(sorted({j.backend for j in shard}))
        try:
            fan_out([j.job_id for j in shard])
            decisions.append(Decision(f"shard-{number}", Action.SHARD, f"{len(shard)} jobs ({backends}) handed on"))
        except Exception as exc:  # best-effort: the next tick hands the shard on again
            log.exception("handing on reconcile shard %d failed", number)
            decisions.append(Decision(f"shard-{number}", Action.ERROR, f"handing on {len(shard)} jobs failed: {exc}"))
    for shard in here:
        decisions.extend(heal(service, shard, now))
    decisions.extend(sweep(service, active, now))
    try:
        dispatched = {j.job_id: j for j in service.dispatcher.dispatch_queued()}
    except JobplaneError as exc:
        log.warning("dispatch of queued jobs failed: %s", exc.message)
        dispatched = {}
    return [
        Decision(
            a.job_id, Action.DISPATCH, f"now {dispatched[a.job_id].status.value}: {dispatched[a.job_id].status_reason}"
        )
        if a.action is Action.DISPATCH and a.job_id in dispatched
        else a
        for a in decisions
    ]


def reconcile_shard(service, job_ids: list[str]) -> list[Decision]:
    """A shard another invocation handed on: its jobs read again by key (BatchGetItem), those still active
    healed; the tick that planned it sweeps and serves the queue."""
    found = service.store.get_jobs(list(job_ids))
    jobs = [j for j in found.values() if not j.terminal and j.status is not JobStatus.QUEUED]
    return heal(service, oldest_first(jobs), utcnow())


def run_shard(service, payload: Any) -> list[dict[str, Any]]:
    """The reconcile_shard function: `{"job_ids": [...]}` as the schedule handed it on."""
    job_ids = payload.get("job_ids") if isinstance(payload, dict) else None
    if not isinstance(job_ids, list) or not job_ids or not all(isinstance(i, str) for i in job_ids):
        raise ValidationError(
            'a reconcile shard is {"job_ids": [job_id, ...]}',
            [{"field": "job_ids", "message": "a non-empty list of job ids"}],
        )
    return [d.to_dict() for d in reconcile_shard(service, job_ids)]


def _launch_deadline(service) -> timedelta:
    return timedelta(seconds=service.settings.launch_deadline_seconds)


def heal(service, jobs: list[Job], now) -> list[Decision]:
    """Ask each backend for the truth about its jobs in one describe_many, then decide and apply per job."""
    deadline = _launch_deadline(service)
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.backend, []).append(job)
    decisions: list[Decision] = []
    for name, group in groups.items():
        try:
            backend = service.backend(name)
            seen = backend.describe_many([Handle.of(j) for j in group])
        except JobplaneError as exc:
            decisions.extend(Decision(j.job_id, Action.ERROR, exc.message) for j in group)
            continue
        except Exception as exc:  # best-effort loop: one broken backend must not stop the others
            log.exception("describing %d %s jobs failed", len(group), name)
            decisions.extend(Decision(j.job_id, Action.ERROR, f"{type(exc).__name__}: {exc}") for j in group)
            continue
        for job in group:
            decisions.append(_heal_one(service, backend, job, seen.get(job.job_id), now, deadline))
    return decisions


def _live_cost(service, backend, job: Job, obs, now) -> tuple[Job, Decision | None]:
    """A running job's cost up to now, written when it moved (GET /jobs/{id} shows it live), and the budget
    stop when it reached max_cost_usd."""
    figure = backend.attempt_cost(job, now, obs.usage if obs is not None else None)
    spent = total(merged(job.costs, figure))
    stop = decide_budget(job, spent)
    if stop is None:
        job = service.record_live_cost(job, figure)
    return job, stop


def _heal_one(service, backend, job: Job, obs, now, deadline: timedelta) -> Decision:
    grace = None if backend.enforces_max_runtime else timedelta(minutes=service.settings.overdue_grace_minutes)
    try:
        decision = decide_reconcile(job, obs, now, deadline, grace)
        if decision.action is Action.NONE and job.status is JobStatus.RUNNING:
            job, stop = _live_cost(service, backend, job, obs, now)
            decision = stop or decision
        if decision.action in (Action.APPLY, Action.RECANCEL) and backend.listed_fields_unknown:
            # A list page lacks some of what describe says (SageMaker: the start time): what is applied
            # is describe's own answer.
            obs = backend.describe(Handle.of(job))
            decision = decide_reconcile(job, obs, now, deadline, grace)
        apply(service, decision, job, observation=obs, backend=backend)
        return decision
    except JobplaneError as exc:
        return Decision(job.job_id, Action.ERROR, exc.message)
    except Exception as exc:  # best-effort loop: one broken job must not stop the others
        log.exception("reconcile of %s failed", job.job_id)
        return Decision(job.job_id, Action.ERROR, f"{type(exc).__name__}: {exc}")
