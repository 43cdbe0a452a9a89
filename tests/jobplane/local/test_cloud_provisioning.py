"""The local stack's cloud provisioning: what each AWS backend needs, made in moto, and idempotent."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from chalicelib.backends import Cloud, descriptor, names
from jobplane.local.cloud import COMPUTE_ENVIRONMENT, LAUNCH_TEMPLATE, provision, unsupported_backends
from tests.factories import ROOT, boto, make_job, make_settings

PHASE = Path(__file__).with_name("_provision_phase.py")
AWS = [n for n in names() if descriptor(n).cloud is Cloud.AWS]


@pytest.fixture
def cloud_settings(tmp_path, moto_endpoint):
    # A stage of its own: the session's moto is shared, and names derive from the stage.
    stage = f"p{uuid.uuid4().hex[:8]}"
    return make_settings(tmp_path, moto_endpoint, JOBPLANE_STAGE=stage, JOBPLANE_BACKENDS=",".join(["local", *AWS]))


def test_every_aws_backend_gets_its_roles_queues_cluster_and_launch_settings(cloud_settings, moto_endpoint):
    done = provision(cloud_settings, moto_endpoint, "us-east-1")
    s = cloud_settings
    iam = boto(s, "iam")
    for name in AWS:
        from chalicelib.backends import get_backend

        for role, service in get_backend(name, s).roles():
            trust = iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
            assert trust["Statement"][0]["Principal"]["Service"] == service
    profile = iam.get_instance_profile(InstanceProfileName=s.ec2_instance_profile)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [s.ec2_instance_profile]
    assert s.artifacts_bucket in {b["Name"] for b in boto(s, "s3").list_buckets()["Buckets"]}
    batch = boto(s, "batch")
    queues = batch.describe_job_queues(jobQueues=[s.batch_job_queue, s.batch_gpu_job_queue])["jobQueues"]
    assert sorted(q["jobQueueName"] for q in queues) == sorted([s.batch_job_queue, s.batch_gpu_job_queue])
    assert all(q["state"] == "ENABLED" for q in queues)
    ecs = boto(s, "ecs")
    assert len(ecs.list_container_instances(cluster=s.ecs_cluster)["containerInstanceArns"]) == 1
    assert done.env["JOBPLANE_EC2_LAUNCH_TEMPLATE"] == LAUNCH_TEMPLATE
    subnet = boto(s, "ec2").describe_subnets(SubnetIds=[done.env["JOBPLANE_EC2_SUBNET"]])["Subnets"][0]
    assert subnet["DefaultForAz"]


def test_a_second_run_finds_everything_and_creates_nothing(cloud_settings, moto_endpoint):
    first = provision(cloud_settings, moto_endpoint, "us-east-1")
    again = provision(cloud_settings, moto_endpoint, "us-east-1")
    assert first.created and again.created == []
    assert again.env == first.env
    s = cloud_settings
    assert len(boto(s, "ecs").list_container_instances(cluster=s.ecs_cluster)["containerInstanceArns"]) == 1
    envs = boto(s, "batch").describe_compute_environments(computeEnvironments=[COMPUTE_ENVIRONMENT])
    assert len(envs["computeEnvironments"]) == 1


@pytest.mark.slow  # two processes that each import and start the emulator
def test_a_restarted_stack_makes_its_resources_again_and_keeps_the_bucket(tmp_path):
    """Only DynamoDB and S3 outlive the stack's process: each life provisions the rest again, on the same names."""
    state = tmp_path / "aws"

    def life(mode: str) -> dict:
        result = subprocess.run(
            [sys.executable, str(PHASE), str(state), str(ROOT), mode], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.splitlines()[-1])

    first, again = life("write"), life("read")
    bucket = f"s3://{first['bucket']}"
    assert bucket in first["created"] and bucket not in again["created"]  # the journal brought it back
    assert again["kept"] == "x"
    assert "role jobplane-local-ec2-job" in again["created"]  # IAM is not journaled: made again
    assert "job queue jobplane-local" in again["created"]
    assert again["env"]["JOBPLANE_EC2_LAUNCH_TEMPLATE"] == first["env"]["JOBPLANE_EC2_LAUNCH_TEMPLATE"]


def test_the_provisioned_settings_launch_each_backend_on_moto(cloud_settings, moto_endpoint):
    from chalicelib.backends import get_backend
    from chalicelib.config import Settings

    done = provision(cloud_settings, moto_endpoint, "us-east-1")
    env = {**cloud_settings.to_env(), **done.env}
    settings = Settings.from_env(env)
    for name in AWS:
        job = make_job(name)
        launched = get_backend(name, settings).launch(job)
        assert launched.native_id, name


def test_backends_of_other_clouds_are_named_as_unsupported():
    others = [n for n in names() if descriptor(n).cloud not in (Cloud.AWS, Cloud.LOCAL, Cloud.KUBERNETES)]
    assert unsupported_backends(names()) == others
    assert unsupported_backends(["local", *AWS]) == []
    assert unsupported_backends(["local", "kubernetes"]) == []  # KUBECONFIG's cluster, driven as it is
