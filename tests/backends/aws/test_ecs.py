"""ECS tasks: task definitions with GPUs, RunTask/DescribeTasks/StopTask on moto, Fargate only without GPUs."""

from __future__ import annotations

import json

import pytest
from botocore.stub import Stubber

from chalicelib.auth import Principal
from chalicelib.backends.aws import staging
from chalicelib.backends.aws.ecs import EcsBackend, family_name
from chalicelib.backends.base import Handle
from chalicelib.errors import CapacityError, UnsupportedError
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.service import JobService
from chalicelib.jobs.spec import parse_spec
from tests.factories import boto, check_aws_request, make_job, make_settings

SPEC = {"image": "train:1", "command": ["python", "train.py"], "resources": {"gpus": 1, "gpu_type": "T4"}}


@pytest.fixture
def ecs(aws_settings):
    client = boto(aws_settings, "ecs")
    client.create_cluster(clusterName=aws_settings.ecs_cluster)
    ec2 = boto(aws_settings, "ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    client.register_container_instance(
        cluster=aws_settings.ecs_cluster, instanceIdentityDocument=json.dumps({"instanceId": instance["InstanceId"]})
    )
    return EcsBackend(aws_settings), client


def test_can_run_describe_and_stop_a_task_on_moto(ecs, aws_settings):
    backend, client = ecs
    job = make_job("ecs", SPEC)
    first = backend.launch(job)
    again = backend.launch(job)
    assert again.native_id == first.native_id and again.native_status == "AlreadyLaunched"
    task = client.describe_tasks(cluster=aws_settings.ecs_cluster, tasks=[first.native_id], include=["TAGS"])["tasks"][
        0
    ]
    assert task["startedBy"] == f"jp-{job.job_id}"
    assert {t["key"]: t["value"] for t in task["tags"]}["jobplane:job-id"] == job.job_id
    definition = client.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    containers = {c["name"]: c for c in definition["containerDefinitions"]}
    assert list(containers) == ["stage-in", "job", "stage-out"]
    assert containers["job"]["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    handle = Handle(job.job_id, f"jp-{job.job_id}", 1, native_id=first.native_id)
    assert backend.describe(handle).status in (JobStatus.LAUNCHING, JobStatus.RUNNING)
    backend.cancel(handle)
    stopped = client.describe_tasks(cluster=aws_settings.ecs_cluster, tasks=[first.native_id])["tasks"][0]
    assert stopped["desiredStatus"] == "STOPPED" and stopped["stoppedReason"] == "cancelled through jobplane"
    assert backend.describe(Handle(job.job_id, f"jp-{job.job_id}", 1)).native_id == first.native_id


STAGED = {
    **SPEC,
    "command": "python train.py",
    "setup": "pip install -r requirements.txt",
    "code_uri": "s3://jobplane-artifacts/code/" + "c" * 64 + ".tar.gz",
    "code_sha256": "c" * 64,
    "inputs": {"train": "s3://data-bucket/cifar/", "labels": "s3://data-bucket/meta/labels.csv"},
    "outputs": "s3://data-bucket/outputs",
}


def test_the_task_stages_code_inputs_outputs_and_checkpoints_as_the_contract_says(aws_settings):
    backend = EcsBackend(aws_settings)
    job = make_job("ecs", STAGED, job_id="e" * 32)
    backend.validate(job.spec)
    definition = backend.task_definition_request(job.spec)
    check_aws_request("ecs", "RegisterTaskDefinition", definition)
    containers = {c["name"]: c for c in definition["containerDefinitions"]}
    stage_in, main, stage_out = containers["stage-in"], containers["job"], containers["stage-out"]
    # The init container downloads, the job waits for its success, the sidecar's exit ends the task.
    assert (stage_in["essential"], main["essential"], stage_out["essential"]) == (False, False, True)
    assert main["dependsOn"] == [{"containerName": "stage-in", "condition": "SUCCESS"}]
    assert stage_out["dependsOn"] == [{"containerName": "stage-in", "condition": "SUCCESS"}]
    assert stage_in["image"] == stage_out["image"] == staging.AWS_CLI_IMAGE
    assert ":" in staging.AWS_CLI_IMAGE.rsplit("/", 1)[-1] and not staging.AWS_CLI_IMAGE.endswith(":latest")
    assert main["entryPoint"] == ["/bin/sh", "-c", staging.WRAPPER, "jobplane"]
    assert stage_in["entryPoint"][2] == staging.STAGE_IN and stage_out["entryPoint"][2] == staging.STAGE_OUT
    # Inputs are read-only to the job.
    assert {m["containerPath"]: m["readOnly"] for m in main["mountPoints"]} == {
        "/jobplane": False,
        "/jobplane-input": True,
    }
    assert {v["name"] for v in definition["volumes"]} == {"jobplane", "jobplane-input"}

    request = backend.run_task_request(job, Handle.of(job), "arn:aws:ecs:us-east-1:1:task-definition/x:1")
    check_aws_request("ecs", "RunTask", request)
    overrides = {o["name"]: o for o in request["overrides"]["containerOverrides"]}
    checkpoint = f"s3://{aws_settings.artifacts_bucket}/checkpoints/{'e' * 32}/"
    assert overrides["stage-in"]["command"] == [
        "/jobplane",
        "/jobplane-input",
        checkpoint,
        STAGED["code_uri"],
        "train",
        "s3://data-bucket/cifar/",
        "labels",
        "s3://data-bucket/meta/labels.csv",
    ]
    assert overrides["stage-out"]["command"] == [
        "/jobplane",
        f"s3://data-bucket/outputs/{'e' * 32}/",
        checkpoint,
        "60",
        "15",
    ]
    assert overrides["job"]["command"] == [
        "/jobplane/code",
        "/jobplane/work",
        "/jobplane/status/exit",
        "1",
        "3",
        "/bin/sh",
        "-c",
        "pip install -r requirements.txt",
        "/bin/sh",
        "-c",
        "python train.py",
    ]
    env = {e["name"]: e["value"] for e in overrides["job"]["environment"]}
    assert {k: v for k, v in env.items() if k.endswith("_DIR")} == {
        "JOBPLANE_INPUT_DIR": "/jobplane-input",
        "JOBPLANE_OUTPUT_DIR": "/jobplane/output",
        "JOBPLANE_CHECKPOINT_DIR": "/jobplane/checkpoints",
    }
    assert "environment" not in overrides["stage-in"]  # the helpers never see the spec's env


def test_a_fargate_task_definition_is_valid_with_its_helpers(tmp_path):
    settings = make_settings(
        tmp_path,
        JOBPLANE_BACKENDS="ecs",
        JOBPLANE_ECS_LAUNCH_TYPE="fargate",
        JOBPLANE_ECS_TASK_ROLE="arn:aws:iam::123456789012:role/task",
        JOBPLANE_ECS_EXECUTION_ROLE="arn:aws:iam::123456789012:role/execution",
    )
    cpu = make_job("ecs", {"image": "train:1", "resources": {"cpus": 2, "memory_gb": 4}})
    definition = EcsBackend(settings).task_definition_request(cpu.spec)
    check_aws_request("ecs", "RegisterTaskDefinition", definition)
    reserved = sum(c["memoryReservation"] for c in definition["containerDefinitions"])
    assert reserved <= int(definition["memory"])  # ECS refuses a definition whose containers reserve more


def test_a_failed_download_or_upload_is_named_and_the_job_exit_code_is_the_job_containers(aws_settings):
    backend = EcsBackend(aws_settings)

    def stopped(**codes):
        return {
            "lastStatus": "STOPPED",
            "stopCode": "EssentialContainerExited",
            "containers": [{"name": name.replace("_", "-"), "exitCode": code} for name, code in codes.items()],
        }

    ok = backend.observe(stopped(stage_in=0, job=0, stage_out=0), "a" * 32, 1)
    failed = backend.observe(stopped(stage_in=0, job=3, stage_out=3), "a" * 32, 1)
    download = backend.observe(stopped(stage_in=1), "a" * 32, 1)
    upload = backend.observe(stopped(stage_in=0, job=0, stage_out=1), "a" * 32, 1)
    assert (ok.status, ok.exit_code) == (JobStatus.SUCCEEDED, 0)
    assert (failed.status, failed.failure_kind, failed.exit_code) == (JobStatus.FAILED, FailureKind.USER_ERROR, 3)
    assert (download.status, download.failure_kind) == (JobStatus.FAILED, FailureKind.USER_ERROR)
    assert download.reason.startswith("staging failed: stage-in exited 1")
    assert (upload.status, upload.failure_kind) == (JobStatus.FAILED, FailureKind.BACKEND_ERROR)
    assert "outputs or checkpoint" in upload.reason


def test_no_room_for_the_gpus_is_a_capacity_error(aws_settings):
    backend = EcsBackend(aws_settings)
    client = boto(aws_settings, "ecs")
    backend.set_client("ecs", client)
    backend.set_client("sts", boto(aws_settings, "sts"))
    job = make_job("ecs", SPEC)
    with Stubber(client) as stub:
        stub.add_response("list_tasks", {"taskArns": []})
        stub.add_response("list_tasks", {"taskArns": []})
        family = family_name("train:1", 1, "EC2", aws_settings.ecs_log_group)
        stub.add_response(
            "list_task_definitions", {"taskDefinitionArns": [f"arn:aws:ecs:us-east-1:1:task-definition/{family}:3"]}
        )
        stub.add_response(
            "run_task",
            {
                "tasks": [],
                "failures": [{"arn": "arn:aws:ecs:us-east-1:1:container-instance/c", "reason": "RESOURCE:GPU"}],
            },
        )
        with pytest.raises(CapacityError) as err:
            backend.launch(job)
    assert err.value.message == "ecs RunTask: RESOURCE:GPU"


def test_a_gpu_job_sent_to_fargate_is_refused_at_submit(tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="ecs", JOBPLANE_ECS_LAUNCH_TYPE="fargate")
    from chalicelib.store.memory import InMemoryJobStore

    service = JobService(InMemoryJobStore(), settings)
    with pytest.raises(UnsupportedError) as err:
        service.submit(Principal("alice"), parse_spec({"name": "gpu", "backend": "ecs", **SPEC}))
    assert err.value.STATUS_CODE == 400
    assert err.value.details == [
        {"field": "resources.gpus", "message": "0 on Fargate; use sagemaker, aws-batch or ec2 for GPUs"}
    ]
    # A CPU-only job is fine on Fargate, sized to a Fargate CPU/memory pair.
    cpu = make_job("ecs", {"image": "train:1", "resources": {"cpus": 2, "memory_gb": 4}})
    EcsBackend(settings).validate(cpu.spec)
    request = EcsBackend(settings).run_task_request(cpu, Handle.of(cpu), "arn:def")
    assert (request["launchType"], request["overrides"]["cpu"], request["overrides"]["memory"]) == (
        "FARGATE",
        "2048",
        "4096",
    )


@pytest.mark.parametrize(
    ("task", "status", "kind"),
    [
        ({"lastStatus": "PROVISIONING"}, JobStatus.LAUNCHING, None),
        ({"lastStatus": "RUNNING"}, JobStatus.RUNNING, None),
        (
            {
                "lastStatus": "STOPPED",
                "stopCode": "EssentialContainerExited",
                "containers": [{"name": "job", "exitCode": 0}],
            },
            JobStatus.SUCCEEDED,
            None,
        ),
        (
            {
                "lastStatus": "STOPPED",
                "stopCode": "EssentialContainerExited",
                "containers": [{"name": "job", "exitCode": 2}],
            },
            JobStatus.FAILED,
            FailureKind.USER_ERROR,
        ),
        ({"lastStatus": "STOPPED", "stopCode": "SpotInterruption"}, JobStatus.FAILED, FailureKind.INTERRUPTED),
        ({"lastStatus": "STOPPED", "stopCode": "UserInitiated"}, JobStatus.FAILED, FailureKind.BACKEND_ERROR),
    ],
)
def test_tasks_map_to_observations(aws_settings, task, status, kind):
    seen = EcsBackend(aws_settings).observe(task, "a" * 32, 1)
    assert (seen.status, seen.failure_kind) == (status, kind)


def test_reconcile_stops_a_task_past_max_runtime_plus_grace_with_a_reason(ecs, aws_settings, memory_store):
    from datetime import timedelta

    from chalicelib.jobs.model import utcnow
    from chalicelib.reaper import reconcile
    from tests.factories import make_history

    backend, client = ecs
    service = JobService(memory_store, aws_settings, backend_factory=lambda *_: backend)
    now = utcnow()
    runs = {}
    for name, minutes in (("overdue", 76), ("in-time", 74)):  # max_runtime 60 plus the 15-minute grace
        job = make_job("ecs", {**SPEC, "name": name, "max_runtime_minutes": 60})
        launched = backend.launch(job)
        job = job.with_changes(
            status=JobStatus.RUNNING,
            native_name=f"jp-{job.job_id}",
            native_id=launched.native_id,
            started_at=now - timedelta(minutes=minutes),
            updated_at=now,
        )
        memory_store.create_job(job, make_history(job))
        runs[name] = job
    assert backend.describe(Handle.of(runs["overdue"])).status is JobStatus.RUNNING
    decisions = {d.job_id: (d.action.value, d.reason) for d in reconcile(service)}
    assert decisions[runs["overdue"].job_id] == (
        "stop_overrun",
        "running 76 min, past max_runtime_minutes (60) plus 15 min grace",
    )
    assert decisions[runs["in-time"].job_id][0] == "none"
    after = memory_store.get_job(runs["overdue"].job_id)
    assert (after.status, after.failure_kind) == (JobStatus.FAILED, FailureKind.TIMEOUT)
    assert after.failure_reason.startswith("stopped by jobplane reconcile: running 76 min")
    tasks = client.describe_tasks(
        cluster=aws_settings.ecs_cluster, tasks=[runs["overdue"].native_id, runs["in-time"].native_id]
    )["tasks"]
    stopped = {t["taskArn"]: (t["desiredStatus"], t.get("stoppedReason")) for t in tasks}
    assert stopped[runs["overdue"].native_id] == ("STOPPED", after.failure_reason)
    assert stopped[runs["in-time"].native_id][0] == "RUNNING"
