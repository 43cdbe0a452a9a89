"""AWS Batch: job definitions per image, SubmitJob, describe, TerminateJob, on moto."""

from __future__ import annotations

import time

import pytest

from chalicelib.backends.aws import staging
from chalicelib.backends.aws.batch import BatchBackend, definition_name
from chalicelib.backends.base import Handle
from chalicelib.errors import UnsupportedError
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.spec_types import JobSpec
from tests.factories import boto, check_aws_request, make_job

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
    boto(aws_settings, "s3").create_bucket(Bucket=aws_settings.artifacts_bucket)
    return BatchBackend(aws_settings), client


def _overrides(request):
    return {c["name"]: c for c in request["ecsPropertiesOverride"]["taskProperties"][0]["containers"]}


def test_submit_request_carries_gpus_timeout_env_and_tags(aws_settings):
    backend = BatchBackend(aws_settings)
    job = make_job("aws-batch", SPEC, job_id="b" * 32)
    request = backend.submit_request(job, Handle.of(job), "arn:def")
    check_aws_request("batch", "SubmitJob", request)
    assert request["jobName"] == "jp-" + "b" * 32
    assert request["jobQueue"] == aws_settings.batch_gpu_job_queue
    main = _overrides(request)["job"]
    assert main["resourceRequirements"] == [
        {"type": "VCPU", "value": "8"},
        {"type": "MEMORY", "value": "32768"},
        {"type": "GPU", "value": "2"},
    ]
    # The job's container runs jobplane's wrapper; the command is its data.
    assert main["command"][:4] == ["/bin/sh", "-c", staging.WRAPPER, "jobplane"]
    assert main["command"][4:] == ["", "/jobplane/work", "/jobplane/status/exit", "0", "python", "train.py"]
    assert {"name": "LR", "value": "0.1"} in main["environment"]
    assert request["timeout"] == {"attemptDurationSeconds": 5400}
    assert request["tags"]["jobplane:job-id"] == "b" * 32 and request["propagateTags"] is True


STAGED = {
    **SPEC,
    "setup": [["pip", "install", "-r", "requirements.txt"]],
    "code_uri": "s3://jobplane-artifacts/code/" + "c" * 64 + ".tar.gz",
    "code_sha256": "c" * 64,
    "inputs": {"train": "s3://data-bucket/cifar/", "labels": "s3://data-bucket/meta/labels.csv"},
    "checkpoint_uri": "s3://data-bucket/ckpt/run1",
}


def test_the_job_stages_code_inputs_outputs_and_checkpoints_as_the_contract_says(aws_settings):
    backend = BatchBackend(aws_settings)
    job = make_job("aws-batch", STAGED, job_id="f" * 32)
    backend.validate(job.spec)
    definition = backend.job_definition_request(job.spec)
    check_aws_request("batch", "RegisterJobDefinition", definition)
    task = definition["ecsProperties"]["taskProperties"][0]
    containers = {c["name"]: c for c in task["containers"]}
    assert list(containers) == ["stage-tools", "stage-in", "job", "stage-out"]
    assert containers["stage-in"]["dependsOn"] == [{"containerName": "stage-tools", "condition": "SUCCESS"}]
    # The job and the sidecar start together once everything is downloaded.
    for name in ("job", "stage-out"):
        assert containers[name]["dependsOn"] == [{"containerName": "stage-in", "condition": "SUCCESS"}]
    assert [n for n, c in containers.items() if c["essential"]] == ["stage-out"]
    assert {c["image"] for n, c in containers.items() if n != "job"} == {staging.AWS_CLI_IMAGE}
    assert all(
        c["environment"] == [{"name": "HOME", "value": "/jobplane/home"}] for n, c in containers.items() if n != "job"
    )
    assert {m["containerPath"]: m["readOnly"] for m in containers["job"]["mountPoints"]} == {
        "/jobplane": False,
        "/jobplane-input": True,
    }
    assert task["taskRoleArn"].endswith(f"role/jobplane-{aws_settings.stage}-batch-job")

    request = backend.submit_request(job, Handle.of(job), "arn:def")
    check_aws_request("batch", "SubmitJob", request)
    commands = {name: c.get("command") for name, c in _overrides(request).items()}
    bucket = aws_settings.artifacts_bucket
    assert commands["stage-tools"] == [
        "s3",
        "cp",
        f"s3://{bucket}/{staging.cli_aliases_key()}",
        "/jobplane/home/.aws/cli/alias",
        "--only-show-errors",
    ]
    assert commands["stage-in"] == [
        "jobplane-stage-in",
        "/jobplane",
        "/jobplane-input",
        "s3://data-bucket/ckpt/run1/",
        STAGED["code_uri"],
        "train",
        "s3://data-bucket/cifar/",
        "labels",
        "s3://data-bucket/meta/labels.csv",
    ]
    assert commands["stage-out"] == [
        "jobplane-stage-out",
        "/jobplane",
        f"s3://{bucket}/outputs/{'f' * 32}/",
        "s3://data-bucket/ckpt/run1/",
        "60",
        "15",
    ]
    assert commands["job"][4:] == [
        "/jobplane/code",
        "/jobplane/work",
        "/jobplane/status/exit",
        "1",
        "4",
        "pip",
        "install",
        "-r",
        "requirements.txt",
        "python",
        "train.py",
    ]


