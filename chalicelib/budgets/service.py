"""Budgets applied: refused at submit, held at dispatch, Slack at 80 % and 100 % (once each a month), hard stops."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chalicelib.backends import get_backend
from chalicelib.budgets.model import (
    THRESHOLDS,
    Budget,
    OnExceed,
    Scope,
    month_of,
    month_start,
    next_month,
    parse_budget,
    parse_budget_id,
)
from chalicelib.errors import BudgetExceededError, ForbiddenError, JobplaneError, NotFoundError
from chalicelib.jobs.model import EventSource, Job, JobEvent, JobStatus, utcnow
from chalicelib.store.budgets import BudgetStore

if TYPE_CHECKING:
    from chalicelib.auth import Principal
    from chalicelib.config import Settings
    from chalicelib.store.base import JobStore

log = logging.getLogger("jobplane.budgets")
#: a month's spend is read again after this long (one read serves a tick's dispatch of every queued job)
SPEND_TTL_SECONDS = 20.0
#: statuses whose jobs a hard budget stops
STOPPABLE = (JobStatus.LAUNCHING, JobStatus.RUNNING)

#: (outbox key, Slack message) -> True queued, False already queued once, None no Slack destination
Enqueue = Callable[[str, dict[str, Any]], bool | None]


def money(usd: float) -> str:
    return f"${usd:,.2f}"


@dataclass(frozen=True)
class Spend:
    """What a budget's jobs cost in one month: each job counts in the month it was submitted."""

    budget: Budget
    month: str
    spent_usd: float
    jobs: int
    #: jobs with no price (counted as $0, and said so)
    unpriced: int

    @property
    def percent(self) -> float:
        return 100.0 * self.spent_usd / self.budget.limit_usd

    def to_api(self) -> dict[str, Any]:
        return {
            **self.budget.to_api(),
            "month": self.month,
            "spent_usd": round(self.spent_usd, 6),
            "percent": round(self.percent, 2),
            "jobs": self.jobs,
            "unpriced_jobs": self.unpriced,
        }


