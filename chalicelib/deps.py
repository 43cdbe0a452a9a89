"""Cached per-container factories (settings, one store per aggregate, services) and the handler composition
over them; built on first use, never at import."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("jobplane.deps")
_lock = threading.RLock()
_cache: dict[str, Any] = {}


def _cached(name: str, build):
    with _lock:
        if name not in _cache:
            _cache[name] = build()
        return _cache[name]


def get_settings():
    from chalicelib.config import Settings

    return _cached("settings", Settings.from_env)


def ensure_aws_credentials() -> None:
    """On Google Cloud (JOBPLANE_AWS_ROLE_ARN set): keep the federated role's credentials fresh where the
    AWS SDKs read them. Cheap when they are: call it at the start of every invocation."""
    settings = get_settings()
    if not settings.aws_role_arn:
        return

    def build():
        from chalicelib.gcp_auth import WebIdentityFederation

        return WebIdentityFederation(settings)

    _cached("aws_federation", build).export()


def get_store():
    """Jobs with their history, capacity claims and idempotency keys (one store: they share transactions)."""

    def build():
        from chalicelib.store.dynamo import DynamoJobStore

        ensure_aws_credentials()
        return DynamoJobStore(get_settings())

    return _cached("store", build)


def principal(request):
    """Who sent an API request: its bearer token checked against this container's token store."""
    from chalicelib.auth import authenticate

    headers = request.headers or {}
    return authenticate(get_token_store(), headers.get("authorization"))


def get_token_store():
    def build():
        from chalicelib.store.tokens import DynamoTokenStore

        ensure_aws_credentials()
        return DynamoTokenStore(get_settings())

    return _cached("token_store", build)


def get_slack_store():
    """Slack user mappings and notification markers."""

    def build():
        from chalicelib.store.slack import DynamoSlackStore

        ensure_aws_credentials()
        return DynamoSlackStore(get_settings())

    return _cached("slack_store", build)


def get_devvm_store():
    def build():
        from chalicelib.store.devvms import DynamoDevVmStore

        ensure_aws_credentials()
        return DynamoDevVmStore(get_settings())

    return _cached("devvm_store", build)


def get_metrics_store():
    """Each job's metric series."""

    def build():
        from chalicelib.store.metrics import DynamoMetricsStore

        ensure_aws_credentials()
        return DynamoMetricsStore(get_settings())

    return _cached("metrics_store", build)


def get_endpoint_store():
    """Inference endpoints and their history."""

    def build():
        from chalicelib.store.endpoints import DynamoEndpointStore

        ensure_aws_credentials()
        return DynamoEndpointStore(get_settings())

    return _cached("endpoint_store", build)


def get_budget_store():
    """Monthly budgets per owner and per label."""

    def build():
        from chalicelib.store.budgets import DynamoBudgetStore

        ensure_aws_credentials()
        return DynamoBudgetStore(get_settings())

    return _cached("budget_store", build)


def get_budget_service():
    def build():
        from chalicelib.budgets.service import BudgetService

        return BudgetService(get_budget_store(), get_store(), get_settings(), enqueue=enqueue_slack)

    return _cached("budget_service", build)


#: an outbox record's destination for the incoming webhook (chalicelib.notify.slack.WEBHOOK, which imports deps)
SLACK_WEBHOOK = "webhook"


def enqueue_slack(key: str, message: dict) -> bool | None:
    """Queue a message that is no job transition (a budget's alert) in the Slack outbox under `key`, once;
    None when no webhook is configured (nothing is recorded, so it is queued once one is)."""
    from chalicelib.jobs.model import utcnow
    from chalicelib.store.slack import OutboxRecord, OutboxState

    if not get_slack_webhook_url():
        return None
    now = utcnow()
    record = OutboxRecord(key, message, SLACK_WEBHOOK, OutboxState.PENDING, now, now)
    return get_slack_store().add_outbox(record)


def create_tables() -> None:
    """Create every store's missing tables (the local stack)."""
    stores = (get_store(), get_token_store(), get_slack_store(), get_devvm_store(), get_metrics_store())
    for store in (*stores, get_endpoint_store(), get_budget_store()):
        store.create_tables()


def get_endpoint_service():
    def build():
        from chalicelib.endpoints.service import EndpointService

        return EndpointService(get_endpoint_store(), get_settings(), get_store(), notify=notify_endpoint)

    return _cached("endpoint_service", build)


