"""Ad-hoc EC2 VMs on moto: tagged, spot, terminate-on-shutdown launches found again; exit status from S3."""

from __future__ import annotations

import base64
import json

import pytest
from botocore.stub import Stubber

from chalicelib.auth import Principal
from chalicelib.backends.agent import StopCause, make_report
from chalicelib.backends.aws.ec2 import Ec2Backend, power_state
from chalicelib.backends.base import Handle, PowerState
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.service import JobService
from chalicelib.jobs.spec import parse_spec
from chalicelib.store.memory import InMemoryJobStore
from tests.factories import boto, make_job, make_settings

NOW = "2025-01-01T02:00:00Z"
SPEC = {
    "image": "train:1",
    "command": ["python", "train.py"],
    "resources": {"gpus": 1, "gpu_type": "A10G", "spot": True},
}


def ec2_settings(settings):
    """The stage's AMI, instance profile and artifacts bucket, made on moto."""
    from dataclasses import replace

    ami = boto(settings, "ec2").describe_images()["Images"][0]["ImageId"]
    boto(settings, "iam").create_instance_profile(InstanceProfileName=settings.ec2_instance_profile)
    boto(settings, "s3").create_bucket(Bucket=settings.artifacts_bucket)
    return replace(settings, ec2_ami=ami)


def test_can_launch_describe_and_cancel_a_vm_on_moto(aws_settings):
    settings = ec2_settings(aws_settings)
    backend, ec2 = Ec2Backend(settings), boto(settings, "ec2")
    job = make_job("ec2", SPEC)
    first = backend.launch(job)
    again = backend.launch(job)  # moto ignores ClientToken: the tag lookup is what finds the first VM
    assert again.native_id == first.native_id and again.native_status == "AlreadyLaunched"
    instance = ec2.describe_instances(InstanceIds=[first.native_id])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert (tags["jobplane:job-id"], tags["jobplane:managed"], tags["jobplane:stage"]) == (
        job.job_id,
        "true",
        settings.stage,
    )
    assert (instance["InstanceType"], instance.get("InstanceLifecycle")) == ("g5.xlarge", "spot")
    behaviour = ec2.describe_instance_attribute(
        InstanceId=first.native_id, Attribute="instanceInitiatedShutdownBehavior"
    )
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    script = base64.b64decode(
        ec2.describe_instance_attribute(InstanceId=first.native_id, Attribute="userData")["UserData"]["Value"]
    ).decode()
    assert script.startswith("#!/bin/bash\n")
    assert f"REPORT_URI='{backend.status_uri(Handle.of(job))}status.json'" in script
    handle = Handle(job.job_id, f"jp-{job.job_id}", 1, native_id=first.native_id)
    assert backend.describe(handle).status is JobStatus.RUNNING
    assert [r.resource_id for r in backend.list_managed()] == [first.native_id]
    backend.cancel(handle)
    gone = backend.describe(handle)
    assert (gone.status, gone.failure_kind) == (JobStatus.FAILED, FailureKind.BACKEND_ERROR)
    assert gone.reason.startswith("instance terminated without an exit status")
    assert backend.list_managed() == []


@pytest.mark.parametrize("aws_settings", ["in-process"], indirect=True)
def test_the_terminal_state_comes_from_the_uploaded_exit_status(aws_settings):
    settings = ec2_settings(aws_settings)
    backend, s3 = Ec2Backend(settings), boto(settings, "s3")
    results = {}
    for code, timed_out in ((0, False), (3, False), (124, True)):
        job = make_job("ec2", SPEC)
        launched = backend.launch(job)
        uri = backend.status_uri(Handle.of(job))
        bucket, _, prefix = uri[5:].partition("/")
        stopped_by = StopCause.TIMEOUT if timed_out else None
        report = make_report(
            job_id=job.job_id, attempt=1, exit_code=code, stopped_by=stopped_by, started_at=None, finished_at=NOW
        )
        s3.put_object(Bucket=bucket, Key=prefix + "status.json", Body=json.dumps(report))
        boto(settings, "ec2").terminate_instances(InstanceIds=[launched.native_id])
        seen = backend.describe(Handle(job.job_id, f"jp-{job.job_id}", 1, native_id=launched.native_id))
        results[code] = (seen.status, seen.failure_kind, seen.exit_code)
    assert results == {
        0: (JobStatus.SUCCEEDED, None, 0),
        3: (JobStatus.FAILED, FailureKind.USER_ERROR, 3),
        124: (JobStatus.FAILED, FailureKind.TIMEOUT, 124),
    }


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        (
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient g5.xlarge capacity in the Availability Zone you requested.",
            "no_capacity",
        ),
        (
            "VcpuLimitExceeded",
            "You have requested more vCPU capacity than your current vCPU limit of 0 allows.",
            "quota",
        ),
        ("InvalidParameterValue", "Value (x) for parameter instanceType is invalid.", "user_error"),
        # A final error of no other kind (a 500 is transient now: tests/jobs/test_transient.py retries it).
        ("UnauthorizedOperation", "You are not authorized to perform this operation.", "backend_error"),
    ],
)
def test_a_refused_launch_fails_the_job_with_the_kind_and_the_providers_message(tmp_path, code, message, kind):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="ec2", JOBPLANE_EC2_AMI="ami-12345678")
    backend = Ec2Backend(settings)
    client = boto(settings, "ec2")
    backend.set_client("ec2", client)
    service = JobService(InMemoryJobStore(), settings, backend_factory=lambda name, _s: backend)
    with Stubber(client) as stub:
        stub.add_response("describe_instances", {"Reservations": []})
        stub.add_client_error(
            "run_instances",
            service_error_code=code,
            service_message=message,
            http_status_code=403 if code == "UnauthorizedOperation" else 400,
        )
        job, _ = service.submit(Principal("alice"), parse_spec({"name": "gpu", "backend": "ec2", **SPEC}))
    assert (job.status, job.failure_kind.value) == (JobStatus.FAILED, kind)
    assert job.failure_reason.startswith("launch failed: ")
    assert job.failure_reason.endswith(f"ec2 RunInstances: {code}: {message}")


