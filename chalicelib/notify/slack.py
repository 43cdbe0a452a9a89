"""The `notify` function: job status changes from the jobs table's stream -> one Slack message each."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

from chalicelib.config import Settings
from chalicelib.jobs.model import Job, JobStatus, utcnow
from chalicelib.notify.delivery import ChatPostMessage, Destination, Webhook, deliver
from chalicelib.notify.messages import Kind, build_message, classify, dedup_key
from chalicelib.store.slack import SlackStore

log = logging.getLogger("jobplane.notify")


class NotifyOutcome(str, Enum):
    """What became of one stream record's message."""

    #: Slack took the message
    SENT = "sent"
    #: the transition's marker was already claimed: a re-delivered record, posted once already
    DUPLICATE = "duplicate"
    #: not posted: the marker could not be recorded, or Slack refused or timed out within the budget
    FAILED = "failed"
    #: neither a bot token with the job's channel nor a webhook is configured
    NO_DESTINATION = "no_destination"
    #: the stream record could not be decoded
    UNREADABLE = "unreadable"


def _old_status(record: dict[str, Any]) -> JobStatus | None:
    raw = ((record.get("dynamodb") or {}).get("OldImage") or {}).get("status") or {}
    value = raw.get("S")
    try:
        return JobStatus(value) if value else None
    except ValueError:
        return None


def transition_of(record: dict[str, Any], decode: Callable[[dict[str, Any]], Job]) -> tuple[Job, Kind] | None:
    """(job after the change, kind of message) when a stream record is a change worth a message."""
    if record.get("eventName") not in ("INSERT", "MODIFY"):
        return None
    image = (record.get("dynamodb") or {}).get("NewImage")
    if not image or "status" not in image:
        return None
    old = _old_status(record)
    if (image.get("status") or {}).get("S") == (old.value if old else None):
        return None  # a change of other fields (native id, capacity wait): not news
    job = decode(image)
    kind = classify(job, old)
    return (job, kind) if kind is not None else None


class Notifier:
    """Posts one message per interesting transition: claims a marker first, so a re-delivered
    record posts nothing, and spends at most its time budget on Slack, whatever Slack does."""

    def __init__(
        self,
        store: SlackStore,
        settings: Settings,
        decode: Callable[[dict[str, Any]], Job],
        webhook_url: str | None,
        bot_token: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.settings = settings
        self.decode = decode
        self.webhook_url = webhook_url
        self.bot_token = bot_token
        self.clock = clock
        self.sleep = sleep

    def destination(self, job: Job) -> Destination | None:
        """With a bot token, the job's own channel; otherwise (or with no channel) the webhook."""
        channel = job.spec.notify.slack_channel
        if self.bot_token and channel:
            return ChatPostMessage(self.bot_token, channel, self.settings.slack_api_url)
        if self.webhook_url:
            return Webhook(self.webhook_url)
        return None

    def budget(self, remaining_seconds: float | None) -> float:
        """Seconds for Slack in this invocation: the configured budget, inside the function's time left."""
        budget = float(self.settings.slack_send_budget_seconds)
        if remaining_seconds is not None:
            # Keep a margin to record results and return before the function is killed.
            budget = min(budget, remaining_seconds - min(2.0, remaining_seconds * 0.2))
        return max(budget, 0.0)

    def handle(self, records: list[dict[str, Any]], remaining_seconds: float | None = None) -> list[dict[str, Any]]:
        deadline = self.clock() + self.budget(remaining_seconds)
        results = []
        for record in records:
            try:
                found = transition_of(record, self.decode)
            except Exception:  # a record we cannot read must not stop the rest of the batch
                log.exception("notify: unreadable stream record %s", record.get("eventID"))
                results.append({"event_id": record.get("eventID"), "outcome": NotifyOutcome.UNREADABLE.value})
                continue
            if found is not None:
                results.append(self._notify(*found, deadline))
        return results

    def _notify(self, job: Job, kind: Kind, deadline: float) -> dict[str, Any]:
        result = {"job_id": job.job_id, "status": job.status.value, "attempt": job.attempt, "kind": kind.value}
        destination = self.destination(job)
        if destination is None:
            return {**result, "outcome": NotifyOutcome.NO_DESTINATION.value}
        key = dedup_key(job)
        try:
            claimed = self.store.claim_notification(key, utcnow())
        except Exception:  # the marker store failing must not fail the batch; at most once, so skip
            log.exception("notify: could not record %s; message not sent", key)
            return {
                **result,
                "outcome": NotifyOutcome.FAILED.value,
                "detail": "could not record the notification marker",
            }
        if not claimed:
            return {**result, "outcome": NotifyOutcome.DUPLICATE.value}
        settings = self.settings
        message = build_message(job, kind, settings.region, settings.gcp_project, settings.gce_zone)
        delivery = deliver(destination, message, deadline, clock=self.clock, sleep=self.sleep)
        if not delivery.sent:
            log.warning(
                "notify: Slack message for job %s (%s, attempt %s) not sent to %s: %s",
                job.job_id,
                kind.value,
                job.attempt,
                destination.describe(),
                delivery.detail,
            )
            return {
                **result,
                "outcome": NotifyOutcome.FAILED.value,
                "tries": delivery.attempts,
                "detail": delivery.detail,
            }
        return {**result, "outcome": NotifyOutcome.SENT.value, "tries": delivery.attempts}


def notify_records(event: dict[str, Any], context: Any = None) -> list[dict[str, Any]]:
    """The `notify` handler's body: secrets and store from deps, time left from the Lambda context."""
    from chalicelib import deps

    remaining = None
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        remaining = context.get_remaining_time_in_millis() / 1000.0
    webhook_url = bot_token = None
    try:
        webhook_url = deps.get_slack_webhook_url()
        bot_token = deps.get_slack_bot_token()
    except Exception:  # a secret we cannot read means no message, never a failed batch
        log.exception("notify: could not read the Slack secrets")
    notifier = Notifier(
        deps.get_slack_store(), deps.get_settings(), deps.get_store().job_from_image, webhook_url, bot_token
    )
    return notifier.handle(event.get("Records") or [], remaining)
