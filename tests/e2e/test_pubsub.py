"""End to end: the real Pub/Sub emulator pushes to a real functions-framework server running on_job_event."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from chalicelib.jobs.model import FailureKind, JobStatus
from tests.factories import GCP_PROJECT, ROOT, gcp_env, gcp_fixture, make_settings, submit

TOPIC = "jobplane-test-events"
ZONE = "us-central1-a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before it was ready")
        try:
            requests.get(url, timeout=0.5)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # gcloud leaves Java running unless the whole group goes
        proc.wait(timeout=3)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory):
    if shutil.which("gcloud") is None:
        pytest.skip("gcloud (google-cloud-cli with the pubsub-emulator component) is not installed")
    port = free_port()
    data_dir = tmp_path_factory.mktemp("pubsub")
    log = open(data_dir / "emulator.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}", f"--data-dir={data_dir}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # setsid: its own process group, so teardown stops Java too
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", 30, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)
        log.close()


class Recorder:
    """A push endpoint that keeps the emulator's raw request bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.bodies.append({"headers": dict(self.headers), "body": json.loads(raw)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/push"


@pytest.fixture
def function_server(tmp_path, moto_endpoint, fake_gcp):
    """A real `functions-framework --target on_job_event` process; the store on moto, GCP APIs on the fake."""
    from chalicelib.jobs.service import JobService
    from chalicelib.store.dynamo import DynamoJobStore

    env_settings = gcp_env(fake_gcp.endpoint)
    settings = make_settings(tmp_path, moto_endpoint, **env_settings)
    store = DynamoJobStore(settings)
    store.create_tables()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k.startswith(("PATH", "HOME", "LANG"))},
        **settings.to_env(),
        **env_settings,
        "JOBPLANE_LOCAL_STATE_DIR": str(tmp_path / "jobs"),
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "functions-framework"),
            "--target=on_job_event",
            "--signature-type=cloudevent",
            f"--source={ROOT / 'gcp_functions' / 'main.py'}",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        env=env,
        cwd=tmp_path,
        stdout=open(tmp_path / "function.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", 20, proc)
        yield f"http://127.0.0.1:{port}", JobService(store, settings), tmp_path / "function.log"
    finally:
        stop_group(proc)


def test_a_pushed_log_sink_message_moves_the_job(pubsub_emulator, function_server, fake_gcp):
    url, service, function_log = function_server
    api = f"{pubsub_emulator}/v1/projects/{GCP_PROJECT}"
    recorder = Recorder()
    assert requests.put(f"{api}/topics/{TOPIC}", json={}, timeout=5).status_code == 200
    for name, endpoint in (
        # The topic in the push URL's path is how functions-framework names the CloudEvent's source.
        ("to-function", f"{url}/projects/{GCP_PROJECT}/topics/{TOPIC}"),
        ("to-recorder", recorder.url),
    ):
        body = {"topic": f"projects/{GCP_PROJECT}/topics/{TOPIC}", "pushConfig": {"pushEndpoint": endpoint}}
        assert requests.put(f"{api}/subscriptions/{name}", json=body, timeout=5).status_code == 200

    job = submit(service, backend="gce", resources={"spot": True})
    fake_gcp.instances[(ZONE, job.native_id)]["status"] = "TERMINATED"
    entry = gcp_fixture("logentry_gce_preempted.json")
    entry["protoPayload"]["resourceName"] = f"projects/{GCP_PROJECT}/zones/{ZONE}/instances/{job.native_id}"
    message = {"data": base64.b64encode(json.dumps(entry).encode()).decode(), "attributes": {"logging": "sink"}}
    published = requests.post(f"{api}/topics/{TOPIC}:publish", json={"messages": [message]}, timeout=5).json()

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = service.store.get_job(job.job_id)
        if after.status is JobStatus.FAILED and recorder.bodies and not fake_gcp.instances:
            break
        time.sleep(0.1)
    assert (after.status, after.failure_kind) == (JobStatus.FAILED, FailureKind.INTERRUPTED), function_log.read_text()
    assert fake_gcp.instances == {}  # released by the function in the same invocation

    # What the emulator pushes: the bare push JSON (no CloudEvent headers), with both camelCase and
    # snake_case ids and times, as Pub/Sub does; functions-framework converts it into a messagePublished
    # CloudEvent from the camelCase ones (and drops `subscription` and the snake_case twins).
    pushed = recorder.bodies[0]
    assert sorted(pushed["body"]) == ["message", "subscription"]
    assert sorted(pushed["body"]["message"]) == [
        "attributes", "data", "messageId", "message_id", "publishTime", "publish_time"
    ]  # fmt: skip
    assert "ce-type" not in {k.lower() for k in pushed["headers"]}
    assert pushed["body"]["subscription"] == f"projects/{GCP_PROJECT}/subscriptions/to-recorder"
    assert pushed["body"]["message"]["messageId"] == published["messageIds"][0]
    assert pushed["body"]["message"]["data"] == message["data"]
    assert pushed["body"]["message"]["attributes"] == {"logging": "sink"}
