"""Build Block Kit messages for job transitions and send them through slack-sdk."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from chalicelib.jobs.model import parse_iso

log = logging.getLogger("jobplane.notify")

# statuses a person wants to hear about, with their emoji
NOTIFY_ON = {
    "RUNNING": ":arrow_forward:",
    "SUCCEEDED": ":white_check_mark:",
    "FAILED": ":x:",
    "CANCELLED": ":no_entry_sign:",
    "QUEUED": ":repeat:",  # only when re-queued for a retry (see wants_message)
}


def _image(record: dict[str, Any], name: str) -> dict[str, Any] | None:
    from boto3.dynamodb.types import TypeDeserializer

    raw = (record.get("dynamodb") or {}).get(name)
    if not raw:
        return None
    deserializer = TypeDeserializer()
    return {k: deserializer.deserialize(v) for k, v in raw.items()}


def transition_of(record: dict[str, Any]) -> tuple[dict[str, Any], str | None] | None:
    """(new job image, old status) when a stream record is a status change worth a message."""
    if record.get("eventName") not in ("INSERT", "MODIFY"):
        return None
    new = _image(record, "NewImage")
    if not new or "status" not in new:
        return None
    old = _image(record, "OldImage") or {}
    old_status = old.get("status")
    if old_status == new["status"] or new["status"] not in NOTIFY_ON:
        return None
    if new["status"] == "QUEUED" and old_status is None:
        return None  # a fresh submission: the RUNNING message follows
    return new, old_status


def _duration(job: dict[str, Any]) -> str:
    start, end = parse_iso(job.get("started_at")), parse_iso(job.get("finished_at"))
    if not start:
        return "-"
    seconds = int(((end or datetime.now(start.tzinfo)) - start).total_seconds())
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60}m {rest % 60}s" if hours else f"{rest // 60}m {rest % 60}s"


def build_message(job: dict[str, Any], old_status: str | None) -> dict[str, Any]:
    status = job["status"]
    title = f"{NOTIFY_ON.get(status, '')} {job.get('name')} {status.lower()}".strip()
    if status == "QUEUED":
        title = f"{NOTIFY_ON['QUEUED']} {job.get('name')} retrying (attempt {int(job.get('attempt', 1))})"
    cost = job.get("cost_estimate_usd")
    fields = [
        f"*Job*\n`{job['job_id']}`",
        f"*Owner*\n{job.get('owner')}",
        f"*Backend*\n{job.get('backend')}",
        f"*Duration*\n{_duration(job)}",
        f"*Estimated cost*\n{f'${float(cost):.2f}' if cost is not None else '-'}",
        f"*Status*\n{old_status or '-'} → {status}",
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if job.get("failure_reason") and status == "FAILED":
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*{job.get('failure_kind')}*: {str(job['failure_reason'])[:2800]}"},
            }
        )
    elif job.get("status_reason"):
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": str(job["status_reason"])[:2800]}]})
    return {"text": f"{title} ({job['job_id']})", "blocks": blocks}


def send_webhook(url: str, message: dict[str, Any], timeout: int = 5) -> int:
    """POST one message; slack-sdk retries connection errors and rate limits. Returns the HTTP status."""
    from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
    from slack_sdk.webhook import WebhookClient

    client = WebhookClient(
        url,
        timeout=timeout,
        retry_handlers=[ConnectionErrorRetryHandler(max_retry_count=2), RateLimitErrorRetryHandler(max_retry_count=2)],
    )
    response = client.send(text=message["text"], blocks=message["blocks"])
    return response.status_code


def notify_records(records: list[dict[str, Any]], webhook_url: str | None) -> list[dict[str, Any]]:
    """Post a message for each status change in a stream batch; Slack trouble never raises."""
    results = []
    for record in records:
        found = transition_of(record)
        if found is None:
            continue
        job, old_status = found
        if not webhook_url:
            results.append({"job_id": job["job_id"], "status": job["status"], "sent": False, "why": "no webhook"})
            continue
        try:
            code = send_webhook(webhook_url, build_message(job, old_status))
            results.append({"job_id": job["job_id"], "status": job["status"], "sent": code == 200, "http": code})
        except Exception as exc:  # Slack being down must never fail the stream batch
            log.warning("slack notification for %s failed: %s", job["job_id"], exc)
            results.append({"job_id": job["job_id"], "status": job["status"], "sent": False, "why": str(exc)})
    return results
