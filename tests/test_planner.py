"""The planner: backend auto follows DESIGN.md's ranking and says why."""

from __future__ import annotations

import pytest

from chalicelib.errors import ValidationError
from chalicelib.jobs.spec import parse_spec
from chalicelib.planner import plan
from tests.factories import make_settings

GPU = {"name": "t", "image": "train:1", "command": ["python", "t.py"], "resources": {"gpus": 1, "gpu_type": "A10G"}}


def test_a_gpu_job_goes_to_sagemaker_first_on_aws(tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="ec2,ecs,aws-batch,sagemaker")
    assert plan(parse_spec(GPU), settings) == (
        "sagemaker",
        "auto: sagemaker, first choice on AWS (managed spot, S3 checkpoints), for 1x A10G GPU",
    )


def test_skipped_backends_are_named_with_the_reason(tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="aws-batch,ecs,ec2", JOBPLANE_ECS_LAUNCH_TYPE="fargate")
    name, why = plan(parse_spec({**GPU, "resources": {**GPU["resources"], "spot": True}}), settings)
    assert name == "ec2"
    assert why == (
        "auto: ec2, ad-hoc EC2 VM (any image, any GPU; stopped automatically), for 1x A10G GPU on spot; "
        "skipped aws-batch: set JOBPLANE_BATCH_SPOT_JOB_QUEUE, or use sagemaker/ec2; "
        "ecs: ECS takes spot capacity from the cluster's capacity providers, not per job; use sagemaker or ec2"
    )


def test_a_zero_capacity_limit_means_unavailable(tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="sagemaker,ec2", JOBPLANE_CAPACITY_LIMITS="sagemaker:A10G=0")
    name, why = plan(parse_spec(GPU), settings)
    assert name == "ec2" and why.endswith("skipped sagemaker: sagemaker:A10G allows 0 here (JOBPLANE_CAPACITY_LIMITS)")


def test_auto_chooses_an_enabled_kubernetes_cluster_and_a_kueue_cluster_ignores_jobplanes_limits(tmp_path):
    limits = {"JOBPLANE_CAPACITY_LIMITS": "kubernetes:A10G=0"}
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="ec2,kubernetes", **limits)
    name, why = plan(parse_spec(GPU), settings)
    assert name == "ec2" and "skipped kubernetes: kubernetes:A10G allows 0 here" in why
    queued = '[{"name": "lab", "local_queue": "team-a"}]'
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="ec2,kubernetes", JOBPLANE_K8S_CLUSTERS=queued, **limits)
    assert plan(parse_spec(GPU), settings) == (
        "kubernetes",
        "auto: kubernetes, batch/v1 Job on the team's cluster (EKS, GKE or kubeconfig; Kueue when configured), "
        "for 1x A10G GPU",
    )


def test_the_local_stack_keeps_auto_jobs_local_and_explicit_backends_are_kept(tmp_path):
    local = make_settings(tmp_path, JOBPLANE_BACKENDS="local,sagemaker")
    cpu = {"name": "t", "image": "train:1", "command": ["python", "t.py"]}
    assert plan(parse_spec(cpu), local)[0] == "local"
    assert plan(parse_spec({**GPU, "backend": "sagemaker"}), local) == (
        "sagemaker",
        "backend 'sagemaker' requested by the spec",
    )
    with pytest.raises(ValidationError) as err:
        plan(parse_spec({**GPU, "backend": "ecs"}), local)
    assert err.value.details == [{"field": "backend", "message": "enabled here: auto, local, sagemaker"}]


def test_nothing_fits_is_a_400_naming_every_refusal(tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="local,ecs", JOBPLANE_ECS_LAUNCH_TYPE="fargate")
    with pytest.raises(ValidationError) as err:
        plan(parse_spec(GPU), settings)
    assert err.value.details[0]["field"] == "backend"
    assert "0 on Fargate" in err.value.details[0]["message"]
