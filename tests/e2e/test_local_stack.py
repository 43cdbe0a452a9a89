"""End to end: `jobplane local up` as a real process, driven over real HTTP and through the CLI."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import requests

from tests.factories import stack_api as api
from tests.factories import stack_cli as cli
from tests.factories import wait_long

pytestmark = pytest.mark.e2e


def test_the_example_job_runs_to_success_with_metrics_and_slack_messages(stack):
    result = cli(stack, "submit", "examples/train-local.yaml", "--wait", "--timeout", "120")
    job = api(stack, "GET", "/jobs?limit=1").json()["jobs"][0]
    assert job["status"] == "SUCCEEDED"
    assert job["name"] == "blobs-softmax"
    assert "SUCCEEDED" in result.stdout
    # The example's JOBPLANE_METRICS lines: the latest values on the job, the series, `jobplane status`.
    metrics = job["metrics"]
    assert metrics["epoch"] == 15 and 0.5 < metrics["val_accuracy"] <= 1.0 and metrics["seconds"] > 0
    series = api(stack, "GET", f"/jobs/{job['job_id']}/metrics").json()["series"]
    assert [seq for seq, _ in series["epoch"]] == list(range(1, 16))
    assert [value for _, value in series["epoch"]] == [float(e) for e in range(1, 16)]
    status = cli(stack, "status", job["job_id"]).stdout
    assert "metrics:" in status and "val_accuracy" in status
    assert "15" in cli(stack, "metrics", job["job_id"]).stdout
    outputs = stack["dir"] / "jobs" / job["native_id"] / "outputs"
    assert (outputs / "model.npz").stat().st_size > 0
    history = [(e["from"], e["to"]) for e in api(stack, "GET", f"/jobs/{job['job_id']}/events").json()["events"]]
    assert history == [(None, "QUEUED"), ("QUEUED", "LAUNCHING"), ("LAUNCHING", "RUNNING"), ("RUNNING", "SUCCEEDED")]

    def slack_texts():
        lines = Path(stack["state"]["slack_log"]).read_text().splitlines()
        texts = [json.loads(line)["text"] for line in lines]
        mine = [t for t in texts if job["job_id"] in t]
        return mine if len(mine) >= 2 else None

    texts = wait_long(slack_texts, timeout=20, what="two Slack messages")
    assert any("started" in t or "running" in t for t in texts) and any("succeeded" in t for t in texts)
    final = [json.loads(line) for line in Path(stack["state"]["slack_log"]).read_text().splitlines()]
    [final] = [m for m in final if job["job_id"] in m["text"] and "succeeded" in m["text"]]
    shown = [b["text"]["text"] for b in final["blocks"] if b.get("text", {}).get("text", "").startswith("*Metrics*")]
    assert shown and "`val_accuracy` " in shown[0] and "`epoch` 15" in shown[0]


def test_token_create_prints_only_a_working_token_scoped_to_its_user(stack):
    out = cli(stack, "token", "create", "bob").stdout
    assert out.count("\n") == 1 and out.startswith("jp_")
    token = out.strip()
    response = api(stack, "GET", "/jobs", token=token)
    assert response.status_code == 200
    assert response.json()["jobs"] == []  # bob sees none of the admin's jobs
    assert api(stack, "GET", "/jobs", token=token + "x").status_code == 401


def test_cancel_stops_the_running_process_group(stack):
    spec = {
        "name": "sleeper",
        "backend": "local",
        "command": [sys.executable, "-c", "import subprocess,time; subprocess.Popen(['sleep','300']); time.sleep(300)"],
    }
    job = api(stack, "POST", "/jobs", json=spec).json()
    wait_long(lambda: api(stack, "GET", f"/jobs/{job['job_id']}").json()["status"] == "RUNNING", what="RUNNING")
    runner = json.loads((stack["dir"] / "jobs" / job["native_id"] / "runner.json").read_text())
    pgid = runner["pid"]
    assert cli(stack, "cancel", job["job_id"]).returncode == 0
    final = wait_long(
        lambda: (j := api(stack, "GET", f"/jobs/{job['job_id']}").json())["status"] == "CANCELLED" and j,
        what="CANCELLED",
    )
    assert final["status"] == "CANCELLED"

    def group_gone():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_long(group_gone, timeout=20, what="the job's process group to end")
    assert api(stack, "POST", f"/jobs/{job['job_id']}/cancel").status_code == 409


def _sign(stack, detail: dict) -> str:
    """Signed as that job's runner would sign it (the test reads the stack's secret as the stack's user)."""
    import hashlib
    import hmac

    from chalicelib.backends.local.runner import sign_detail

    stack_key = bytes.fromhex((stack["dir"] / "jobs" / "event-key").read_text().strip())
    return sign_detail(hmac.new(stack_key, detail["native_id"].encode(), hashlib.sha256).digest(), detail)


def test_local_invoke_feeds_raw_payloads_to_functions(stack):
    scheduled = {
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-11-26T12:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/reconcile"],
        "detail": {},
    }
    result = cli(stack, "local", "invoke", "reconcile", stdin=json.dumps(scheduled))
    assert isinstance(json.loads(result.stdout), list)
    unknown = {
        "version": "0",
        "id": "x",
        "detail-type": "jobplane Local Job State Change",
        "source": "jobplane.local",
        "account": "123456789012",
        "time": "2026-11-26T12:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {"native_id": "jp-" + "0" * 32, "state": "SUCCEEDED", "at": "2026-11-26T12:00:00Z"},
    }
    unknown["detail"]["signature"] = _sign(stack, unknown["detail"])
    result = json.loads(cli(stack, "local", "invoke", "on_job_state_change", stdin=json.dumps(unknown)).stdout)
    assert result["outcome"] == "unknown_job"
    missing = cli(stack, "local", "invoke", "no_such_function", stdin="{}", check=False)
    assert missing.returncode == 2 and "Function not found: no_such_function" in missing.stderr


def test_an_upload_to_the_embedded_s3_starts_one_job(stack):
    import boto3

    state = stack["state"]
    s3 = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=state["aws_endpoint"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    key = "datasets/cats and dogs.csv"  # S3 percent-encodes it in the notification
    s3.put_object(Bucket=state["upload_bucket"], Key=key, Body=b"a,b\n1,2\n")
    s3.put_object(Bucket=state["upload_bucket"], Key="outputs/result.csv", Body=b"never triggers")

    def ingest_jobs():
        jobs = api(stack, "GET", "/jobs?limit=50").json()["jobs"]
        mine = [j for j in jobs if j["name"].startswith("ingest-")]
        return mine if mine and all(j["status"] == "SUCCEEDED" for j in mine) else None

    jobs = wait_long(ingest_jobs, timeout=60, what="the upload's job")
    assert [j["owner"] for j in jobs] == ["uploads"]
    logs = api(stack, "GET", f"/jobs/{jobs[0]['job_id']}/logs").json()["text"]
    assert f"jobplane: new upload s3://{state['upload_bucket']}/{key}" in logs


def test_ctrl_c_stops_everything_it_started(stack):
    proc = stack["proc"]
    aws = stack["state"]["aws_endpoint"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=40) == 0
    assert not (stack["dir"] / "local.json").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(stack["state"]["api"] + "/health", timeout=2)
    with pytest.raises(requests.ConnectionError):
        requests.get(aws, timeout=2)
