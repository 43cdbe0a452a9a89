"""`/jobplane` slash commands: verified first, mapped to a jobplane user, answered within Slack's 3 seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from slack_sdk.signature import Clock, SignatureVerifier

from chalicelib.auth import Principal
from chalicelib.config import Settings
from chalicelib.errors import JobplaneError, ValidationError
from chalicelib.jobs.model import Job
from chalicelib.notify.console import console_url, provider_name
from chalicelib.notify.delivery import Webhook, deliver
from chalicelib.notify.invoke import Invoker
from chalicelib.notify.messages import duration, escape, job_cost, machine
from chalicelib.notify.users import principal_for
from chalicelib.store.slack import SlackStore

log = logging.getLogger("jobplane.notify")
LIST_LIMIT = 10
UNAUTHORIZED = {"error": {"code": "unauthenticated", "message": "invalid or expired Slack signature", "details": []}}
NOT_CONFIGURED = {
    "error": {"code": "slack_not_configured", "message": "Slack commands are not configured here", "details": []}
}


@dataclass(frozen=True)
class Context:
    """Who asked, and what a command may use."""

    principal: Principal
    service: Any  # JobService
    settings: Settings
    trigger_id: str = ""
    #: () -> the dev VM service, or None where no backend hosts dev VMs (deps passes its factory)
    devvms: Callable[[], Any] = lambda: None


Reply = dict[str, Any]


@dataclass(frozen=True)
class Entry:
    """One subcommand: what runs it, and whether it is slow (answered later through response_url)."""

    run: Callable[[Context, list[str]], Reply]
    slow: bool
    usage: str


def reply(text: str) -> Reply:
    return {"response_type": "ephemeral", "text": text}


def _when(job_time) -> str:
    return job_time.strftime("%Y-%m-%d %H:%M UTC") if job_time else "-"


# --- the subcommands ------------------------------------------------------------------------
def _help(ctx: Context, args: list[str]) -> Reply:  # noqa: ARG001 - every subcommand has this signature
    from chalicelib.templates import template_names

    lines = ["*/jobplane* commands:"]
    lines += [f"• `/jobplane {entry.usage}`" for entry in COMMANDS.values()]
    lines.append(f"Templates: {', '.join(template_names()) or 'none'}")
    return reply("\n".join(lines))


def _list(ctx: Context, args: list[str]) -> Reply:
    from chalicelib.api import parse_status  # the same names and errors as GET /jobs?status=

    status = args[0].upper() if args else None  # people type `list running`
    jobs, more = ctx.service.list(ctx.principal, parse_status(status), LIST_LIMIT)
    if not jobs:
        return reply("No jobs" + (f" with status {status}" if status else "") + " yet.")
    lines = [f"Your latest {len(jobs)} jobs" + (f" with status {status}" if status else "") + ":"]
    for job in jobs:
        lines.append(
            f"• `{job.job_id}` *{job.name}* {job.status.value} on {job.backend} (submitted {_when(job.created_at)})"
        )
    if more:
        lines.append("(older jobs: `jobplane list` in the CLI)")
    return reply("\n".join(lines))


def _job_id(args: list[str], usage: str) -> str:
    if len(args) != 1:
        raise ValidationError(f"usage: /jobplane {usage}", [{"field": "job_id", "message": "one job id"}])
    return args[0]


def describe_job(job: Job, settings: Settings) -> str:
    lines = [
        f"*{job.name}* (`{job.job_id}`): {job.status.value}",
        f"Owner {job.owner} · {job.backend}, {machine(job.spec)} · attempt {job.attempt}",
        f"Submitted {_when(job.created_at)} · started {_when(job.started_at)}"
        f" · duration {duration(job.started_at, job.finished_at) or '-'}"
        f" · est. cost {job_cost(job) or '-'}",
    ]
    if job.failure_reason:
        kind = job.failure_kind.value if job.failure_kind else "failure"
        lines.append(f"Reason ({kind}): {escape(job.failure_reason)}")
    elif job.status_reason:
        lines.append(f"Reason: {escape(job.status_reason)}")
    url = console_url(job, settings.region, settings.gcp_project, settings.gce_zone)
    if url:
        lines.append(f"<{url}|Open in the {provider_name(job.backend)} console>")
    return "\n".join(lines)


def _status(ctx: Context, args: list[str]) -> Reply:
    job = ctx.service.get(ctx.principal, _job_id(args, COMMANDS["status"].usage))
    return reply(describe_job(job, ctx.settings))


def _cancel(ctx: Context, args: list[str]) -> Reply:
    job = ctx.service.cancel(ctx.principal, _job_id(args, COMMANDS["cancel"].usage))
    return reply(f"Cancel requested for *{job.name}* (`{job.job_id}`): now {job.status.value}.")


def _submit(ctx: Context, args: list[str]) -> Reply:
    from chalicelib.templates import render

    if not args:
        raise ValidationError(
            f"usage: /jobplane {COMMANDS['submit'].usage}", [{"field": "template", "message": "a template name"}]
        )
    values = {}
    for arg in args[1:]:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ValidationError(f"{arg!r} is not key=value", [{"field": arg, "message": "write key=value"}])
        values[key] = value
    spec = render(args[0], values)
    # Lambda may run an async invocation twice; Slack's trigger_id names this one command.
    key = f"slack-{ctx.trigger_id}" if ctx.trigger_id else None
    job, created = ctx.service.submit(ctx.principal, spec, key)
    verb = "Submitted" if created else "Already submitted"
    return reply(f"{verb} *{job.name}* as `{job.job_id}` on {job.backend}: {job.status.value}.")


NOT_ENABLED = "Dev VMs are not enabled in this deployment."


def _vm(ctx: Context, args: list[str]) -> Reply:
    if ctx.devvms() is None:
        return reply(NOT_ENABLED)
    action = VM_ACTIONS.get(args[0] if args else "list")
    if action is None:
        return reply(f"usage: `/jobplane {COMMANDS['vm'].usage}`")
    return action.run(ctx, args[1:])


def _vm_line(vm) -> str:
    spec = vm.spec
    line = (
        f"• `{vm.vm_id}` *{escape(spec['name'])}* {vm.status.value} on {spec['backend']}"
        f" ({escape(vm.instance_type or '-')}; stops after {spec['idle_minutes']} idle min or {spec['max_hours']:g} h)"
    )
    return line + (f": {escape(vm.stop_reason)}" if vm.stop_reason else "")


def _vm_list(ctx: Context, args: list[str]) -> Reply:  # noqa: ARG001 - every subcommand has this signature
    service = ctx.devvms()
    if service is None:
        return reply(NOT_ENABLED)
    vms = service.list(ctx.principal)
    if not vms:
        return reply("No dev VMs yet: `/jobplane vm start NAME [backend=gce gpu_type=T4 ...]`.")
    return reply("\n".join(["Your dev VMs:", *(_vm_line(vm) for vm in vms)]))


def _vm_start(ctx: Context, args: list[str]) -> Reply:
    """`vm start VM_ID` starts a stopped one; `vm start NAME [key=value ...]` creates one (POST /instances' fields)."""
    from chalicelib.devvms import parse_devvm_spec

    service = ctx.devvms()
    if service is None:
        return reply(NOT_ENABLED)
    if not args:
        raise ValidationError(
            f"usage: /jobplane {VM_ACTIONS['start'].usage}", [{"field": "name", "message": "a VM id or a new name"}]
        )
    if len(args) == 1 and len(args[0]) == 32 and args[0].isalnum():
        vm = service.start(ctx.principal, args[0])
        return reply(f"Started {_vm_line(vm)[2:]}")
    body: dict[str, Any] = {"name": args[0]}
    for arg in args[1:]:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ValidationError(f"{arg!r} is not key=value", [{"field": arg, "message": "write key=value"}])
        body[key] = value  # pydantic turns "30" and "true" into the fields' types, or names the field
    vm = service.create(ctx.principal, parse_devvm_spec(body))
    return reply(f"Created {_vm_line(vm)[2:]}")


def _vm_stop(ctx: Context, args: list[str]) -> Reply:
    service = ctx.devvms()
    if service is None:
        return reply(NOT_ENABLED)
    if len(args) != 1:
        raise ValidationError(
            f"usage: /jobplane {VM_ACTIONS['stop'].usage}", [{"field": "vm_id", "message": "one VM id"}]
        )
    vm = service.stop(ctx.principal, args[0], f"stopped by {ctx.principal.user} from Slack")
    return reply(f"Stopped {_vm_line(vm)[2:]}")


COMMANDS: dict[str, Entry] = {
    "list": Entry(_list, slow=False, usage="list [STATUS]"),
    "status": Entry(_status, slow=False, usage="status JOB_ID"),
    "cancel": Entry(_cancel, slow=True, usage="cancel JOB_ID"),
    "submit": Entry(_submit, slow=True, usage="submit TEMPLATE [key=value ...]"),
    "vm": Entry(_vm, slow=False, usage="vm start|stop|list"),
    "help": Entry(_help, slow=False, usage="help"),
}
# `vm start|stop|list`: start and stop call the provider, so they are answered later.
VM_ACTIONS: dict[str, Entry] = {
    "list": Entry(_vm_list, slow=False, usage="vm list"),
    "start": Entry(_vm_start, slow=True, usage="vm start VM_ID | vm start NAME [backend=gce gpu_type=T4 ...]"),
    "stop": Entry(_vm_stop, slow=True, usage="vm stop VM_ID"),
}


def resolve(words: list[str], devvms: Callable[[], Any] = lambda: None) -> tuple[Entry, list[str]]:
    """The entry that runs `words` (help for anything unknown) and its arguments."""
    if not words or words[0].lower() not in COMMANDS:
        return COMMANDS["help"], []
    name, args = words[0].lower(), words[1:]
    # Without dev VMs, `vm ...` is answered at once (by _vm) rather than deferred to say so later.
    if name == "vm" and args and args[0] in VM_ACTIONS and devvms() is not None:
        return VM_ACTIONS[args[0]], args[1:]
    return COMMANDS[name], args


def execute(entry: Entry, ctx: Context, args: list[str]) -> Reply:
    try:
        return entry.run(ctx, args)
    except JobplaneError as exc:
        details = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in exc.details if isinstance(d, dict))
        return reply(f":warning: {escape(exc.message)}" + (f" ({escape(details)})" if details else ""))
    except Exception:  # the outermost handler of a command: log with context, answer politely
        log.exception("slack command %s failed for %s", entry.usage, ctx.principal.user)
        return reply(":warning: Something went wrong on jobplane's side; it has been logged.")