@pytest.mark.parametrize(
    ("state", "power"),
    [
        ("pending", PowerState.RUNNING),
        ("running", PowerState.RUNNING),
        ("stopping", PowerState.STOPPED),
        ("stopped", PowerState.STOPPED),  # its EBS volumes still bill
        ("shutting-down", PowerState.GONE),
        ("terminated", PowerState.GONE),
    ],
)
def test_an_instance_state_says_what_the_instance_still_costs(state, power):
    assert power_state(state) is power


def test_utilization_is_the_agents_heartbeat_object_timed_by_s3(aws_settings):
    from chalicelib.jobs.model import utcnow

    settings = ec2_settings(aws_settings)
    backend, s3 = Ec2Backend(settings), boto(settings, "s3")
    job = make_job("ec2", SPEC)
    backend.launch(job)
    (resource,) = [r for r in backend.list_managed() if r.job_id == job.job_id]
    assert backend.utilization(resource, 30) is not None
    assert backend.utilization(resource, 30).last_heartbeat is None  # nothing uploaded yet: no heartbeat
    key = backend.status_uri(Handle.of(job)).split("/", 3)[3] + "heartbeat.json"
    beat = {"v": 1, "job_id": job.job_id, "attempt": 1, "at": "x", "interval_seconds": 60, "gpu_percent": 2.0}
    before = utcnow().replace(microsecond=0)
    s3.put_object(Bucket=settings.artifacts_bucket, Key=key, Body=json.dumps({**beat, "gpu_samples": 30}))
    seen = backend.utilization(resource, 30)
    assert seen.gpu_percent == 2.0 and seen.last_heartbeat >= before
    assert backend.utilization(resource, 31).gpu_percent is None  # 30 one-minute samples cover no 31-minute window


def test_the_log_tail_is_one_range_get_of_the_objects_last_bytes(aws_settings):
    settings = ec2_settings(aws_settings)
    backend, s3 = Ec2Backend(settings), boto(settings, "s3")
    job = make_job("ec2", SPEC)
    handle = Handle.of(job)
    assert backend.tail(handle) == []  # no log shipped yet
    key = backend.status_uri(handle).split("/", 3)[3] + "log.txt"
    lines = [f"step {i} loss {1 / (i + 1):.6f}" for i in range(40_000)]  # ~1 MB, far past 16 forward pages
    s3.put_object(Bucket=settings.artifacts_bucket, Key=key, Body="\n".join(lines) + "\n")
    read: list[tuple[str, int]] = []

    def count(parsed, model, **_):
        read.append((model.name, parsed["ContentLength"]))  # the bytes S3 sends back

    client = backend.client("s3")
    client.meta.events.register("after-call.s3.GetObject", count)
    try:
        tail = backend.tail(handle, max_lines=15, max_bytes=2048)
    finally:
        client.meta.events.unregister("after-call.s3.GetObject", count)
    assert tail == lines[-15:]
    assert read == [("GetObject", 2049)]  # the last max_bytes + 1 bytes, not the megabyte
    s3.put_object(Bucket=settings.artifacts_bucket, Key=key, Body="only line\n")
    assert backend.tail(handle) == ["only line"]  # shorter than the range: the whole object, its first line kept


def _allowed(policy: dict, action: str, uri: str) -> bool:
    import fnmatch

    arn = "arn:aws:s3:::" + uri.removeprefix("s3://")
    for statement in policy["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if action in statement["Action"] and any(fnmatch.fnmatchcase(arn, r) for r in resources):
            return True
    return False


def test_the_vm_role_may_do_what_the_user_data_does_in_the_artifact_store_and_no_more(tmp_path):
    from chalicelib.jobs import contract

    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="ec2,local")
    backend = Ec2Backend(settings)
    bucket = settings.artifacts_bucket
    job = make_job("ec2", {"image": None, "command": ["python", "train.py"]})
    handle = Handle.of(job)
    policy = backend.job_role_policy()
    code = f"s3://{bucket}/code/{'a' * 64}.tar.gz"
    checkpoint = contract.checkpoint_location(job.spec, job.job_id, bucket) + "step-1.pt"
    output = contract.artifacts_uri(job.spec, job.job_id, bucket) + "model.bin"
    status = backend.status_uri(handle)
    assert _allowed(policy, "s3:GetObject", code)  # staging: the packed code
    assert _allowed(policy, "s3:GetObject", checkpoint) and _allowed(policy, "s3:PutObject", checkpoint)
    assert _allowed(policy, "s3:PutObject", output)
    assert _allowed(policy, "s3:PutObject", status + "status.json") and _allowed(
        policy, "s3:PutObject", status + "log.txt"
    )
    # Nothing else of the bucket: not another stage's status, not writing code, not reading the reports back.
    assert not _allowed(policy, "s3:PutObject", code)
    assert not _allowed(policy, "s3:GetObject", status + "status.json")
    assert not _allowed(policy, "s3:PutObject", f"s3://{bucket}/jobplane/other/jobs/x/status.json")
    pull = {a for s in policy["Statement"] for a in s["Action"] if a.startswith("ecr:")}
    assert pull == {
        "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
    }
