"""Posting to Slack through slack-sdk: one try per call, classified by whether Slack may have posted it."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any
from urllib.error import URLError

log = logging.getLogger("jobplane.notify")

# chat.postMessage errors that say "try again later" rather than "this will never work"
TRANSIENT_API_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
# The transient errors after which Slack documents that nothing was posted: rate limited, or the POST data
# never arrived whole. Of the others Slack says "it's possible some aspect of the operation succeeded"
# (internal_error, fatal_error) or says nothing (service_unavailable, a 5xx): the message may be in the channel.
NOT_POSTED_API_ERRORS = frozenset({"ratelimited", "request_timeout"})
MAX_TRY_SECONDS = 5.0  # one HTTP request; Slack answers in well under a second when it is well
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0


@dataclass(frozen=True)
class Attempt:
    """What one HTTP request to Slack came to."""

    ok: bool
    retryable: bool = False
    detail: str = ""
    retry_after: float | None = None
    #: the request may have reached Slack and been posted (so sending it again could post it twice)
    maybe_posted: bool = False


@dataclass(frozen=True)
class Delivery:
    """What all the tries for one message came to."""

    sent: bool
    attempts: int
    detail: str


def _transport_error(exc: Exception) -> Attempt:
    """A request that raised: urllib wraps in URLError what failed while connecting or sending (refused, DNS,
    a connect time-out), so Slack never had the whole request; anything else (a read time-out, a reset or a
    closed connection while waiting for the answer) came after the request was sent."""
    return Attempt(False, True, f"{type(exc).__name__}: {exc}", maybe_posted=not isinstance(exc, URLError))


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    for name in ("Retry-After", "retry-after"):
        value = headers.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            try:
                return max(float(value), 0.0)
            except (TypeError, ValueError):
                return None
    return None


class Destination(ABC):
    """Somewhere a message can be posted."""

    @abstractmethod
    def post(self, message: dict[str, Any], timeout: float) -> Attempt: ...

    @abstractmethod
    def describe(self) -> str:
        """For log lines: never contains a secret."""


class Webhook(Destination):
    """An incoming webhook or a slash command's response_url (both take the message as JSON)."""

    def __init__(self, url: str, label: str = "webhook") -> None:
        self.url = url
        self.label = label

    def describe(self) -> str:
        return self.label  # webhook URLs are secrets

    def post(self, message: dict[str, Any], timeout: float) -> Attempt:
        from slack_sdk.webhook import WebhookClient

        # Our own loop retries (it knows the deadline), so slack-sdk's retry handlers are off.
        client = WebhookClient(self.url, timeout=timeout, retry_handlers=[])  # type: ignore[arg-type]
        try:
            response = client.send_dict(message)
        except (OSError, HTTPException) as exc:  # refused, reset, timed out: worth another try
            return _transport_error(exc)
        code = response.status_code
        if code == 200:
            return Attempt(True, detail="ok")
        detail = f"HTTP {code}: {str(response.body)[:200]}"
        if code == 429:
            return Attempt(False, True, detail, _retry_after(response.headers))
        # Webhooks document their refusals as 4xx (invalid_payload, channel_not_found, ...): nothing posted.
        # A 5xx (rollup_error) says nothing about whether the message was posted.
        return Attempt(False, code >= 500, detail, maybe_posted=code >= 500)


class ChatPostMessage(Destination):
    """chat.postMessage with a bot token, to one channel."""

    def __init__(self, token: str, channel: str, base_url: str) -> None:
        self.token = token
        self.channel = channel
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"

    def describe(self) -> str:
        return f"chat.postMessage to {self.channel}"

    def post(self, message: dict[str, Any], timeout: float) -> Attempt:
        from slack_sdk import WebClient
        from slack_sdk.errors import SlackApiError

        client = WebClient(token=self.token, base_url=self.base_url, timeout=timeout, retry_handlers=[])  # type: ignore[arg-type]
        try:
            client.chat_postMessage(channel=self.channel, **message)
        except SlackApiError as exc:
            response = exc.response
            code = getattr(response, "status_code", 0) or 0
            error = response.get("error") if hasattr(response, "get") else None
            detail = f"HTTP {code}: {error or str(getattr(response, 'data', ''))[:200]}"
            if code == 429 or error == "ratelimited":
                return Attempt(False, True, detail, _retry_after(getattr(response, "headers", None)))
            transient = code >= 500 or error in TRANSIENT_API_ERRORS
            return Attempt(False, transient, detail, maybe_posted=transient and error not in NOT_POSTED_API_ERRORS)
        except (OSError, HTTPException) as exc:
            return _transport_error(exc)
        return Attempt(True, detail="ok")


def deliver(
    destination: Destination,
    message: dict[str, Any],
    deadline: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """Post `message`, retrying transient failures with exponential backoff until `deadline` (clock time).

    Never raises for Slack's sake: a Slack that is slow, down or answering errors becomes a Delivery
    with sent=False and the last error, in bounded time.
    """
    attempts = 0
    backoff = FIRST_BACKOFF_SECONDS
    detail = "no time left to try"
    while True:
        remaining = deadline - clock()
        if remaining < 0.1:
            return Delivery(False, attempts, f"gave up after {attempts} tries: {detail}")
        attempts += 1
        result = destination.post(message, timeout=min(MAX_TRY_SECONDS, remaining))
        if result.ok:
            return Delivery(True, attempts, "ok")
        detail = result.detail
        if not result.retryable:
            return Delivery(False, attempts, detail)
        wait = result.retry_after if result.retry_after is not None else backoff
        if clock() + wait >= deadline:
            return Delivery(False, attempts, f"gave up after {attempts} tries: {detail}")
        sleep(wait)
        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
