"""Endpoint Slack messages through the notification outbox the jobs' messages use, so each is posted at most once.

One outbox record per message, keyed by the endpoint's transition (`endpoint#<endpoint_id>#<kind>`: an
endpoint comes in service once, fails once and is deleted for idleness once), then a drain within the Slack
budget. A record Slack did not take yet (rate limited, unreachable, no time left) stays PENDING and the
reconcile schedule's drain sends it; one that may have reached Slack is never sent again."""

from __future__ import annotations

import logging
from typing import Any

from chalicelib.jobs.model import utcnow

log = logging.getLogger("jobplane.endpoints")


def outbox_key(endpoint, kind: str) -> str:
    return f"endpoint#{endpoint.endpoint_id}#{kind}"


def destination(notifier, endpoint) -> str | None:
    """As for jobs: with a bot token, the endpoint's own channel; otherwise (or with no channel) the webhook."""
    from chalicelib.notify.slack import WEBHOOK

    channel = ((endpoint.spec or {}).get("notify") or {}).get("slack_channel")
    if notifier.bot_token and channel:
        return channel
    if notifier.webhook_url:
        return WEBHOOK
    return None


def enqueue(notifier, endpoint, kind: str) -> dict[str, Any]:
    """Queue the message unless its transition has one already; what became of it ("pending", "duplicate",
    "no_destination" or "failed"), never a raise."""
    from chalicelib.notify.messages import endpoint_message
    from chalicelib.notify.slack import NotifyOutcome
    from chalicelib.store.slack import OutboxRecord, OutboxState

    key = outbox_key(endpoint, kind)
    result = {"endpoint_id": endpoint.endpoint_id, "kind": kind, "key": key}
    where = destination(notifier, endpoint)
    if where is None:
        return {**result, "outcome": NotifyOutcome.NO_DESTINATION.value}
    now = utcnow()
    record = OutboxRecord(key, endpoint_message(endpoint, kind), where, OutboxState.PENDING, now, now)
    try:
        added = notifier.store.add_outbox(record)
    except Exception:  # the outbox failing must never fail the endpoint's change; at most once, so skip
        log.exception("endpoint %s: could not record Slack message %s", endpoint.endpoint_id, key)
        return {**result, "outcome": NotifyOutcome.FAILED.value}
    return {**result, "outcome": (NotifyOutcome.PENDING if added else NotifyOutcome.DUPLICATE).value}


def send(notifier, endpoint, kind: str, budget_seconds: float | None = None) -> dict[str, Any]:
    """Queue the message, then drain the outbox (this message and whatever else is due) within the budget."""
    from chalicelib.notify.slack import OUTCOME_OF_STATE, NotifyOutcome

    result = enqueue(notifier, endpoint, kind)
    if result["outcome"] != NotifyOutcome.PENDING.value:
        return result
    budget = notifier.budget(None) if budget_seconds is None else budget_seconds
    try:
        _, tried = notifier.outbox.drain(notifier.clock() + budget)
    except Exception:  # what is queued is drained by the next reconcile
        log.exception("endpoint %s: could not drain the Slack outbox", endpoint.endpoint_id)
        return result
    if result["key"] in tried:
        done = tried[result["key"]]
        result.update(outcome=OUTCOME_OF_STATE[done["state"]].value, tries=done["tries"], detail=done["detail"])
    return result
