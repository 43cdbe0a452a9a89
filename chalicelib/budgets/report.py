"""The cost report (`jobplane cost`, GET /cost), like `sky cost-report`: one range Query of the jobs since a date."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chalicelib.budgets.model import month_of
from chalicelib.errors import ValidationError
from chalicelib.jobs.model import Job, iso
from chalicelib.notify.messages import machine

if TYPE_CHECKING:
    from chalicelib.auth import Principal
    from chalicelib.budgets.service import BudgetService

GROUPINGS = ("owner", "backend", "label", "month")
NO_LABEL = "(no labels)"
#: rows returned at most (the newest); totals and groups always cover every job read
MAX_ROWS = 1000


def parse_report_query(params: Mapping[str, Any], now: datetime) -> tuple[str | None, datetime]:
    """?by=owner|backend|label|month&since=YYYY-MM-DD (default: the first day of this month, UTC)."""
    by = params.get("by") or None
    if by is not None and by not in GROUPINGS:
        raise ValidationError(
            f"unknown grouping {by!r}", [{"field": "by", "message": f"one of {', '.join(GROUPINGS)}"}]
        )
    since_text = params.get("since")
    if since_text is None:
        return by, now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    try:
        since = datetime.strptime(str(since_text), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValidationError(
            f"since {since_text!r} is not a date", [{"field": "since", "message": "a date, YYYY-MM-DD (UTC)"}]
        ) from None
    if since > now:
        raise ValidationError(
            f"since {since_text} is in the future", [{"field": "since", "message": "a date on or before today"}]
        )
    return by, since


def _keys(job: Job, by: str) -> list[str]:
    if by == "owner":
        return [job.owner]
    if by == "backend":
        return [job.backend]
    if by == "month":
        return [month_of(job.created_at)]
    return [f"{k}={v}" for k, v in sorted(job.spec.labels.items())] or [NO_LABEL]


def _row(job: Job, costs: BudgetService, now: datetime) -> dict[str, Any]:
    end = job.finished_at or (None if job.terminal else now)
    seconds = max((end - job.started_at).total_seconds(), 0.0) if job.started_at and end else 0.0
    cost = costs.job_cost(job, now)
    return {
        "job_id": job.job_id,
        "name": job.name,
        "owner": job.owner,
        "backend": job.backend,
        "labels": dict(job.spec.labels),
        "launched": iso(job.created_at),
        "duration_seconds": round(seconds, 3),
        "resources": machine(job.spec),
        "status": job.status.value,
        "hourly_price_usd": costs.hourly_price(job),
        "cost_usd": None if cost is None else round(cost, 6),
    }


def _total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    priced = [r["cost_usd"] for r in rows if r["cost_usd"] is not None]
    return {
        "jobs": len(rows),
        "cost_usd": round(sum(priced), 6),
        "unpriced_jobs": len(rows) - len(priced),
        "hours": round(sum(r["duration_seconds"] for r in rows) / 3600.0, 6),
    }


def cost_report(
    costs: BudgetService, principal: Principal, by: str | None, since: datetime, now: datetime
) -> dict[str, Any]:
    """Every job created since `since` (an admin's: everyone's; a user's: their own), newest first, with the
    totals and, with `by`, one subtotal per owner, backend, label (a job with two labels is in both) or month."""
    owner = None if principal.admin else principal.user
    jobs = list(costs.jobs.iter_created(since, None, owner))
    rows = [_row(job, costs, now) for job in reversed(jobs)]
    report: dict[str, Any] = {
        "since": iso(since),
        "until": iso(now),
        "scope": "all owners" if owner is None else f"owner {owner}",
        "total": _total(rows),
        "rows": rows[:MAX_ROWS],
        "rows_truncated": len(rows) > MAX_ROWS,
    }
    if by is not None:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for job, row in zip(reversed(jobs), rows, strict=True):
            for key in _keys(job, by):
                grouped.setdefault(key, []).append(row)
        groups = [{"key": key, **_total(members)} for key, members in grouped.items()]
        report["by"] = by
        report["groups"] = sorted(groups, key=lambda g: (-g["cost_usd"], g["key"]))
    return report
