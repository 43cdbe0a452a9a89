"""Which job transitions a person hears about, and the Block Kit message for each (pure)."""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Any

from chalicelib.jobs.model import FailureKind, Job, JobStatus
from chalicelib.jobs.spec_types import JobSpec
from chalicelib.notify.console import console_url, provider_name

# The reaper's reason when it stops a job's VM on its own (idle, past max runtime): see chalicelib/reaper.py.
AUTO_STOP_REASON = "stopped by jobplane reaper"


def is_vm_backend(backend: str | None) -> bool:
    """True for ad-hoc VM backends, whose own startup script stops the machine at max runtime."""
    from chalicelib.backends import descriptor_or_none

    found = descriptor_or_none(backend)
    return bool(found and found.vm)


MAX_TEXT = 2900  # Slack's section text limit is 3000 characters


class Kind(str, Enum):
    """A transition a person cares about."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRYING = "retrying"  # a failed attempt (interrupted, no capacity) went back to the queue
    AUTO_STOPPED = "auto_stopped"  # jobplane stopped the job's VM itself


EMOJI = {
    Kind.STARTED: ":arrow_forward:",
    Kind.SUCCEEDED: ":white_check_mark:",
    Kind.FAILED: ":x:",
    Kind.CANCELLED: ":no_entry_sign:",
    Kind.RETRYING: ":repeat:",
    Kind.AUTO_STOPPED: ":octagonal_sign:",
}


def classify(job: Job, old_status: JobStatus | None) -> Kind | None:
    """The kind of message a change from `old_status` to the job's status deserves, or None."""
    status = job.status
    if status is old_status:
        return None
    if status.terminal and (
        (job.status_reason or "").startswith(AUTO_STOP_REASON)
        or (job.failure_reason or "").startswith(AUTO_STOP_REASON)
        # A VM's own startup script shuts it down at max_runtime_minutes.
        or (is_vm_backend(job.backend) and job.failure_kind is FailureKind.TIMEOUT)
    ):
        return Kind.AUTO_STOPPED
    if status is JobStatus.RUNNING:
        return Kind.STARTED
    if status is JobStatus.QUEUED:
        # A fresh submission (no old image) is not news: the started message follows.
        return Kind.RETRYING if old_status is not None else None
    return {
        JobStatus.SUCCEEDED: Kind.SUCCEEDED,
        JobStatus.FAILED: Kind.FAILED,
        JobStatus.CANCELLED: Kind.CANCELLED,
    }.get(status)


def dedup_key(job: Job) -> str:
    """One message per (job, status, attempt), however often the stream delivers it."""
    return f"{job.job_id}#{job.status.value}#{job.attempt}"


def machine(spec: JobSpec) -> str:
    """What the job runs on, from its spec: an instance type, a TPU, GPUs, or CPUs and memory."""
    res = spec.resources
    if res.instance_type:
        text = res.instance_type
    elif res.tpu:
        text = f"TPU {res.tpu}"
    elif res.gpus:
        text = f"{res.gpus}x {res.gpu_type or 'GPU'}"
    else:
        text = f"{float(res.cpus):g} vCPU, {float(res.memory_gb):g} GB"
    return text + (" (spot)" if res.spot else "")


