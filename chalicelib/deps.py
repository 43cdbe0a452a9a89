"""Cached per-container factories (settings, store, service), built on first use, never at import."""

from __future__ import annotations

import threading
from typing import Any

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


def get_store():
    def build():
        from chalicelib.store.dynamo import DynamoJobStore

        return DynamoJobStore(get_settings())

    return _cached("store", build)


def get_service():
    def build():
        from chalicelib.jobs.service import JobService

        return JobService(get_store(), get_settings())

    return _cached("service", build)


def get_slack_webhook_url() -> str | None:
    """The webhook URL from Secrets Manager (name in settings), read once per container."""

    def build():
        name = get_settings().slack_webhook_secret
        if not name:
            return None
        import boto3

        settings = get_settings()
        client = boto3.client("secretsmanager", region_name=settings.region, endpoint_url=settings.aws_endpoint_url)
        return client.get_secret_value(SecretId=name)["SecretString"].strip()

    return _cached("slack_webhook_url", build)


def override(**values: Any) -> None:
    """Replace cached objects (tests, the local stack)."""
    with _lock:
        _cache.update(values)


def reset() -> None:
    with _lock:
        _cache.clear()
