"""The `notify` function: job status changes from the jobs table's stream -> an outbox -> one Slack message each."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from chalicelib.config import Settings
from chalicelib.jobs.model import Job, JobStatus, utcnow
from chalicelib.notify.delivery import MAX_TRY_SECONDS, ChatPostMessage, Destination, Webhook
from chalicelib.notify.messages import Kind, build_message, classify, dedup_key
from chalicelib.store.slack import OutboxRecord, OutboxState, SlackStore

log = logging.getLogger("jobplane.notify")


class NotifyOutcome(str, Enum):
    """What became of one stream record's message."""

    #: Slack took the message
    SENT = "sent"
    #: in the outbox, not yet received by Slack (rate limited, unreachable, or no time left): a later
    #: invocation (the next stream batch, reconcile every minute) sends it
    PENDING = "pending"
    #: the request may have reached Slack (timed out after it was sent): never sent again
    UNKNOWN = "unknown"
    #: Slack refused it for good (a channel that does not exist, an invalid payload): never sent again
    GAVE_UP = "gave_up"
    #: the transition already has an outbox record: a re-delivered stream record, queued once already
    DUPLICATE = "duplicate"
    #: not queued: the outbox record could not be written
    FAILED = "failed"
    #: neither a bot token with the job's channel nor a webhook is configured
    NO_DESTINATION = "no_destination"
    #: the stream record could not be decoded
    UNREADABLE = "unreadable"


OUTCOME_OF_STATE = {
    OutboxState.SENT: NotifyOutcome.SENT,
    OutboxState.PENDING: NotifyOutcome.PENDING,
    OutboxState.UNKNOWN: NotifyOutcome.UNKNOWN,
    OutboxState.GAVE_UP: NotifyOutcome.GAVE_UP,
}

WEBHOOK = "webhook"  # an outbox record's destination when it goes to the incoming webhook
PACE_SECONDS = 1.0  # Slack posts about one message per second per webhook or channel...
PACE_BURST = 3  # ...and allows short bursts
RETRY_WINDOW = timedelta(hours=24)  # an undelivered message is retried this long after its transition
FIRST_RETRY_SECONDS = 2.0
MAX_RETRY_SECONDS = 300.0
# A SENDING record's lease: longer than any one try (MAX_TRY_SECONDS) and the settle that follows. Past it,
# its drainer died with the request in flight, which may have reached Slack: the record becomes UNKNOWN.
LEASE = timedelta(seconds=60)
MIN_TRY_SECONDS = 0.1
DRAIN_PAGE = 25


class Pacer:
    """Per destination, a bucket of PACE_BURST sends refilled at one per PACE_SECONDS; a 429 empties it
    for its Retry-After. Time spent waiting here is time a rate limit would otherwise waste in refused tries."""

    def __init__(self, clock: Callable[[], float], interval: float = PACE_SECONDS, burst: int = PACE_BURST) -> None:
        self.clock = clock
        self.interval = interval
        self.burst = burst
        self._state: dict[str, tuple[float, float]] = {}  # destination -> (tokens, at)

    def _tokens(self, destination: str) -> tuple[float, float]:
        now = self.clock()
        tokens, at = self._state.get(destination, (float(self.burst), now))
        if self.interval <= 0:
            return float(self.burst), now
        if now > at:
            tokens = min(float(self.burst), tokens + (now - at) / self.interval)
            at = now
        return tokens, at

    def ready_at(self, destination: str) -> float:
        """Clock time at which `destination` may take its next message."""
        tokens, at = self._tokens(destination)
        return at if tokens >= 1 else at + (1 - tokens) * self.interval

    def spent(self, destination: str) -> None:
        """One message sent, counted when its answer came (so the gap Slack sees is never shorter)."""
        tokens, at = self._tokens(destination)
        # What refilled while the request was in flight is dropped, so the next send waits a whole interval
        # after this answer: counted from the send instead, the gaps Slack sees would jitter below one second.
        self._state[destination] = (max(math.floor(tokens) - 1, 0.0), at)

    def block(self, destination: str, seconds: float) -> None:
        self._state[destination] = (0.0, self.clock() + seconds - self.interval)


