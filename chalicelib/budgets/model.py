"""A monthly budget: whose jobs it covers, its limit, and what happens past it; parsed from the API with 400s."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from chalicelib.errors import ValidationError
from chalicelib.jobs.model import Job, iso

# The label rules are the spec's (chalicelib/jobs/spec.py), so a budget can name any label a job can carry.
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
OWNER_RE = re.compile(r"^[^\s/:=]{1,128}$")
MAX_LIMIT_USD = 10_000_000.0
#: the shares of a budget at which Slack is told, once each per month
THRESHOLDS = (80, 100)


class Scope(str, Enum):
    """Whose jobs a budget covers."""

    #: the jobs one user submits
    OWNER = "owner"
    #: the jobs whose spec carries one label (`team=vision`), whoever submits them
    LABEL = "label"


class OnExceed(str, Enum):
    """What a submission that would take the budget past its limit gets."""

    #: a 400 naming the budget and the figures; nothing is stored
    REFUSE = "refuse"
    #: stored, and held in QUEUED (with the reason) until the budget has room: a new month, a raised limit
    HOLD = "hold"


@dataclass(frozen=True)
class Budget:
    scope: Scope
    #: the owner's user name, or `key=value` of a label
    subject: str
    limit_usd: float
    on_exceed: OnExceed
    #: at 100 %, reconcile stops the running jobs it covers (otherwise Slack is only told)
    hard: bool
    updated_at: datetime
    updated_by: str

    @property
    def budget_id(self) -> str:
        return f"{self.scope.value}:{self.subject}"

    def covers(self, job: Job) -> bool:
        if self.scope is Scope.OWNER:
            return job.owner == self.subject
        key, _, value = self.subject.partition("=")
        return job.spec.labels.get(key) == value

    def to_api(self) -> dict[str, Any]:
        return {
            "budget_id": self.budget_id,
            "scope": self.scope.value,
            "subject": self.subject,
            "limit_usd": self.limit_usd,
            "on_exceed": self.on_exceed.value,
            "hard": self.hard,
            "updated_at": iso(self.updated_at),
            "updated_by": self.updated_by,
        }


def month_of(at: datetime) -> str:
    """The calendar month (UTC) a time falls in, as YYYY-MM."""
    return at.astimezone(UTC).strftime("%Y-%m")


def month_start(month: str) -> datetime:
    return datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)


def next_month(month: str) -> str:
    start = month_start(month)
    return f"{start.year + start.month // 12:04d}-{start.month % 12 + 1:02d}"


def _bad(field: str, message: str, valid: str) -> ValidationError:
    return ValidationError(message, [{"field": field, "message": valid}])


def parse_budget_id(value: str) -> tuple[Scope, str]:
    """`owner:alice` or `label:team=vision` (as GET /budgets shows them) -> (scope, subject), or a 400."""
    scope, sep, subject = str(value).partition(":")
    valid = "owner:<user> or label:<key>=<value>"
    if not sep or scope not in {s.value for s in Scope}:
        raise _bad("budget_id", f"unknown budget id {value!r}", valid)
    return Scope(scope), check_subject(Scope(scope), subject, "budget_id")


def check_subject(scope: Scope, subject: Any, field: str) -> str:
    if scope is Scope.OWNER:
        if not isinstance(subject, str) or not OWNER_RE.match(subject):
            raise _bad(field, f"owner {subject!r} is not a user name", "a user name: 1..128 characters, no spaces")
        return subject
    key, sep, value = subject.partition("=") if isinstance(subject, str) else ("", "", "")
    if not sep or not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(value):
        raise _bad(
            field,
            f"label {subject!r} is not key=value",
            "key=value, key [a-z][a-z0-9_-]{0,62} and value [a-z0-9_-]{0,63} (as in a job's labels)",
        )
    return subject


def parse_budget(body: Any, by: str, at: datetime) -> Budget:
    """POST /budgets: {"owner": "alice"} or {"label": "team=vision"}, "limit_usd", "on_exceed", "hard"."""
    if not isinstance(body, dict):
        raise _bad("(body)", "a budget is a JSON object", "a JSON object")
    known = {"owner", "label", "limit_usd", "on_exceed", "hard"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise _bad(unknown[0], f"unknown field {unknown[0]!r}", f"one of {', '.join(sorted(known))}")
    if ("owner" in body) == ("label" in body):
        raise _bad("owner", "a budget covers exactly one owner or one label", "either owner or label, not both")
    scope = Scope.OWNER if "owner" in body else Scope.LABEL
    subject = check_subject(scope, body[scope.value], scope.value)
    limit = body.get("limit_usd")
    if (
        isinstance(limit, bool)
        or not isinstance(limit, (int, float))
        or not math.isfinite(limit)
        or not 0 < limit <= MAX_LIMIT_USD
    ):
        raise _bad(
            "limit_usd", f"limit_usd must be a positive number, got {limit!r}", f"a number in (0, {MAX_LIMIT_USD:g}]"
        )
    on_exceed = body.get("on_exceed", OnExceed.REFUSE.value)
    if on_exceed not in {o.value for o in OnExceed}:
        raise _bad("on_exceed", f"unknown on_exceed {on_exceed!r}", "refuse or hold")
    hard = body.get("hard", False)
    if not isinstance(hard, bool):
        raise _bad("hard", f"hard must be true or false, got {hard!r}", "true or false")
    return Budget(scope, subject, float(limit), OnExceed(on_exceed), hard, at, by)