def duration(start: datetime | None, end: datetime | None) -> str | None:
    if start is None or end is None:
        return None
    seconds = max(int((end - start).total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h {minutes}m {seconds}s" if hours else f"{minutes}m {seconds}s"


def cost(value: float | None) -> str | None:
    if value is None:
        return None
    if 0 < value < 0.01:
        return "< $0.01"
    return f"${value:,.2f}"


def job_cost(job: Job) -> str | None:
    """The job's cost with the date of the prices it used ('$1.23 (prices of 2026-01-21)'), 'unknown (why)',
    or, for a record from before per-attempt costs, its cost_estimate_usd alone."""
    if not job.costs:
        return cost(job.cost_estimate_usd)
    from chalicelib.pricing.jobs import total

    spent = total(job.costs)
    if spent.usd is None:
        why = spent.reason if len(spent.reason) <= 300 else spent.reason[:299] + "…"
        return f"unknown ({escape(why)})"  # the reason quotes the catalog and the provider: free text
    dated = f" (prices of {spent.read_at.isoformat()})" if spent.read_at else ""
    return f"{cost(spent.usd)}{dated}"


def escape(text: str) -> str:
    """Slack's three control characters in free text (failure reasons come from providers and programs)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def metrics_text(metrics: dict[str, float]) -> str | None:
    """The job's latest metrics as one mrkdwn line (names in code spans: `_` would start italics)."""
    from chalicelib.jobs.metrics import format_value

    if not metrics:
        return None
    text = "*Metrics*\n" + " · ".join(f"`{key}` {format_value(value)}" for key, value in sorted(metrics.items()))
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1].rsplit(" · ", 1)[0] + " …"


def code_block(lines: list[str], limit: int = MAX_TEXT) -> str | None:
    """A mrkdwn code block of the last lines that fit in `limit` characters once escaped. No two backticks
    stay adjacent (a zero-width space goes between), so no line can close the block early."""
    fence = "```"
    kept: list[str] = []
    size = len(fence) * 2 + 2
    for line in reversed(lines):
        safe = re.sub("`(?=`)", "`\u200b", escape(line))
        if size + len(safe) + 1 > limit:
            break
        kept.append(safe)
        size += len(safe) + 1
    if not kept:
        return None
    return fence + "\n" + "\n".join(reversed(kept)) + "\n" + fence


TERMINAL_KINDS = (Kind.SUCCEEDED, Kind.FAILED, Kind.CANCELLED, Kind.AUTO_STOPPED)


def headline(job: Job, kind: Kind) -> str:
    if kind is Kind.FAILED:
        return f"{job.name} failed" + (f" ({job.failure_kind.value})" if job.failure_kind else "")
    if kind is Kind.RETRYING:
        max_attempts = job.spec.retries.max_attempts
        return f"{job.name} retrying: attempt {job.attempt} of {max_attempts}"
    if kind is Kind.AUTO_STOPPED:
        return f"{job.name}: VM auto-stopped"
    return f"{job.name} {kind.value}"


def build_message(
    job: Job,
    kind: Kind,
    region: str,
    gcp_project: str | None = None,
    gce_zone: str | None = None,
    last_lines: list[str] | None = None,
) -> dict[str, Any]:
    """The Block Kit message for one transition; `text` is the notification and plain-text fallback.
    A final message shows the job's latest metrics; a failure, the last lines of its output when given."""
    title = headline(job, kind)
    took = duration(job.started_at, job.finished_at)
    spent = job_cost(job)
    fields = [
        f"*Job*\n{job.name} (`{job.job_id}`)",
        f"*Owner*\n{job.owner}",
        f"*Backend*\n{job.backend}, {machine(job.spec)}",
        f"*Duration*\n{took or '-'}",
        f"*Estimated cost*\n{spent or '-'}",
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{EMOJI[kind]} {title}"[:150], "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    reason = None
    if job.status is JobStatus.FAILED and job.failure_reason:
        reason = f"*Reason* ({job.failure_kind.value if job.failure_kind else 'failure'})\n{escape(job.failure_reason)}"
    elif kind in (Kind.RETRYING, Kind.CANCELLED, Kind.AUTO_STOPPED) and job.status_reason:
        reason = f"*Reason*\n{escape(job.status_reason)}"
    if reason:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": reason[:MAX_TEXT]}})
    blocks.extend(_observed(job, kind, last_lines))
    url = console_url(job, region, gcp_project, gce_zone)
    if url:
        link = f"<{url}|Open in the {provider_name(job.backend)} console>"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": link}]})
    facts = [f"job {job.job_id}", f"owner {job.owner}"]
    if took:
        facts.append(took)
    if spent:
        facts.append(f"est. {spent}")
    return {"text": " · ".join([title, *facts]), "blocks": blocks}


def _observed(job: Job, kind: Kind, last_lines: list[str] | None) -> list[dict[str, Any]]:
    """The sections of what the job itself reported: its metrics (final messages), its last lines (failures)."""
    blocks = []
    metrics = metrics_text(job.metrics) if kind in TERMINAL_KINDS else None
    if metrics:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": metrics}})
    if kind is Kind.FAILED and last_lines:
        title = "*Last lines of the output*\n"
        block = code_block(last_lines, MAX_TEXT - len(title))
        if block:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": title + block}})
    return blocks


# --- inference endpoints ------------------------------------------------------------------------
ENDPOINT_EMOJI = {"in_service": ":large_green_circle:", "failed": ":x:", "deleted_idle": ":wastebasket:"}


def endpoint_message(endpoint, kind: str) -> dict[str, Any]:
    """The Slack message when an endpoint comes IN_SERVICE, FAILs, or is deleted for idleness; with its cost per
    hour and so far when the price is known (omitted, and said so, when not)."""
    name = f"*{escape(endpoint.name)}* (`{endpoint.endpoint_id}`, {endpoint.backend})"
    if kind == "in_service":
        head = f"endpoint {name} is in service at {endpoint.url or 'its provider'}"
    elif kind == "failed":
        head = f"endpoint {name} failed: {escape(endpoint.failure_reason or 'no reason given')}"
    else:
        head = f"endpoint {name} {escape(endpoint.deleted_reason or 'deleted for idleness')} by {endpoint.deleted_by}"
    rate = endpoint.cost_per_hour_usd
    so_far = endpoint.cost_estimate_usd()
    money = (
        f"cost: {cost(rate)}/h, {cost(so_far)} so far"
        if rate is not None
        else f"cost: unknown ({escape(endpoint.cost_unknown_reason or 'no hosting price for this backend')})"
    )
    text = f"{ENDPOINT_EMOJI[kind]} {head}\n{money}"[:MAX_TEXT]
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
