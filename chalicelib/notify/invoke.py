"""Work handed to another invocation (a slow slash command, a reconcile shard): a Lambda event, or a thread."""

from __future__ import annotations

import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from chalicelib.config import Settings

log = logging.getLogger("jobplane.notify")


class Invoker(ABC):
    """Starts `slack_worker` with a payload and returns at once."""

    @abstractmethod
    def invoke(self, payload: dict[str, Any]) -> None: ...


class LambdaInvoker(Invoker):
    """Lambda Invoke with InvocationType=Event: queued by Lambda, run by the slack_worker function."""

    def __init__(self, function_name: str, client: Any) -> None:
        self.function_name = function_name
        self.client = client

    def invoke(self, payload: dict[str, Any]) -> None:
        self.client.invoke(
            FunctionName=self.function_name,
            InvocationType="Event",
            Payload=json.dumps(payload).encode(),
        )


class ThreadInvoker(Invoker):
    """The local stack and tests: the worker runs in a daemon thread of this process."""

    def __init__(self, target: Callable[[dict[str, Any]], Any]) -> None:
        self.target = target
        self.threads: list[threading.Thread] = []

    def invoke(self, payload: dict[str, Any]) -> None:
        def run() -> None:
            try:
                self.target(payload)
            except Exception:  # a thread has no caller to report to: log, as Lambda would
                log.exception("slack worker failed")

        thread = threading.Thread(target=run, name="slack-worker", daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout: float = 10.0) -> None:
        for thread in self.threads:
            thread.join(timeout)


def invoker_for(settings: Settings, worker: Callable[[dict[str, Any]], Any]) -> Invoker:
    """The invoker the settings ask for; `worker` is what a thread runs (a Lambda runs slack_worker)."""
    if settings.slack_async == "thread":
        return ThreadInvoker(worker)
    import boto3

    client = boto3.client("lambda", region_name=settings.region, endpoint_url=settings.aws_endpoint_url)
    return LambdaInvoker(settings.slack_worker_function, client)


def shard_invoker(settings: Settings, run_shard: Callable[[dict[str, Any]], Any], client: Any = None) -> Invoker:
    """Where reconcile hands a shard on: the reconcile_shard function, or `run_shard` on a thread (local stack)."""
    if settings.reconcile_async == "thread":
        return ThreadInvoker(run_shard)
    if client is None:
        from chalicelib import aws_session

        client = aws_session.client("lambda", settings.region, settings.aws_endpoint_url)
    return LambdaInvoker(settings.reconcile_shard_function, client)