class BudgetService:
    def __init__(
        self,
        store: BudgetStore,
        jobs: JobStore,
        settings: Settings,
        backend_factory: Callable[[str, Settings], Any] = get_backend,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        enqueue: Enqueue | None = None,
    ) -> None:
        self.store = store
        # How alerts reach Slack (deps.enqueue_slack: the outbox); None: they are not sent.
        self.enqueue = enqueue
        self.jobs = jobs
        self.settings = settings
        self._backend = backend_factory
        self.clock = clock
        self.monotonic = monotonic
        self._cache: dict[tuple[str, str | None], tuple[float, list[Job]]] = {}

    # --- the admin's routes ------------------------------------------------------------
    @staticmethod
    def _admin(principal: Principal) -> None:
        if not principal.admin:
            raise ForbiddenError(
                "budgets are set and read by an admin", [{"field": "token", "message": "an admin token"}]
            )

    def set(self, principal: Principal, body: Any) -> Budget:
        self._admin(principal)
        budget = parse_budget(body, principal.user, self.clock())
        self.store.put_budget(budget)
        self._cache.clear()
        return budget

    def list(self, principal: Principal) -> list[Spend]:
        self._admin(principal)
        budgets = self.store.list_budgets()
        return list(self.spends(budgets, month_of(self.clock())).values()) if budgets else []

    def delete(self, principal: Principal, budget_id: str) -> Budget:
        self._admin(principal)
        parse_budget_id(budget_id)
        found = self.store.get_budget(budget_id)
        if found is None or not self.store.delete_budget(budget_id):
            raise NotFoundError(f"no budget {budget_id!r}")
        return found

    # --- figures -----------------------------------------------------------------------
    def hourly_price(self, job: Job) -> float | None:
        """The catalog's price per hour of what the job runs on (its backend's hourly_quote, with what the
        provider reported for its current attempt); None when the catalog has no price."""
        from chalicelib.pricing.jobs import with_usage

        try:
            backend = self._backend(job.backend, self.settings)
            _, quote = backend.node_quote(job.spec, job.region, with_usage(job.costs, job.attempt, None))
        except JobplaneError:
            return None
        return getattr(quote, "usd_per_hour", None)  # a Price; an Unknown has none

    def job_cost(self, job: Job, now: datetime | None = None) -> float | None:
        """The job's recorded cost; for a job still running with none recorded, its price times its time so far."""
        if job.cost_estimate_usd is not None:
            return float(job.cost_estimate_usd)
        if job.terminal or job.started_at is None:
            return 0.0 if job.started_at is None else None
        price = self.hourly_price(job)
        if price is None:
            return None
        hours = max(((now or self.clock()) - job.started_at).total_seconds(), 0.0) / 3600.0
        return price * hours

    def worst_case(self, job: Job) -> float | None:
        """What the job may cost at most: its hourly price for max_runtime_minutes (None: no price)."""
        price = self.hourly_price(job)
        return None if price is None else price * job.spec.max_runtime_minutes / 60.0

    def _month_jobs(self, month: str, owner: str | None) -> list[Job]:
        key = (month, owner)
        cached = self._cache.get(key)
        if cached is not None and self.monotonic() - cached[0] < SPEND_TTL_SECONDS:
            return cached[1]
        found = list(self.jobs.iter_created(month_start(month), month_start(next_month(month)), owner))
        self._cache[key] = (self.monotonic(), found)
        return found

    def spends(self, budgets: list[Budget], month: str) -> dict[str, Spend]:
        """Each budget's spend this month, from one range read of the month's jobs (the owner index when the
        budgets are all one owner's, the all index otherwise)."""
        owners = {b.subject for b in budgets if b.scope is Scope.OWNER}
        one_owner = next(iter(owners)) if len(owners) == 1 and all(b.scope is Scope.OWNER for b in budgets) else None
        jobs = self._month_jobs(month, one_owner)
        now = self.clock()
        result = {}
        for budget in budgets:
            spent, count, unpriced = 0.0, 0, 0
            for job in jobs:
                if not budget.covers(job):
                    continue
                count += 1
                cost = self.job_cost(job, now)
                if cost is None:
                    unpriced += 1
                else:
                    spent += cost
            result[budget.budget_id] = Spend(budget, month, spent, count, unpriced)
        return result

    # --- submit and dispatch --------------------------------------------------------------
    def _over(self, job: Job, on_exceed: OnExceed) -> str | None:
        """Why `job` would take one of its budgets of this kind past the limit; None when it fits them all."""
        budgets = [b for b in self.store.list_budgets() if b.on_exceed is on_exceed and b.covers(job)]
        if not budgets:
            return None
        month = month_of(self.clock())  # the room left this month (a job held since last month asks this one)
        spends = self.spends(budgets, month)
        worst = self.worst_case(job)
        for budget in budgets:
            spend = spends[budget.budget_id]
            adding = worst or 0.0
            if spend.spent_usd + adding > budget.limit_usd or spend.spent_usd >= budget.limit_usd:
                this = (
                    f"this job may cost up to {money(worst)} ({job.spec.max_runtime_minutes} min at "
                    f"{money(worst * 60 / job.spec.max_runtime_minutes)}/h)"
                    if worst is not None
                    else "this job's price is unknown"
                )
                return (
                    f"budget {budget.budget_id}: {money(spend.spent_usd)} of {money(budget.limit_usd)} spent in "
                    f"{month} ({spend.percent:.0f} %); {this}"
                )
        return None

    def refuse_if_over(self, job: Job) -> None:
        """At submit: a 400 naming the budget and the figures when a refusing budget would be exceeded."""
        why = self._over(job, OnExceed.REFUSE)
        if why is not None:
            raise BudgetExceededError(
                f"refused: {why}",
                [{"field": "budget", "message": why}],
            )

    def hold_reason(self, job: Job) -> str | None:
        """At dispatch: the reason a holding budget keeps the job QUEUED, or None."""
        why = self._over(job, OnExceed.HOLD)
        return None if why is None else f"held by {why}"

    # --- each tick -----------------------------------------------------------------------
    def evaluate(self, service: Any, active: list[Job], enqueue: Enqueue | None = None) -> list[dict[str, Any]]:
        """Slack at 80 % and 100 % of each budget (once each a month: the outbox key is the budget's, the
        month's and the share's) and, at 100 % of a hard budget, its LAUNCHING and RUNNING jobs stopped."""
        budgets = self.store.list_budgets()
        if not budgets:
            return []
        month = month_of(self.clock())
        enqueue = enqueue or self.enqueue or (lambda *_: None)
        results = []
        for budget_id, spend in self.spends(budgets, month).items():
            for threshold in THRESHOLDS:
                if spend.percent < threshold:
                    continue
                key = f"budget#{budget_id}#{month}#{threshold}"
                try:
                    queued = enqueue(key, budget_message(spend, threshold))
                except Exception:  # best-effort: the next tick (or stream batch) queues it again
                    log.exception("budgets: could not queue %s", key)
                    queued = None
                if queued:
                    results.append({"budget": budget_id, "alert": threshold, "spent_usd": round(spend.spent_usd, 2)})
            if spend.budget.hard and spend.percent >= 100:
                results.extend(self._stop(service, spend, active))
        return results

    def _stop(self, service: Any, spend: Spend, active: list[Job]) -> list[dict[str, Any]]:
        budget = spend.budget
        reason = (
            f"stopped by hard budget {budget.budget_id}: {money(spend.spent_usd)} of {money(budget.limit_usd)} "
            f"spent in {spend.month}"
        )
        stopped = []
        for job in active:
            if job.status not in STOPPABLE or not budget.covers(job):
                continue
            try:
                updated = service.apply_event(
                    JobEvent(job.job_id, JobStatus.CANCELLING, EventSource.RECONCILE, reason=reason), current=job
                )
                if updated is not None and updated.status is JobStatus.CANCELLING:
                    service.stop_resource(updated)
                stopped.append({"job_id": job.job_id, "budget": budget.budget_id, "action": "stopped"})
            except JobplaneError as exc:  # best-effort loop: one job failing must not keep the others running
                log.warning("budgets: stopping %s failed: %s", job.job_id, exc.message)
                stopped.append({"job_id": job.job_id, "budget": budget.budget_id, "error": exc.message})
        return stopped


