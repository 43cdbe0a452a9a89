"""`submit --dry-run`'s provider requests: each a valid request by the AWS service model, and none of them sent."""

from __future__ import annotations

import uuid

import pytest

from chalicelib.backends import get_backend
from tests.backends.harnesses import record_calls
from tests.factories import check_aws_request, make_job, make_settings

SPEC = {
    "name": "planned",
    "image": "train:1",
    "command": ["python", "train.py"],
    "env": {"LR": "0.1"},
    "resources": {"gpus": 1, "gpu_type": "A10G", "cpus": 4, "memory_gb": 16},
    "max_runtime_minutes": 60,
}


@pytest.mark.parametrize(
    ("backend", "service", "operations"),
    [
        ("sagemaker", "sagemaker", ["CreateTrainingJob"]),
        ("ec2", "ec2", ["RunInstances"]),
        ("aws-batch", "batch", ["RegisterJobDefinition", "SubmitJob"]),
        ("ecs", "ecs", ["RegisterTaskDefinition", "RunTask"]),
    ],
)
def test_the_dry_run_request_is_the_launch_request_and_sends_nothing(
    tmp_path, moto_endpoint, backend, service, operations
):
    settings = make_settings(
        tmp_path,
        moto_endpoint,
        JOBPLANE_STAGE=f"d{uuid.uuid4().hex[:8]}",
        JOBPLANE_BACKENDS="sagemaker,ec2,aws-batch,ecs",
        JOBPLANE_EC2_AMI="ami-0123456789abcdef0",
    )
    compute = get_backend(backend, settings)
    sent = record_calls(compute)
    job = make_job(backend, {**SPEC, "backend": backend}, job_id="e" * 32)
    shown = compute.launch_request(job)
    assert shown["service"] == service and [c["operation"] for c in shown["calls"]] == operations
    for call in shown["calls"]:
        request = dict(call["request"])
        if operations[-1] in ("SubmitJob", "RunTask") and call["operation"] == operations[-1]:
            # The definition's ARN only a registration returns: a placeholder that says so.
            key = "jobDefinition" if service == "batch" else "taskDefinition"
            assert request[key].startswith("(the ARN Register")
        check_aws_request(service, call["operation"], request)
    # A dry run describes the launch: no call but the account lookup the role ARNs are made of.
    assert set(sent) <= {"sts:GetCallerIdentity"}
