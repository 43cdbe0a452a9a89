"""A job's cost: per attempt, the catalog's hourly price of what it ran on times the hours it billed."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from chalicelib.pricing import Cost, Price, Quote

# A Job (chalicelib.jobs.model) and a ComputeBackend (chalicelib.backends.base) are typed Any here: both
# import this module, and naming them, even for type checking, would close an import cycle.
Job = ComputeBackend = Any


@dataclass(frozen=True)
class Usage:
    """What the provider said an attempt ran on and billed; None where it did not say.

    `billable_seconds` is SageMaker's BillableTimeInSeconds: with managed spot, less than the time it ran."""

    instance_type: str | None = None
    count: int | None = None
    spot: bool | None = None
    billable_seconds: float | None = None

    def over(self, earlier: Usage | None) -> Usage:
        """This usage, with what it leaves unsaid taken from an earlier report of the same attempt."""
        if earlier is None:
            return self
        return Usage(
            *(
                mine if mine is not None else theirs
                for mine, theirs in (
                    (self.instance_type, earlier.instance_type),
                    (self.count, earlier.count),
                    (self.spot, earlier.spot),
                    (self.billable_seconds, earlier.billable_seconds),
                )
            )
        )


@dataclass(frozen=True)
class AttemptCost:
    """One attempt's cost as recorded on the job: what was priced, at what rate, for how long.

    `usd` None means unknown, and `reason` says why; `final` once the attempt ended (its figure no longer moves).
    """

    attempt: int
    backend: str
    region: str | None
    #: what the rate is for, e.g. "ec2 g5.xlarge spot in us-east-1"
    priced: str
    usd_per_hour: float | None
    prices_of: str | None
    hours: float
    usd: float | None
    reason: str = ""
    final: bool = False
    #: what it ran on, as the provider reported it (kept so a later report that says less prices the same)
    instance_type: str | None = None
    count: int | None = None
    spot: bool | None = None
    billable_seconds: float | None = None

    @property
    def usage(self) -> Usage:
        return Usage(self.instance_type, self.count, self.spot, self.billable_seconds)

    @property
    def cost(self) -> Cost:
        if self.usd is None:
            return Cost(None, None, f"attempt {self.attempt}: {self.reason}")
        return Cost(self.usd, date.fromisoformat(self.prices_of) if self.prices_of else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttemptCost:
        return cls(**data)


def costs_to_text(costs: tuple[AttemptCost, ...]) -> str | None:
    return json.dumps([c.to_dict() for c in costs], sort_keys=True) if costs else None


def costs_from_text(text: str | None) -> tuple[AttemptCost, ...]:
    return tuple(AttemptCost.from_dict(c) for c in json.loads(text)) if text else ()


def attempt_cost(
    quote: Quote,
    *,
    attempt: int,
    backend: str,
    region: str | None,
    priced: str,
    started_at: datetime | None,
    until: datetime,
    usage: Usage | None = None,
    final: bool = False,
) -> AttemptCost:
    """The figure for one attempt: `quote` per hour (of every instance it ran on) times the hours it billed.

    Billed hours are BillableTimeInSeconds where the provider reports it, else from started_at to `until`
    (0 for an attempt that never started)."""
    usage = usage or Usage()
    if usage.billable_seconds is not None:
        hours = max(float(usage.billable_seconds), 0.0) / 3600.0
        basis = f"BillableTimeInSeconds {usage.billable_seconds:g}"
    elif started_at is not None:
        hours = max((until - started_at).total_seconds(), 0.0) / 3600.0
        basis = ""
    else:
        hours, basis = 0.0, "never started"
    # An attempt that never started billed nothing, whether or not its rate is known.
    spent = Cost(0.0, quote.read_at) if started_at is None and usage.billable_seconds is None else quote.cost(hours)
    if isinstance(quote, Price):
        usd_per_hour, prices_of, reason = quote.usd_per_hour, quote.read_at.isoformat(), basis
    else:
        usd_per_hour, prices_of, reason = None, None, quote.reason if spent.usd is None else basis
    return AttemptCost(
        attempt=attempt,
        backend=backend,
        region=region,
        priced=priced,
        usd_per_hour=usd_per_hour,
        prices_of=prices_of,
        hours=round(hours, 6),
        usd=None if spent.usd is None else round(spent.usd, 6),
        reason=reason,
        final=final,
        instance_type=usage.instance_type,
        count=usage.count,
        spot=usage.spot,
        billable_seconds=usage.billable_seconds,
    )


def merged(costs: Iterable[AttemptCost], figure: AttemptCost) -> tuple[AttemptCost, ...]:
    """The job's attempts with `figure` in place of the same attempt's earlier one; a final figure stays."""
    out: list[AttemptCost] = []
    placed = False
    for c in costs:
        if c.attempt == figure.attempt:
            out.append(c if c.final and not figure.final else figure)
            placed = True
        else:
            out.append(c)
    if not placed:
        out.append(figure)
    return tuple(sorted(out, key=lambda c: c.attempt))


def total(costs: Iterable[AttemptCost]) -> Cost:
    """The sum over attempts (unknown if any attempt is); $0 with no price date when none ran."""
    found = list(costs)
    if not found:
        return Cost(0.0, None, "no attempt ran yet")
    spent = found[0].cost
    for c in found[1:]:
        spent = spent + c.cost
    return spent


def cost_to_api(costs: tuple[AttemptCost, ...]) -> dict[str, Any]:
    """The job's `cost` in its JSON: the total, its price date, why it is unknown, and every attempt."""
    spent = total(costs)
    return {
        "usd": None if spent.usd is None else round(spent.usd, 4),
        "prices_of": spent.read_at.isoformat() if spent.read_at else None,
        "reason": spent.reason or None,
        "text": spent.format(),
        "final": bool(costs) and all(c.final for c in costs),
        "attempts": [c.to_dict() for c in costs],
    }


def with_attempt(job: Job, figure: AttemptCost) -> dict[str, Any]:
    """The job fields that record `figure`: its attempts' costs and the total in cost_estimate_usd."""
    costs = merged(job.costs, figure)
    spent = total(costs)
    return {"costs": costs, "cost_estimate_usd": None if spent.usd is None else round(spent.usd, 6)}


def current_cost(job: Job, backend: ComputeBackend, now: datetime | None = None) -> Cost:
    """What `job` has cost so far (with its price date): the recorded attempts, the running one priced up
    to `now`. The one function a budget or report reads a job's cost through."""
    if job.terminal or job.started_at is None:
        return total(job.costs)
    live = backend.attempt_cost(job, now or datetime.now(UTC))
    return total(merged(job.costs, live))


def with_usage(costs: tuple[AttemptCost, ...], attempt: int, usage: Usage | None) -> Usage:
    """`usage` over what the job's record already holds for the same attempt."""
    earlier = next((c.usage for c in costs if c.attempt == attempt), None)
    return (usage or Usage()).over(earlier)
