"""AWS Batch: job definitions per image, SubmitJob, describe, TerminateJob, on moto."""

from __future__ import annotations

import time

import pytest

from chalicelib.backends.aws.batch import BatchBackend, definition_name
from chalicelib.backends.base import Handle
from chalicelib.errors import UnsupportedError
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.spec_types import JobSpec
from tests.factories import boto, make_job

SPEC = {
    "image": "train:1",
    "command": ["python", "train.py"],
    "env": {"LR": "0.1"},
    "resources": {"gpus": 2, "gpu_type": "A10G", "cpus": 8, "memory_gb": 32},
    "max_runtime_minutes": 90,
}


@pytest.fixture
def batch(aws_settings):
    client = boto(aws_settings, "batch")
    role = boto(aws_settings, "iam").create_role(RoleName=f"{aws_settings.stage}-batch", AssumeRolePolicyDocument="{}")
    env = client.create_compute_environment(
        computeEnvironmentName=f"{aws_settings.stage}-ce",
        type="UNMANAGED",
        state="ENABLED",
        serviceRole=role["Role"]["Arn"],
    )["computeEnvironmentArn"]
    for queue in (aws_settings.batch_job_queue, aws_settings.batch_gpu_job_queue):
        client.create_job_queue(
            jobQueueName=queue,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env}],
        )
    return BatchBackend(aws_settings), client


def test_submit_request_carries_gpus_timeout_env_and_tags(aws_settings):
    backend = BatchBackend(aws_settings)
    job = make_job("aws-batch", SPEC, job_id="b" * 32)
    request = backend.submit_request(job, Handle.of(job), "arn:def")
    assert request["jobName"] == "jp-" + "b" * 32
    assert request["jobQueue"] == aws_settings.batch_gpu_job_queue
    assert request["containerOverrides"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "8"},
        {"type": "MEMORY", "value": "32768"},
        {"type": "GPU", "value": "2"},
    ]
    assert request["containerOverrides"]["command"] == ["python", "train.py"]
    assert {"name": "LR", "value": "0.1"} in request["containerOverrides"]["environment"]
    assert request["timeout"] == {"attemptDurationSeconds": 5400}
    assert request["tags"]["jobplane:job-id"] == "b" * 32 and request["propagateTags"] is True


def test_spot_needs_a_spot_queue(aws_settings):
    with pytest.raises(UnsupportedError) as err:
        BatchBackend(aws_settings).validate(
            JobSpec.from_dict({**make_job("aws-batch", SPEC).spec.to_dict(), "resources": {"spot": True}})
        )
    assert err.value.details[0]["field"] == "resources.spot"


def test_can_launch_describe_and_cancel_on_moto(batch, aws_settings):
    backend, client = batch
    job = make_job("aws-batch", SPEC)
    other = make_job("aws-batch", {**SPEC, "name": "other"})
    first = backend.launch(job)
    again = backend.launch(job)
    backend.launch(other)
    assert again.native_id == first.native_id and again.native_status == "AlreadyLaunched"
    definitions = client.describe_job_definitions(jobDefinitionName=definition_name("train:1"))["jobDefinitions"]
    assert len(definitions) == 1  # one definition per image, shared by both jobs
    assert definitions[0]["containerProperties"]["image"] == "train:1"
    handle = Handle(job.job_id, f"jp-{job.job_id}", 1, native_id=first.native_id)
    deadline = time.monotonic() + 10
    seen = backend.describe(handle)
    while not seen.status.terminal and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = backend.describe(handle)
    assert (seen.status, seen.native_status, seen.job_id) == (JobStatus.SUCCEEDED, "SUCCEEDED", job.job_id)
    # A lost launch is found again by its native name.
    by_name = backend.describe(Handle(job.job_id, f"jp-{job.job_id}", 1))
    assert by_name.native_id == first.native_id
    backend.cancel(handle)  # TerminateJob on an ended job is accepted and changes nothing
    assert backend.describe(Handle("c" * 32, "jp-" + "c" * 32, 1)) is None


@pytest.mark.parametrize(
    ("detail", "status", "kind"),
    [
        ({"status": "RUNNABLE"}, JobStatus.LAUNCHING, None),
        ({"status": "RUNNING", "startedAt": 1641944300058}, JobStatus.RUNNING, None),
        ({"status": "SUCCEEDED", "container": {"exitCode": 0}}, JobStatus.SUCCEEDED, None),
        ({"status": "FAILED", "container": {"exitCode": 3}}, JobStatus.FAILED, FailureKind.USER_ERROR),
        (
            {"status": "FAILED", "statusReason": "Job attempt duration exceeded timeout"},
            JobStatus.FAILED,
            FailureKind.TIMEOUT,
        ),
        (
            {"status": "FAILED", "statusReason": "Host EC2 (instance i-0abc) terminated."},
            JobStatus.FAILED,
            FailureKind.INTERRUPTED,
        ),
    ],
)
def test_job_details_map_to_observations(aws_settings, detail, status, kind):
    seen = BatchBackend(aws_settings).observe(detail, "a" * 32, 1)
    assert (seen.status, seen.failure_kind) == (status, kind)
