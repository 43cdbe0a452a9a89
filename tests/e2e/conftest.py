"""The local stack as a real process (`jobplane local up`), for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
JOBPLANE = [sys.executable, "-m", "jobplane.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout=60.0, interval=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def start_stack(tmp_path_factory, **extra_env):
    directory = tmp_path_factory.mktemp("stack")
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JOBPLANE_LOCAL_DIR": str(directory), **extra_env}
    env.pop("AWS_ENDPOINT_URL", None)
    log = open(directory / "stack.log", "w")
    proc = subprocess.Popen(
        [*JOBPLANE, "local", "up", "--port", str(port), "--reconcile-seconds", "1"],
        cwd=ROOT,
        env=env,
        # Started the way CI workers and nohup start it: with SIGINT ignored. Ctrl-C must still stop it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"stack exited: {(directory / 'stack.log').read_text()}")
        try:
            state = json.loads((directory / "local.json").read_text())
            return state if requests.get(state["api"] + "/health", timeout=1).ok else None
        except (OSError, ValueError, requests.RequestException):
            return None

    state = _wait(ready, what="the local stack")
    return {"state": state, "env": env, "dir": directory, "proc": proc, "log": log}


def stop_stack(stack) -> None:
    proc = stack["proc"]
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()  # the test has failed already; leave nothing running behind it
        stack["log"].close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    running = start_stack(tmp_path_factory)
    yield running
    stop_stack(running)