def notify_endpoint(endpoint, kind: str) -> None:
    """Queue an endpoint's IN_SERVICE / FAILED / deleted-for-idleness message in the Slack outbox (once per
    transition) and try it once; what is left is sent by reconcile's drain."""
    from chalicelib.endpoints.notify import send

    webhook_url, bot_token = get_slack_webhook_url(), get_slack_bot_token()
    if not webhook_url and not bot_token:
        return
    result = send(get_slack_store(), get_settings(), endpoint, kind, webhook_url, bot_token)
    if result["outcome"] not in ("sent", "duplicate"):
        log.warning("endpoint %s: Slack message %s: %s", endpoint.endpoint_id, kind, result["outcome"])


def get_service():
    def build():
        from chalicelib.jobs.service import JobService

        return JobService(get_store(), get_settings(), metrics_store=get_metrics_store(), budgets=get_budget_service())

    return _cached("service", build)


def read_secret(name: str, settings=None) -> str:
    """A secret's value: Secrets Manager, or SSM Parameter Store (decrypted) when `name` is "ssm:<parameter>"."""
    from chalicelib import aws_session

    settings = settings or get_settings()
    if name.startswith("ssm:"):
        ssm = aws_session.client("ssm", settings.region, settings.aws_endpoint_url)
        return ssm.get_parameter(Name=name[len("ssm:") :], WithDecryption=True)["Parameter"]["Value"].strip()
    secrets = aws_session.client("secretsmanager", settings.region, settings.aws_endpoint_url)
    return secrets.get_secret_value(SecretId=name)["SecretString"].strip()


def get_secret(name: str | None) -> str | None:
    """A secret by name, read once per container; None when no name is configured."""
    if not name:
        return None
    return _cached(f"secret:{name}", lambda: read_secret(name))


def get_slack_webhook_url() -> str | None:
    """The incoming-webhook URL (secret named in settings), read once per container."""
    return get_secret(get_settings().slack_webhook_secret)


def get_slack_bot_token() -> str | None:
    """The bot token for chat.postMessage (secret named in settings), read once per container."""
    return get_secret(get_settings().slack_bot_token_secret)


def get_slack_signing_secret() -> str | None:
    """The signing secret that slash-command requests are verified with."""
    return get_secret(get_settings().slack_signing_secret)


def get_slack_invoker():
    """Runs slow slash commands asynchronously: a Lambda self-invocation, or a thread in the local stack."""

    def build():
        from chalicelib.notify.invoke import invoker_for

        return invoker_for(get_settings(), run_slack_worker)

    return _cached("slack_invoker", build)


def handle_slack_command(body: bytes, headers) -> tuple[int, dict[str, Any]]:
    """POST /slack/commands: the slash command with this container's secret, store, service and invoker."""
    from chalicelib.notify import commands

    settings = get_settings()
    try:
        secret = get_slack_signing_secret()
    except Exception:  # an unreadable secret refuses the command; nothing else may happen
        log.exception("slack command refused: the signing secret could not be read")
        return 401, commands.NOT_CONFIGURED
    return commands.handle_slash_command(
        body,
        headers,
        signing_secret=secret,
        store=get_slack_store(),
        service=get_service(),
        settings=settings,
        invoker=get_slack_invoker(),
        clock=commands.wall_clock,
        devvms=get_devvm_service_if_enabled,
    )


def run_slack_worker(payload: dict[str, Any]) -> dict[str, Any]:
    """slack_worker (or the local stack's thread): the slow half of a slash command."""
    from chalicelib.notify.commands import run_deferred

    return run_deferred(payload, get_service(), get_settings(), devvms=get_devvm_service_if_enabled)


def get_reconcile_fan_out(run_shard):
    """How the reconcile schedule hands a shard of job ids on: reconcile_shard invoked asynchronously
    (InvocationType=Event), or `run_shard` on a thread of this process in the local stack."""

    def build():
        from chalicelib.notify.invoke import shard_invoker

        invoker = shard_invoker(get_settings(), run_shard)
        return lambda job_ids: invoker.invoke({"job_ids": list(job_ids)})

    return _cached("reconcile_fan_out", build)


def get_devvm_service():
    def build():
        from chalicelib.devvms import DevVmService, devvm_provider

        providers: dict[str, Any] = {}

        def provider(name, settings):
            if name not in providers:
                providers[name] = devvm_provider(name, settings)
            return providers[name]

        return DevVmService(get_devvm_store(), get_settings(), provider)

    return _cached("devvm_service", build)


def get_devvm_service_if_enabled():
    """Dev VMs run on the backends that host them (ec2, gce): without one enabled there are none to look after."""
    from chalicelib.devvms import DEVVM_BACKENDS

    if not set(DEVVM_BACKENDS) & set(get_settings().enabled_backends):
        return None
    return get_devvm_service()


def override(**values: Any) -> None:
    """Replace cached objects (tests, the local stack)."""
    with _lock:
        _cache.update(values)


def reset() -> None:
    with _lock:
        _cache.clear()
