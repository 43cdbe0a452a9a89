"""End to end: a spec with workdir, setup, two named inputs and checkpoints on `jobplane local up`, interrupted
once and resumed from its checkpoint, its artifacts listed and downloaded through the CLI."""

from __future__ import annotations

import os
import signal

import pytest

from tests.factories import (
    check_contract_artifacts,
    contract_checkpoint,
    contract_job,
    start_stack,
    stop_stack,
    wait_long,
)
from tests.factories import stack_api as api
from tests.factories import stack_cli as cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def contract_stack(tmp_path_factory):
    running = start_stack(tmp_path_factory.mktemp("stack"), sigint_ignored=True, JOBPLANE_LOCAL_CHECKPOINT_SECONDS="1")
    yield running
    stop_stack(running)


def test_a_workdir_job_with_inputs_resumes_from_its_checkpoint_and_its_artifacts_download(contract_stack, tmp_path):
    stack = contract_stack
    spec = contract_job(stack, tmp_path, "local")
    submitted = cli(stack, "submit", str(spec))
    assert "uploaded to s3://jobplane-local-artifacts/code/" in submitted.stdout
    job = api(stack, "GET", "/jobs?limit=1").json()["jobs"][0]
    job_id = job["job_id"]
    assert job["spec"]["code_uri"].endswith(f"{job['spec']['code_sha256']}.tar.gz")
    assert job["artifacts_uri"] == f"s3://jobplane-local-artifacts/outputs/{job_id}/"

    assert wait_long(
        lambda: contract_checkpoint(stack, job_id) == b"2", timeout=60, what="attempt 1's checkpoint at epoch 2"
    )
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
    assert contract_checkpoint(stack, job_id) == b"4"
    check_contract_artifacts(stack, job_id, tmp_path)

    again = cli(stack, "submit", str(spec))
    assert "is unchanged: nothing uploaded" in again.stdout
