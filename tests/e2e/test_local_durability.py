"""End to end: state survives Ctrl-C and kill -9; oversize bodies are refused unread; a busy port is one line."""

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

from chalicelib.jobs.spec import MAX_BODY_BYTES
from tests.e2e.conftest import JOBPLANE, ROOT, _free_port, _wait

pytestmark = pytest.mark.e2e
QUICK = {"name": "quick", "backend": "local", "command": [sys.executable, "-c", "print('done')"]}


def _start(directory: Path, port: int | None = None, args: tuple[str, ...] = (), **extra_env: str) -> dict:
    port = port or _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JOBPLANE_LOCAL_DIR": str(directory), **extra_env}
    env.pop("AWS_ENDPOINT_URL", None)
    log = open(directory.parent / f"{directory.name}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [*JOBPLANE, "local", "up", "--port", str(port), "--reconcile-seconds", "1", *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"stack exited: {Path(log.name).read_text()}")
        try:
            state = json.loads((directory / "local.json").read_text())
            if state["pid"] != proc.pid:
                return None  # the file a killed stack left behind
            return state if requests.get(state["api"] + "/health", timeout=1).ok else None
        except (OSError, ValueError, KeyError, requests.RequestException):
            return None

    return {"state": _wait(ready, what="the local stack"), "proc": proc, "log": log, "env": env, "dir": directory}


def _stop(stack, sig=signal.SIGINT) -> int:
    proc = stack["proc"]
    try:
        if proc.poll() is None:
            proc.send_signal(sig)
            return proc.wait(timeout=40)
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
        stack["log"].close()


def _api(stack, method, path, token=None, **kw):
    token = token or stack["state"]["admin_token"]
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    return requests.request(method, stack["state"]["api"] + path, headers=headers, timeout=30, **kw)


def _kill_runners(directory: Path) -> None:
    """A job's runner outlives a kill -9 of the stack by design; the test leaves none behind."""
    for pid_file in (directory / "jobs").glob("*/runner.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def state_dir(tmp_path):
    directory = tmp_path / "state"
    yield directory
    _kill_runners(directory)


@pytest.mark.slow
def test_ctrl_c_and_restart_keep_jobs_history_tokens_and_keys(state_dir):
    first = _start(state_dir)
    try:
        job = _api(first, "POST", "/jobs", json=QUICK, headers={"Idempotency-Key": "nightly-1"}).json()
        done = _wait(
            lambda: (j := _api(first, "GET", f"/jobs/{job['job_id']}").json())["status"] == "SUCCEEDED" and j,
            what="SUCCEEDED",
        )
        history = _api(first, "GET", f"/jobs/{job['job_id']}/events").json()["events"]
        bob = subprocess.run(
            [*JOBPLANE, "token", "create", "bob"], cwd=ROOT, env=first["env"], capture_output=True, text=True
        ).stdout.strip()
        assert _api(first, "GET", "/jobs", token=bob).status_code == 200
        s3 = _s3(first)
        s3.put_object(Bucket=first["state"]["upload_bucket"], Key="datasets/kept.csv", Body=b"a,b\n")
        ingest = _wait(lambda: _ingest_jobs(first), what="the upload's job")
        assert len(ingest) == 1
    finally:
        assert _stop(first) == 0

    second = _start(state_dir)
    try:
        assert second["state"]["restored"]["applied"] > 0 and second["state"]["restored"]["failed"] == 0
        assert second["state"]["admin_token"] == first["state"]["admin_token"]
        again = _api(second, "GET", f"/jobs/{job['job_id']}").json()
        assert again == done
        assert _api(second, "GET", f"/jobs/{job['job_id']}/events").json()["events"] == history
        assert _api(second, "GET", "/jobs", token=bob).status_code == 200
        retried = _api(second, "POST", "/jobs", json=QUICK, headers={"Idempotency-Key": "nightly-1"})
        assert retried.status_code == 200 and retried.json()["job_id"] == job["job_id"]
        obj = _s3(second).get_object(Bucket=second["state"]["upload_bucket"], Key="datasets/kept.csv")
        assert obj["Body"].read() == b"a,b\n"
        time.sleep(3)  # the stream reader polls twice a second, the SQS reader every second
        # Replayed records are not news: no second job for the old upload, no Slack message for the old job.
        assert [j["job_id"] for j in _ingest_jobs(second)] == [j["job_id"] for j in ingest]
        assert job["job_id"] not in Path(second["state"]["slack_log"]).read_text()
    finally:
        assert _stop(second) == 0


@pytest.mark.slow
def test_kill_9_keeps_a_job_acknowledged_just_before_it(state_dir):
    first = _start(state_dir)
    try:
        created = _api(first, "POST", "/jobs", json=QUICK)
        assert created.status_code == 201
        first["proc"].send_signal(signal.SIGKILL)  # no chance to flush anything after the 201
    finally:
        assert _stop(first) == -signal.SIGKILL
    second = _start(state_dir)
    try:
        job = _api(second, "GET", f"/jobs/{created.json()['job_id']}")
        assert job.status_code == 200
        assert job.json()["name"] == "quick" and job.json()["created_at"] == created.json()["created_at"]
        events = _api(second, "GET", f"/jobs/{created.json()['job_id']}/events").json()["events"]
        assert events[0]["to"] == "QUEUED"
    finally:
        assert _stop(second) == 0


def test_an_oversize_body_is_refused_with_413_before_it_is_read(stack):
    host, port = stack["state"]["api"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # A 1 GB body with no token: only the headers are sent. A server that read the body first
        # would wait for it and never answer.
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
        )
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    at_limit = requests.post(
        stack["state"]["api"] + "/jobs",
        data=b" " * MAX_BODY_BYTES,
        headers={"Authorization": f"Bearer {stack['state']['admin_token']}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert at_limit.status_code == 400  # read and judged by the API, not refused by the server


def test_a_second_local_up_on_a_busy_port_says_so_in_one_line(stack, tmp_path):
    port = stack["state"]["api"].rsplit(":", 1)[1]
    env = {**stack["env"], "JOBPLANE_LOCAL_DIR": str(tmp_path / "other")}
    result = subprocess.run(
        [*JOBPLANE, "local", "up", "--port", port], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0
    assert "Traceback" not in output and len(output.splitlines()) == 1, output
    assert f"port {port}" in output and "already in use" in output


def _s3(stack):
    import boto3

    return boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=stack["state"]["aws_endpoint"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def _ingest_jobs(stack):
    jobs = _api(stack, "GET", "/jobs?limit=50").json()["jobs"]
    return [j for j in jobs if j["name"].startswith("ingest-")] or None
