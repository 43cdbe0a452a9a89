"""End to end: a spec with workdir, setup, two named inputs and checkpoints on `jobplane local up`, interrupted
once and resumed from its checkpoint, its artifacts listed and downloaded through the CLI."""

from __future__ import annotations

import os
import signal
import textwrap

import boto3
import pytest

from tests.factories import stack_api as api
from tests.factories import stack_cli as cli
from tests.factories import start_stack, stop_stack, wait_long

pytestmark = pytest.mark.e2e

DATA = "e2e-datasets"
TRAIN = textwrap.dedent(
    """
    import json, os, pathlib, time
    inputs = pathlib.Path(os.environ["JOBPLANE_INPUT_DIR"])
    ckpt = pathlib.Path(os.environ["JOBPLANE_CHECKPOINT_DIR"]) / "epoch"
    out = pathlib.Path(os.environ["JOBPLANE_OUTPUT_DIR"])
    rows = (inputs / "train" / "part-0.csv").read_text() + (inputs / "train" / "sub" / "part-1.csv").read_text()
    labels = (inputs / "labels" / "labels.txt").read_text().split()
    assert pathlib.Path("setup-done").read_text() == "ok\\n"
    start = int(ckpt.read_text()) if ckpt.exists() else 0
    print(f"attempt {os.environ['JOBPLANE_ATTEMPT']} resumed from epoch {start}", flush=True)
    for epoch in range(start + 1, 5):
        ckpt.write_text(str(epoch))
        print(f"epoch {epoch}", flush=True)
        if epoch == 2 and os.environ["JOBPLANE_ATTEMPT"] == "1":
            time.sleep(300)  # the test takes this machine away here
    (out / "metrics").mkdir(exist_ok=True)
    (out / "model.txt").write_text(f"rows={len(rows.splitlines())} labels={len(labels)}")
    (out / "metrics" / "summary.json").write_text(json.dumps({"epochs": 4, "resumed_from": start}))
    """
)


@pytest.fixture(scope="module")
def contract_stack(tmp_path_factory):
    running = start_stack(tmp_path_factory.mktemp("stack"), sigint_ignored=True, JOBPLANE_LOCAL_CHECKPOINT_SECONDS="1")
    yield running
    stop_stack(running)


def test_a_workdir_job_with_inputs_resumes_from_its_checkpoint_and_its_artifacts_download(contract_stack, tmp_path):
    stack = contract_stack
    s3 = boto3.client(
        "s3",
        endpoint_url=stack["state"]["aws_endpoint"],
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the embedded emulator's placeholder
    )
    s3.create_bucket(Bucket=DATA)
    s3.put_object(Bucket=DATA, Key="cifar/train/part-0.csv", Body=b"1,2\n3,4\n")
    s3.put_object(Bucket=DATA, Key="cifar/train/sub/part-1.csv", Body=b"5,6\n")
    s3.put_object(Bucket=DATA, Key="cifar/labels.txt", Body=b"cat dog bird\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(TRAIN)
    (src / ".gitignore").write_text("*.ckpt\n")
    (src / "old.ckpt").write_text("left behind")
    spec = tmp_path / "job.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""
            name: resumable
            backend: local
            workdir: src
            setup: test ! -e old.ckpt && echo ok > setup-done
            command: python train.py
            inputs:
              train: s3://{DATA}/cifar/train/
              labels: s3://{DATA}/cifar/labels.txt
            retries: {{max_attempts: 2, on: [interruption]}}
            """
        )
    )
    submitted = cli(stack, "submit", str(spec))
    assert "uploaded to s3://jobplane-local-artifacts/code/" in submitted.stdout
    job = api(stack, "GET", "/jobs?limit=1").json()["jobs"][0]
    job_id = job["job_id"]
    assert job["spec"]["code_uri"].endswith(f"{job['spec']['code_sha256']}.tar.gz")
    assert job["artifacts_uri"] == f"s3://jobplane-local-artifacts/outputs/{job_id}/"

    def checkpoint():
        found = s3.list_objects_v2(Bucket="jobplane-local-artifacts", Prefix=f"checkpoints/{job_id}/epoch")
        if not found.get("KeyCount"):
            return None
        return s3.get_object(Bucket="jobplane-local-artifacts", Key=f"checkpoints/{job_id}/epoch")["Body"].read()

    assert wait_long(lambda: checkpoint() == b"2" and True, timeout=60, what="attempt 1's checkpoint at epoch 2")
    runner = stack["dir"] / "jobs" / f"jp-{job_id}" / "runner.pid"
    os.kill(int(runner.read_text()), signal.SIGTERM)  # the machine goes away under attempt 1

    final = wait_long(
        lambda: (j := api(stack, "GET", f"/jobs/{job_id}").json())["status"] in ("SUCCEEDED", "FAILED") and j,
        timeout=90,
        what="the job to end",
    )
    assert (final["status"], final["attempt"]) == ("SUCCEEDED", 2), final
    history = [(e["from"], e["to"]) for e in api(stack, "GET", f"/jobs/{job_id}/events").json()["events"]]
    assert ("RUNNING", "QUEUED") in history and history[-1] == ("RUNNING", "SUCCEEDED")
    logs = cli(stack, "logs", job_id).stdout
    assert "attempt 2 resumed from epoch 2" in logs and "epoch 1\n" not in logs, logs
    assert checkpoint() == b"4"

    listed = api(stack, "GET", f"/jobs/{job_id}/artifacts").json()
    assert [(a["key"], a["size"]) for a in listed["artifacts"]] == [
        ("metrics/summary.json", len('{"epochs": 4, "resumed_from": 2}')),
        ("model.txt", len("rows=3 labels=3")),
    ]
    table = cli(stack, "artifacts", job_id).stdout
    assert "metrics/summary.json" in table and "model.txt" in table
    got = tmp_path / "got"
    cli(stack, "artifacts", job_id, "--download", str(got))
    assert (got / "model.txt").read_text() == "rows=3 labels=3"
    assert (got / "metrics" / "summary.json").read_text() == '{"epochs": 4, "resumed_from": 2}'

    again = cli(stack, "submit", str(spec))
    assert "is unchanged: nothing uploaded" in again.stdout
