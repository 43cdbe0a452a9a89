"""End to end: issue 11's contract on `ec2` in the local stack. The spec of test_local_contract (workdir,
setup, two named inputs, a checkpoint; image-less, as there is no Docker here) runs as a fake VM's real user
data; attempt 1's machine shuts down under it as a spot reclaim shuts one down, and attempt 2, on a new
instance, resumes from the checkpoint attempt 1 uploaded."""

from __future__ import annotations

import json
import os
import signal
import time

import boto3
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

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _kill_vms(directory) -> None:
    """Fake VMs outlive their stack by design; the test leaves none behind."""
    for record in directory.glob("vms/i-*/vm.json"):
        pid = json.loads(record.read_text()).get("pid")
        if pid:
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="module")
def ec2_stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ec2") / "state"
    running = start_stack(directory, args=("--backends", "local,ec2"), JOBPLANE_EC2_CHECKPOINT_SECONDS="1")
    yield running
    stop_stack(running)
    _kill_vms(directory)


def _fetch_job(stack, job_id: str) -> dict:
    return api(stack, "GET", f"/jobs/{job_id}").json()


def test_an_ec2_job_with_inputs_resumes_on_a_new_instance_after_a_spot_shutdown(ec2_stack, tmp_path):
    stack = ec2_stack
    began = time.monotonic()
    spec = contract_job(stack, tmp_path, "ec2")
    submitted = cli(stack, "submit", str(spec))
    assert "uploaded to s3://jobplane-local-artifacts/code/" in submitted.stdout
    job_id = api(stack, "GET", "/jobs?limit=1").json()["jobs"][0]["job_id"]
    assert _fetch_job(stack, job_id)["artifacts_uri"] == f"s3://jobplane-local-artifacts/outputs/{job_id}/"

    # Attempt 1 writes its checkpoint at epoch 2 and sleeps; the user data uploads it within a second.
    assert wait_long(
        lambda: contract_checkpoint(stack, job_id) == b"2", timeout=120, what="attempt 1's checkpoint at epoch 2"
    )
    first = _fetch_job(stack, job_id)
    assert (first["status"], first["attempt"]) == ("RUNNING", 1), first
    vm = stack["dir"] / "vms" / first["native_id"]
    record = json.loads((vm / "vm.json").read_text())
    # EC2 reclaims a spot instance by shutting its OS down: every process of the machine gets TERM.
    checkpointed = time.monotonic()
    os.killpg(int(record["pid"]), signal.SIGTERM)

    retried = wait_long(lambda: (j := _fetch_job(stack, job_id))["attempt"] == 2 and j, timeout=60, what="attempt 2")
    interrupted = time.monotonic()
    history = api(stack, "GET", f"/jobs/{job_id}/events").json()["events"]
    back = next(e for e in history if (e["from"], e["to"]) == ("RUNNING", "QUEUED"))
    assert "attempt 1 interrupted: the machine was shut down under the job" in back["reason"], back
    # Attempt 1's end as EC2 shows it: its report says INTERRUPTED, and its instance is terminated.
    env = stack["state"]["env"]
    report_key = f"jobplane/{env['JOBPLANE_STAGE']}/jobs/{job_id}/jp-{job_id}/status.json"
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=stack["state"]["aws_endpoint"])
    report = json.loads(s3.get_object(Bucket=env["JOBPLANE_ARTIFACTS_BUCKET"], Key=report_key)["Body"].read())
    assert (report["state"], report["attempt"]) == ("INTERRUPTED", 1), report
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=stack["state"]["aws_endpoint"])
    described = ec2.describe_instances(InstanceIds=[first["native_id"]])["Reservations"][0]["Instances"][0]
    assert described["State"]["Name"] == "terminated"

    final = wait_long(
        lambda: (j := _fetch_job(stack, job_id))["status"] in ("SUCCEEDED", "FAILED") and j,
        timeout=180,
        what="attempt 2 to end",
    )
    ended = time.monotonic()
    assert (final["status"], final["attempt"]) == ("SUCCEEDED", 2), final
    assert final["native_id"] != first["native_id"] and retried["native_id"] in (None, final["native_id"])
    logs = cli(stack, "logs", job_id).stdout
    assert "attempt 2 resumed from epoch 2" in logs and "epoch 1\n" not in logs, logs
    assert contract_checkpoint(stack, job_id) == b"4"
    check_contract_artifacts(stack, job_id, tmp_path)
    print(
        f"ec2 contract: submit to checkpoint {checkpointed - began:.1f}s, shutdown to attempt 2 queued "
        f"{interrupted - checkpointed:.1f}s, to SUCCEEDED {ended - interrupted:.1f}s, total {ended - began:.1f}s"
    )