class Outbox:
    """Sends due PENDING records, paced per destination, within a deadline; any number of drainers may run
    at once, since each record is claimed with one conditional write before its one request."""

    def __init__(
        self,
        store: SlackStore,
        destinations: Callable[[str], Destination | None],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = utcnow,
        pacer: Pacer | None = None,
    ) -> None:
        self.store = store
        self.destinations = destinations
        self.clock = clock
        self.sleep = sleep
        self.now = now
        self.pacer = pacer or Pacer(clock)

    def drain(self, deadline: float) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
        """(counts of this drain and of the outbox after it, result per key tried), in bounded time."""
        counts = {"sent": 0, "unknown": 0, "gave_up": 0, "retry_later": 0}
        results: dict[str, dict[str, Any]] = {}
        counts["unknown"] += self._expire_leases()
        while True:
            remaining = deadline - self.clock()
            if remaining < MIN_TRY_SECONDS:
                break
            page = self.store.open_outbox(OutboxState.PENDING, self.now() + timedelta(seconds=remaining), DRAIN_PAGE)
            tried = 0
            for record in page:
                result = self._send(record, deadline)
                if result is None:
                    continue
                tried += 1
                results[record.key] = result
                state = result["state"]
                counts["retry_later" if state is OutboxState.PENDING else state.value.lower()] += 1
            if not tried:  # nothing left that fits in the time left (or other drainers took it)
                break
        counts["pending"] = self.store.count_open_outbox(OutboxState.PENDING)
        counts["sending"] = self.store.count_open_outbox(OutboxState.SENDING)
        return counts, results

    def _expire_leases(self) -> int:
        now = self.now()
        expired = 0
        for record in self.store.open_outbox(OutboxState.SENDING, now, DRAIN_PAGE):
            detail = "the drainer sending it stopped with the request in flight: it may have been posted"
            if self.store.settle_outbox(record.key, OutboxState.SENDING, OutboxState.UNKNOWN, now, detail):
                log.warning("notify: Slack message %s: %s", record.key, detail)
                expired += 1
        return expired

    def _send(self, record: OutboxRecord, deadline: float) -> dict[str, Any] | None:
        now = self.now()
        if now - record.created_at >= RETRY_WINDOW:
            hours = RETRY_WINDOW.total_seconds() / 3600
            detail = f"not delivered within {hours:g} hours ({record.tries} tries): {record.detail}"
            if not self.store.settle_outbox(record.key, OutboxState.PENDING, OutboxState.GAVE_UP, now, detail):
                return None
            log.warning("notify: Slack message %s given up: %s", record.key, detail)
            return {"state": OutboxState.GAVE_UP, "tries": record.tries, "detail": detail}
        destination = self.destinations(record.destination)
        if destination is None:  # its secret is unreadable right now: it waits, within the retry window
            return None
        due = self.clock() + max((record.next_try_at - now).total_seconds(), 0.0)
        start = max(due, self.pacer.ready_at(record.destination))
        if start + MIN_TRY_SECONDS > deadline:
            return None
        if start > self.clock():
            self.sleep(start - self.clock())
        now = self.now()
        claimed = self.store.claim_outbox(record.key, now, now + LEASE)
        if claimed is None:
            return None
        attempt = destination.post(claimed.message, timeout=min(MAX_TRY_SECONDS, max(deadline - self.clock(), 0.1)))
        self.pacer.spent(record.destination)
        now = self.now()
        next_try_at = now
        if attempt.ok:
            state = OutboxState.SENT
        elif attempt.maybe_posted:
            state = OutboxState.UNKNOWN
        elif attempt.retryable:
            state = OutboxState.PENDING
            if attempt.retry_after is not None:
                wait = attempt.retry_after
                self.pacer.block(record.destination, wait)
            else:
                wait = min(FIRST_RETRY_SECONDS * 2 ** (claimed.tries - 1), MAX_RETRY_SECONDS)
            next_try_at = now + timedelta(seconds=wait)
        else:
            state = OutboxState.GAVE_UP
        detail = "" if attempt.ok else attempt.detail
        self.store.settle_outbox(record.key, OutboxState.SENDING, state, next_try_at, detail)
        if state in (OutboxState.UNKNOWN, OutboxState.GAVE_UP):
            log.warning(
                "notify: Slack message %s %s to %s: %s",
                record.key,
                "may not have reached Slack (not sent again)" if state is OutboxState.UNKNOWN else "not sent",
                destination.describe(),
                detail,
            )
        return {"state": state, "tries": claimed.tries, "detail": detail or "ok"}


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
    """Queues one outbox record per interesting transition (its key the transition's, so a re-delivered record
    queues nothing), then drains the outbox for at most its time budget, whatever Slack does."""

    def __init__(
        self,
        store: SlackStore,
        settings: Settings,
        decode: Callable[[dict[str, Any]], Job] | None,
        webhook_url: str | None,
        bot_token: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        pacer: Pacer | None = None,
        tail: Callable[[Job], list[str] | None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.decode = decode
        self.webhook_url = webhook_url
        self.bot_token = bot_token
        self.tail = tail
        self.clock = clock
        self.outbox = Outbox(store, self.destination_of, clock=clock, sleep=sleep, pacer=pacer or Pacer(clock))

    def destination(self, job: Job) -> str | None:
        """With a bot token, the job's own channel; otherwise (or with no channel) the webhook."""
        channel = job.spec.notify.slack_channel
        if self.bot_token and channel:
            return channel
        if self.webhook_url:
            return WEBHOOK
        return None

    def destination_of(self, name: str) -> Destination | None:
        """An outbox record's destination with today's secrets (records never hold a secret)."""
        if name == WEBHOOK:
            return Webhook(self.webhook_url) if self.webhook_url else None
        if self.bot_token:
            return ChatPostMessage(self.bot_token, name, self.settings.slack_api_url)
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
        queued: dict[str, dict[str, Any]] = {}
        for record in records:
            try:
                found = transition_of(record, self.decode)
            except Exception:  # a record we cannot read must not stop the rest of the batch
                log.exception("notify: unreadable stream record %s", record.get("eventID"))
                results.append({"event_id": record.get("eventID"), "outcome": NotifyOutcome.UNREADABLE.value})
                continue
            if found is not None:
                result = self._enqueue(*found)
                if result["outcome"] == NotifyOutcome.PENDING.value:
                    queued[result.pop("key")] = result
                results.append(result)
        try:
            _, sent = self.outbox.drain(deadline)
        except Exception:  # the outbox failing must not fail the batch: what is queued is drained later
            log.exception("notify: could not drain the Slack outbox")
            sent = {}
        for key, result in queued.items():
            if key in sent:
                tried = sent[key]
                result.update(outcome=OUTCOME_OF_STATE[tried["state"]].value, tries=tried["tries"])
                result["detail"] = tried["detail"]
        return results

    def drain(self, budget_seconds: float) -> dict[str, int]:
        """Send what is due in the outbox for at most `budget_seconds` (the reconcile schedule's part)."""
        counts, _ = self.outbox.drain(self.clock() + budget_seconds)
        return counts

    def _enqueue(self, job: Job, kind: Kind) -> dict[str, Any]:
        result = {"job_id": job.job_id, "status": job.status.value, "attempt": job.attempt, "kind": kind.value}
        destination = self.destination(job)
        if destination is None:
            return {**result, "outcome": NotifyOutcome.NO_DESTINATION.value}
        key = dedup_key(job)
        settings = self.settings
        lines = self._last_lines(job) if kind is Kind.FAILED else None
        message = build_message(job, kind, settings.region, settings.gcp_project, settings.gce_zone, lines)
        now = utcnow()
        record = OutboxRecord(key, message, destination, OutboxState.PENDING, created_at=now, next_try_at=now)
        try:
            added = self.store.add_outbox(record)
        except Exception:  # the outbox failing must not fail the batch; at most once, so skip
            log.exception("notify: could not record %s; message not sent", key)
            return {**result, "outcome": NotifyOutcome.FAILED.value, "detail": "could not record the outbox record"}
        if not added:
            return {**result, "outcome": NotifyOutcome.DUPLICATE.value}
        return {**result, "key": key, "outcome": NotifyOutcome.PENDING.value}

    def _last_lines(self, job: Job) -> list[str] | None:
        """A failed job's last lines for its message; None when there is no way to them (never a raise)."""
        if self.tail is None:
            return None
        try:
            return self.tail(job)
        except Exception:  # the output is an extra: reading it must never fail the batch or the message
            log.warning("notify: could not read the last lines of job %s", job.job_id, exc_info=True)
            return None


def _tail(job: Job) -> list[str] | None:
    from chalicelib import deps

    return deps.get_service().tail_of(job)


def _notifier(decode: Callable[[dict[str, Any]], Job] | None) -> Notifier:
    from chalicelib import deps

    webhook_url = bot_token = None
    try:
        webhook_url = deps.get_slack_webhook_url()
        bot_token = deps.get_slack_bot_token()
    except Exception:  # a secret we cannot read means no message now, never a failed batch
        log.exception("notify: could not read the Slack secrets")
    return Notifier(deps.get_slack_store(), deps.get_settings(), decode, webhook_url, bot_token, tail=_tail)


def notify_records(event: dict[str, Any], context: Any = None) -> list[dict[str, Any]]:
    """The `notify` handler's body: secrets and store from deps, time left from the Lambda context."""
    from chalicelib import deps

    remaining = None
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        remaining = context.get_remaining_time_in_millis() / 1000.0
    return _notifier(deps.get_store().job_from_image).handle(event.get("Records") or [], remaining)


def drain_outbox() -> list[dict[str, Any]]:
    """Reconcile's part: send the outbox's due messages within the Slack budget; its counts (nothing when
    Slack is not configured or the outbox is empty), never a raise."""
    try:
        notifier = _notifier(None)
        if notifier.webhook_url is None and notifier.bot_token is None:
            return []
        counts = notifier.drain(float(notifier.settings.slack_send_budget_seconds))
    except Exception as exc:  # Slack or its table failing must not fail the reconcile tick
        log.exception("reconcile: could not drain the Slack outbox")
        return [{"outbox": {"error": f"{type(exc).__name__}: {exc}"}}]
    return [{"outbox": counts}] if any(counts.values()) else []
