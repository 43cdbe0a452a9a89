"""Endpoint Slack messages through the notification outbox the jobs' messages use, so each is posted at most once.

One outbox record per message, keyed by the endpoint's transition (`endpoint#<endpoint_id>#<kind>`: an
endpoint comes in service once, fails once and is deleted for idleness once), then one try at once with the
outbox's own claim (a conditional write) and settle. A record Slack did not take (rate limited, unreachable)
stays PENDING and the reconcile schedule's drain (chalicelib.notify.slack's Outbox) sends it; one that may
have reached Slack is never sent again. This module does not import chalicelib.notify.slack (which reads
chalicelib.deps), so deps can call it without an import cycle."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from chalicelib.jobs.model import utcnow

log = logging.getLogger("jobplane.endpoints")
#: an outbox record's destination for the incoming webhook (the same name chalicelib.notify.slack.WEBHOOK)
WEBHOOK = "webhook"
LEASE = timedelta(seconds=60)  # longer than one try: past it a drainer counts the record UNKNOWN
FIRST_RETRY_SECONDS = 2.0


def outbox_key(endpoint, kind: str) -> str:
    return f"endpoint#{endpoint.endpoint_id}#{kind}"


def destination(endpoint, webhook_url: str | None, bot_token: str | None) -> str | None:
    """As for jobs: with a bot token, the endpoint's own channel; otherwise (or with no channel) the webhook."""
    channel = ((endpoint.spec or {}).get("notify") or {}).get("slack_channel")
    if bot_token and channel:
        return channel
    if webhook_url:
        return WEBHOOK
    return None


def enqueue(store, endpoint, kind: str, where: str | None) -> dict[str, Any]:
    """Queue the message unless its transition has one already: "pending", "duplicate", "no_destination" or
    "failed", never a raise."""
    from chalicelib.notify.messages import endpoint_message
    from chalicelib.store.slack import OutboxRecord, OutboxState

    key = outbox_key(endpoint, kind)
    result = {"endpoint_id": endpoint.endpoint_id, "kind": kind, "key": key}
    if where is None:
        return {**result, "outcome": "no_destination"}
    now = utcnow()
    record = OutboxRecord(key, endpoint_message(endpoint, kind), where, OutboxState.PENDING, now, now)
    try:
        added = store.add_outbox(record)
    except Exception:  # the outbox failing must never fail the endpoint's change; at most once, so skip
        log.exception("endpoint %s: could not record Slack message %s", endpoint.endpoint_id, key)
        return {**result, "outcome": "failed"}
    return {**result, "outcome": "pending" if added else "duplicate"}


def try_once(store, key: str, target, timeout: float) -> str:
    """One try of a PENDING record, claimed and settled as the outbox does: the state it ends in (lowercase)."""
    from chalicelib.store.slack import OutboxState

    now = utcnow()
    claimed = store.claim_outbox(key, now, now + LEASE)
    if claimed is None:
        return "claimed_elsewhere"
    attempt = target.post(claimed.message, timeout=timeout)
    now = utcnow()
    next_try_at = now
    if attempt.ok:
        state = OutboxState.SENT
    elif attempt.maybe_posted:
        state = OutboxState.UNKNOWN
    elif attempt.retryable:
        state = OutboxState.PENDING
        wait = attempt.retry_after if attempt.retry_after is not None else FIRST_RETRY_SECONDS
        next_try_at = now + timedelta(seconds=wait)
    else:
        state = OutboxState.GAVE_UP
    store.settle_outbox(key, OutboxState.SENDING, state, next_try_at, "" if attempt.ok else attempt.detail)
    return state.value.lower()


def send(store, settings, endpoint, kind: str, webhook_url: str | None, bot_token: str | None) -> dict[str, Any]:
    """Queue the message, then try it once now; what is left PENDING goes with reconcile's outbox drain."""
    from chalicelib.notify.delivery import MAX_TRY_SECONDS, ChatPostMessage, Webhook

    where = destination(endpoint, webhook_url, bot_token)
    result = enqueue(store, endpoint, kind, where)
    if result["outcome"] != "pending":
        return result
    if where == WEBHOOK:
        target = Webhook(webhook_url)
    else:
        target = ChatPostMessage(bot_token, where, settings.slack_api_url)
    try:
        result["outcome"] = try_once(store, result["key"], target, MAX_TRY_SECONDS)
    except Exception:  # the record stays for the drain (a SENDING one past its lease counts UNKNOWN)
        log.exception("endpoint %s: could not send Slack message %s", endpoint.endpoint_id, result["key"])
    return result