def test_inputs_are_arguments_of_one_helper_so_their_number_is_not_limited_by_batchs_ten_containers(aws_settings):
    many = make_job("aws-batch", {**STAGED, "inputs": {f"i{n}": f"s3://data-bucket/x{n}/" for n in range(12)}})
    backend = BatchBackend(aws_settings)
    backend.validate(many.spec)
    request = backend.submit_request(many, Handle.of(many), "arn:def")
    assert len(_overrides(request)) == 4
    assert _overrides(request)["stage-in"]["command"][5:] == [
        a for n in range(12) for a in (f"i{n}", f"s3://data-bucket/x{n}/")
    ]


@pytest.mark.parametrize(
    ("containers", "status", "kind"),
    [
        ({"stage-tools": 0, "stage-in": 0, "job": 0, "stage-out": 0}, JobStatus.SUCCEEDED, None),
        ({"stage-tools": 0, "stage-in": 0, "job": 3, "stage-out": 3}, JobStatus.FAILED, "user"),
        ({"stage-tools": 0, "stage-in": 1}, JobStatus.FAILED, "user"),
        ({"stage-tools": 0, "stage-in": 0, "job": 0, "stage-out": 1}, JobStatus.FAILED, "backend"),
    ],
)
def test_the_exit_code_is_the_job_containers_and_a_failed_helper_is_named(aws_settings, containers, status, kind):
    detail = {
        "status": "SUCCEEDED" if all(v == 0 for v in containers.values()) else "FAILED",
        "container": {},
        "ecsProperties": {
            "taskProperties": [{"containers": [{"name": n, "exitCode": c} for n, c in containers.items()]}]
        },
    }
    seen = BatchBackend(aws_settings).observe(detail, "a" * 32, 1)
    kinds = {None: None, "user": FailureKind.USER_ERROR, "backend": FailureKind.BACKEND_ERROR}
    assert (seen.status, seen.failure_kind, seen.exit_code) == (status, kinds[kind], containers.get("job"))
    # Batch's own status may count only the essential container: jobplane reads the job's.
    seen = BatchBackend(aws_settings).observe({**detail, "status": "SUCCEEDED"}, "a" * 32, 1)
    assert seen.status is status


@pytest.mark.parametrize("status", ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING"])
def test_only_a_runnable_job_waits_for_capacity(aws_settings, status):
    # RUNNABLE: in the queue until the compute environment has an instance for it (the other states do not wait)
    seen = BatchBackend(aws_settings).observe({"status": status, "container": {}}, "a" * 32, 1)
    assert seen.waiting_for_capacity is (status == "RUNNABLE")


def test_spot_needs_a_spot_queue(aws_settings):
    with pytest.raises(UnsupportedError) as err:
        BatchBackend(aws_settings).validate(
            JobSpec.from_dict({**make_job("aws-batch", SPEC).spec.to_dict(), "resources": {"spot": True}})
        )
    assert err.value.details[0]["field"] == "resources.spot"


def test_can_launch_describe_and_cancel_on_moto(batch, aws_settings, caplog):
    backend, client = batch
    job = make_job("aws-batch", SPEC)
    other = make_job("aws-batch", {**SPEC, "name": "other"})
    first = backend.launch(job)
    again = backend.launch(job)
    backend.launch(other)
    assert again.native_id == first.native_id and again.native_status == "AlreadyLaunched"
    # The helpers' alias file, put once in the artifact store where stage-tools downloads it.
    aliases = boto(aws_settings, "s3").get_object(Bucket=aws_settings.artifacts_bucket, Key=staging.cli_aliases_key())
    assert aliases["Body"].read().decode() == staging.cli_aliases()
    definitions = client.describe_job_definitions(jobDefinitionName=definition_name("train:1"))["jobDefinitions"]
    assert len(definitions) == 1  # one definition per image (and staging shape), shared by both jobs
    # moto knows no ecsProperties: there the definition is the job's container alone (with jobplane's wrapper).
    assert definitions[0]["containerProperties"]["command"][:3] == ["/bin/sh", "-c", staging.WRAPPER]
    assert "registering the job's container alone, without staging" in caplog.text
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