# --- the request ----------------------------------------------------------------------------
def verify(signing_secret: str, body: bytes, headers: Mapping[str, str], clock: Clock) -> bool:
    """slack-sdk's v0 HMAC check, including its 5-minute replay window."""
    try:
        return SignatureVerifier(signing_secret, clock).is_valid_request(body, dict(headers))
    except (ValueError, UnicodeDecodeError):  # a non-numeric timestamp, a body that is not UTF-8
        return False


def handle_slash_command(
    body: bytes,
    headers: Mapping[str, str],
    *,
    signing_secret: str | None,
    store: SlackStore,
    service: Any,
    settings: Settings,
    invoker: Invoker,
    clock: Clock,
    devvms: Callable[[], Any] = lambda: None,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for one POST /slack/commands. Nothing happens before the signature checks out."""
    if not signing_secret:
        # Without a secret no request can be verified: refused as unauthenticated (a 5xx would invite retries).
        log.error("slack command refused: no signing secret configured (JOBPLANE_SLACK_SIGNING_SECRET)")
        return 401, NOT_CONFIGURED
    if not verify(signing_secret, body, headers, clock):
        log.warning("slack command refused: bad or stale signature")
        return 401, UNAUTHORIZED
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
    slack_user = form.get("user_id", "")
    principal = principal_for(store, slack_user)
    if principal is None:
        return 200, reply(
            "Sorry, your Slack account is not linked to a jobplane user yet. "
            f"Ask a jobplane admin to run `jobplane slack map {escape(slack_user)} YOUR_JOBPLANE_USER`."
        )
    words = form.get("text", "").split()
    entry, args = resolve(words, devvms)
    ctx = Context(principal, service, settings, form.get("trigger_id", ""), devvms)
    if not entry.slow:
        return 200, execute(entry, ctx, args)
    response_url = form.get("response_url", "")
    if not response_url.startswith(("https://", "http://")):
        return 200, reply(":warning: Slack sent no response_url for this command; try again.")
    payload = {
        "words": words,
        "user": principal.user,
        "slack_user_id": slack_user,
        "response_url": response_url,
        "trigger_id": ctx.trigger_id,
    }
    try:
        invoker.invoke(payload)
    except Exception:  # the outermost handler: the user hears it failed, the log says why
        log.exception("slack command %r for %s could not be started", " ".join(words), principal.user)
        return 200, reply(":warning: jobplane could not start this command; please try again.")
    return 200, reply(f"Working on `/jobplane {escape(' '.join(words))}`; the result will follow here.")


def run_deferred(
    payload: dict[str, Any],
    service: Any,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    devvms: Callable[[], Any] = lambda: None,
) -> dict[str, Any]:
    """The slow half of a command (in slack_worker): run it and post the answer to its response_url."""
    ctx = Context(Principal(payload["user"]), service, settings, payload.get("trigger_id", ""), devvms)
    entry, args = resolve(list(payload.get("words") or []), devvms)
    message = execute(entry, ctx, args)
    destination = Webhook(payload["response_url"], "response_url")
    delivery = deliver(destination, message, clock() + settings.slack_send_budget_seconds, clock=clock, sleep=sleep)
    if not delivery.sent:
        log.warning("slack command result for %s not posted: %s", payload["user"], delivery.detail)
    return {"sent": delivery.sent, "tries": delivery.attempts, "detail": delivery.detail, "text": message["text"]}


# slack-sdk's wall clock, read at each request (deps passes it in); tests replace it to check the replay window
wall_clock = Clock()
