"""End to end: state survives Ctrl-C and kill -9; oversize bodies are refused unread; a busy port is one line."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from chalicelib.jobs.spec import MAX_BODY_BYTES
from tests.factories import JOBPLANE, ROOT, kill_runners, stack_api, start_stack, stop_stack, wait_long

pytestmark = pytest.mark.e2e
QUICK = {"name": "quick", "backend": "local", "command": [sys.executable, "-c", "print('done')"]}


@pytest.fixture
def state_dir(tmp_path):
    directory = tmp_path / "state"
    yield directory
    kill_runners(directory)


@pytest.mark.slow
def test_ctrl_c_and_restart_keep_jobs_history_tokens_and_keys(state_dir):
    first = start_stack(state_dir)
    try:
        job = stack_api(first, "POST", "/jobs", json=QUICK, headers={"Idempotency-Key": "nightly-1"}).json()
        done = wait_long(
            lambda: (j := stack_api(first, "GET", f"/jobs/{job['job_id']}").json())["status"] == "SUCCEEDED" and j,
            what="SUCCEEDED",
        )
        history = stack_api(first, "GET", f"/jobs/{job['job_id']}/events").json()["events"]
        bob = subprocess.run(
            [*JOBPLANE, "token", "create", "bob"], cwd=ROOT, env=first["env"], capture_output=True, text=True
        ).stdout.strip()
        assert stack_api(first, "GET", "/jobs", token=bob).status_code == 200
        s3 = _s3(first)
        s3.put_object(Bucket=first["state"]["upload_bucket"], Key="datasets/kept.csv", Body=b"a,b\n")
        ingest = wait_long(lambda: _ingest_jobs(first), what="the upload's job")
        assert len(ingest) == 1
    finally:
        assert stop_stack(first) == 0

    second = start_stack(state_dir)
    try:
        assert second["state"]["restored"]["applied"] > 0 and second["state"]["restored"]["failed"] == 0
        assert second["state"]["admin_token"] == first["state"]["admin_token"]
        again = stack_api(second, "GET", f"/jobs/{job['job_id']}").json()
        assert again == done
        assert stack_api(second, "GET", f"/jobs/{job['job_id']}/events").json()["events"] == history
        assert stack_api(second, "GET", "/jobs", token=bob).status_code == 200
        retried = stack_api(second, "POST", "/jobs", json=QUICK, headers={"Idempotency-Key": "nightly-1"})
        assert retried.status_code == 200 and retried.json()["job_id"] == job["job_id"]
        obj = _s3(second).get_object(Bucket=second["state"]["upload_bucket"], Key="datasets/kept.csv")
        assert obj["Body"].read() == b"a,b\n"
        time.sleep(3)  # the stream reader polls twice a second, the SQS reader every second
        # Replayed records are not news: no second job for the old upload, no Slack message for the old job.
        assert [j["job_id"] for j in _ingest_jobs(second)] == [j["job_id"] for j in ingest]
        assert job["job_id"] not in Path(second["state"]["slack_log"]).read_text()
    finally:
        assert stop_stack(second) == 0


@pytest.mark.slow
def test_kill_9_keeps_a_job_acknowledged_just_before_it(state_dir):
    first = start_stack(state_dir)
    try:
        created = stack_api(first, "POST", "/jobs", json=QUICK)
        assert created.status_code == 201
        first["proc"].send_signal(signal.SIGKILL)  # no chance to flush anything after the 201
    finally:
        assert stop_stack(first) == -signal.SIGKILL
    second = start_stack(state_dir)
    try:
        job = stack_api(second, "GET", f"/jobs/{created.json()['job_id']}")
        assert job.status_code == 200
        assert job.json()["name"] == "quick" and job.json()["created_at"] == created.json()["created_at"]
        events = stack_api(second, "GET", f"/jobs/{created.json()['job_id']}/events").json()["events"]
        assert events[0]["to"] == "QUEUED"
    finally:
        assert stop_stack(second) == 0


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
    jobs = stack_api(stack, "GET", "/jobs?limit=50").json()["jobs"]
    return [j for j in jobs if j["name"].startswith("ingest-")] or None
