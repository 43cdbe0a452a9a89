"""ECS tasks: task definitions with GPUs, RunTask/DescribeTasks/StopTask on moto, Fargate only without GPUs."""

from __future__ import annotations

import json

import pytest
from botocore.stub import Stubber

from chalicelib.auth import Principal
from chalicelib.backends.aws.ecs import EcsBackend, family_name
from chalicelib.backends.base import Handle
from chalicelib.errors import CapacityError, UnsupportedError
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.service import JobService
from chalicelib.jobs.spec import parse_spec
from tests.factories import boto, make_job, make_settings

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
    assert definition["containerDefinitions"][0]["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    handle = Handle(job.job_id, f"jp-{job.job_id}", 1, native_id=first.native_id)
    assert backend.describe(handle).status in (JobStatus.LAUNCHING, JobStatus.RUNNING)
    backend.cancel(handle)
    stopped = client.describe_tasks(cluster=aws_settings.ecs_cluster, tasks=[first.native_id])["tasks"][0]
    assert stopped["desiredStatus"] == "STOPPED" and stopped["stoppedReason"] == "cancelled through jobplane"
    assert backend.describe(Handle(job.job_id, f"jp-{job.job_id}", 1)).native_id == first.native_id


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