def budget_message(spend: Spend, threshold: int) -> dict[str, Any]:
    """The Slack message when a budget reaches a share of its limit."""
    budget = spend.budget
    if threshold < 100:
        head, action = f":warning: Budget {budget.budget_id} reached {threshold} %", ""
    else:
        head = f":no_entry: Budget {budget.budget_id} is at {threshold} %"
        if budget.hard:
            action = " Its running jobs are being stopped (hard budget)."
        elif budget.on_exceed is OnExceed.HOLD:
            action = " New jobs are held in QUEUED."
        else:
            action = " New jobs are refused."
    unpriced = f" ({spend.unpriced} without a price, counted as $0)" if spend.unpriced else ""
    text = (
        f"{head}: {money(spend.spent_usd)} of {money(budget.limit_usd)} in {spend.month}, "
        f"{spend.jobs} jobs{unpriced}.{action}"
    )
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def evaluate_safely(service: Any, active: list[Job] | None = None, enqueue: Enqueue | None = None) -> list[dict]:
    """service.budgets.evaluate() for reconcile's tick and the stream's job ends; a summary, never a raise."""
    try:
        jobs = list(service.store.iter_active()) if active is None else active
        results = service.budgets.evaluate(service, jobs, enqueue)
    except Exception as exc:  # the budgets failing must not fail the tick or the stream batch
        log.exception("budgets: evaluation failed")
        return [{"budgets": {"error": f"{type(exc).__name__}: {exc}"}}]
    return [{"budgets": results}] if results else []


def ended_jobs(records: list[dict[str, Any]]) -> bool:
    """True when a stream batch holds a job's move to a terminal status (its final cost is in that write)."""
    terminal = {s.value for s in JobStatus if s.terminal}
    for record in records:
        images = record.get("dynamodb") or {}
        new = ((images.get("NewImage") or {}).get("status") or {}).get("S")
        old = ((images.get("OldImage") or {}).get("status") or {}).get("S")
        if new in terminal and old not in terminal:
            return True
    return False


def on_stream(records: list[dict[str, Any]], service: Any) -> list[dict]:
    """The notify function's part: a batch in which a job ended evaluates the budgets (alerts, hard stops)."""
    if not ended_jobs(records) or getattr(service, "budgets", None) is None:
        return []
    return evaluate_safely(service)
