"""The checked-in IAM policies grant exactly what the core and the AWS backends declare, nothing more."""

from __future__ import annotations

import json

import pytest

from chalicelib.backends import backend_class
from chalicelib.backends.aws.ec2_devvm import Ec2DevVmProvider
from chalicelib.backends.policy import CORE_ACTIONS, declared_actions, render, stage_settings
from chalicelib.endpoints.backends.sagemaker import SageMakerEndpointBackend
from tests.factories import ROOT

ENDPOINT_S3 = ("SagemakerEndpointsModels",)


def _policy(stage: str) -> dict:
    return json.loads((ROOT / ".chalice" / f"policy-{stage}.json").read_text())


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_checked_in_policy_is_the_generated_one(stage):
    text = (ROOT / ".chalice" / f"policy-{stage}.json").read_text()
    assert text == render(stage, str(ROOT / ".chalice" / "config.json")), (
        f"regenerate: python -m chalicelib.backends.policy {stage} > .chalice/policy-{stage}.json"
    )


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_policy_grants_exactly_the_union_of_declared_actions(stage):
    settings = stage_settings(stage, str(ROOT / ".chalice" / "config.json"))
    granted = {a for s in _policy(stage)["Statement"] for a in s["Action"]}
    expected = set(CORE_ACTIONS) | {"iam:PassRole", "ssm:GetParameter"}  # the Slack secrets are SSM parameters
    for name in ("sagemaker", "aws-batch", "ecs", "ec2"):
        assert name in settings.enabled_backends
        expected |= set(backend_class(name).iam_actions)
    expected |= set(Ec2DevVmProvider.iam_actions)  # dev VMs ride on the ec2 backend
    expected |= set(SageMakerEndpointBackend.iam_actions)  # endpoints ride on the sagemaker backend
    assert granted == expected == declared_actions(settings)
    assert not any("*" in a for a in granted)


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_pass_role_is_limited_to_the_configured_roles(stage):
    [statement] = [s for s in _policy(stage)["Statement"] if "iam:PassRole" in s["Action"]]
    assert statement["Action"] == ["iam:PassRole"]
    assert statement["Resource"] == [
        f"arn:aws:iam::*:role/jobplane-{stage}-batch-job",
        f"arn:aws:iam::*:role/jobplane-{stage}-ec2-job",
        f"arn:aws:iam::*:role/jobplane-{stage}-ecs-execution",
        f"arn:aws:iam::*:role/jobplane-{stage}-ecs-task",
        f"arn:aws:iam::*:role/jobplane-{stage}-sagemaker",
    ]
    assert statement["Condition"]["StringEquals"]["iam:PassedToService"] == [
        "ec2.amazonaws.com",
        "ecs-tasks.amazonaws.com",
        "sagemaker.amazonaws.com",
    ]
    s3 = [s for s in _policy(stage)["Statement"] if any(a.startswith("s3:") for a in s["Action"])]
    bucket = f"arn:aws:s3:::jobplane-{stage}-artifacts"
    assert [(x["Action"], x["Resource"]) for x in s3 if x["Sid"] not in ("Ec2Artifacts",) + ENDPOINT_S3] == [
        (["s3:PutObject"], f"{bucket}/code/*"),
        (["s3:GetObject"], f"{bucket}/outputs/*"),
        (["s3:ListBucket"], bucket),
    ]
    [listing] = [x for x in s3 if x["Sid"] == "CodeAndArtifactListing"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["code/*", "outputs/*"]}}
    [vm_status] = [x for x in s3 if x["Sid"] == "Ec2Artifacts"]
    assert vm_status["Resource"] == f"{bucket}/jobplane/{stage}/*"


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_endpoints_reach_only_their_own_resources_and_prefixes(stage):
    statements = {s["Sid"]: s for s in _policy(stage)["Statement"]}
    sagemaker = statements["SagemakerEndpoints"]
    assert "sagemaker:UpdateEndpoint" in sagemaker["Action"] and "sagemaker:InvokeEndpoint" in sagemaker["Action"]
    assert sagemaker["Resource"] == [
        "arn:aws:sagemaker:*:*:endpoint/jpe-*",
        "arn:aws:sagemaker:*:*:endpoint-config/jpe-*",
        "arn:aws:sagemaker:*:*:model/jpe-*",
    ]
    assert statements["SagemakerEndpointsMetrics"]["Action"] == [
        "cloudwatch:DescribeAlarms",
        "cloudwatch:GetMetricData",
    ]
    # Autoscaling: alarm writes only on target tracking's alarms of jpe-* endpoints, the service-linked role
    # only for Application Auto Scaling's SageMaker service.
    assert statements["SagemakerEndpointsAlarms"] == {
        "Sid": "SagemakerEndpointsAlarms",
        "Effect": "Allow",
        "Action": ["cloudwatch:DeleteAlarms", "cloudwatch:PutMetricAlarm"],
        "Resource": ["arn:aws:cloudwatch:*:*:alarm:TargetTracking-endpoint/jpe-*"],
    }
    assert statements["SagemakerEndpointsScaling"]["Action"] == [
        "application-autoscaling:DeregisterScalableTarget",
        "application-autoscaling:PutScalingPolicy",
        "application-autoscaling:RegisterScalableTarget",
    ]
    role = statements["SagemakerEndpointsScalingRole"]
    assert role["Resource"] == [
        "arn:aws:iam::*:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
        "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
    ]
    assert role["Condition"] == {
        "StringLike": {"iam:AWSServiceName": ["sagemaker.application-autoscaling.amazonaws.com"]}
    }
    bucket = f"arn:aws:s3:::jobplane-{stage}-artifacts"
    assert statements["SagemakerEndpointsModels"]["Resource"] == [f"{bucket}/outputs/*", f"{bucket}/code/*"]
    # The package goes under code/ (CodeUploads), which the SageMaker role reads as it reads packed workdirs.
    assert statements["CodeUploads"]["Resource"] == f"{bucket}/code/*"
