"""Failover that follows the job: a capacity failure after the provider accepted it moves it to the next candidate."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import timedelta

import pytest

from chalicelib.auth import Principal
from chalicelib.backends.base import Handle
from chalicelib.events import handle_state_change
from chalicelib.jobs.machine import decide
from chalicelib.jobs.model import EventSource, FailureKind, JobEvent, JobStatus
from tests.backends.harnesses import answer
from tests.factories import T0, boto, fixture_json, make_job, moto_service, noop_spec

ALICE = Principal("alice")
# SageMaker's FailureReason for a job it accepted and then could not find instances for
CAPACITY_REASON = (
    "CapacityError: Unable to provision requested ML compute capacity. Please retry using a different ML instance type."
)


@pytest.fixture
def aws_service(memory_store, tmp_path):
    with moto_service(memory_store, tmp_path, "sagemaker,ec2,local") as found:
        yield found


def sagemaker_event(job, status: str, secondary: str, reason: str = "") -> dict:
    """The recorded SageMaker Training Job State Change event, about `job`'s current attempt."""
    event = copy.deepcopy(fixture_json("events", "sagemaker-training-job-state-change.json"))
    detail = event["detail"]
    detail.pop("Tags", None)
    detail.pop("TrainingStartTime", None)
    detail.update(TrainingJobName=Handle.of(job).native_name, TrainingJobStatus=status, SecondaryStatus=secondary)
    detail["FailureReason"] = reason
    return event


def test_a_sagemaker_capacity_failure_after_acceptance_ends_with_an_ec2_launch(aws_service, memory_store):
    service, ec2 = aws_service
    spec = noop_spec(
        image="train:1",
        backend="sagemaker",
        fallback=["ec2"],
        capacity_wait_minutes=60,
        checkpoint_uri="s3://ckpt/run1/",
    )
    job, _ = service.submit(ALICE, spec)
    assert (job.status, job.backend, job.attempt) == (JobStatus.LAUNCHING, "sagemaker", 1)
    accepted = boto(service.settings, "sagemaker").describe_training_job(TrainingJobName=job.native_name)
    assert accepted["TrainingJobName"] == f"jp-{job.job_id}"

    result = handle_state_change(sagemaker_event(job, "Failed", "Failed", CAPACITY_REASON), service)
    moved = memory_store.get_job(job.job_id)
    assert result.outcome.value == "applied"
    assert (moved.status, moved.backend, moved.attempt) == (JobStatus.LAUNCHING, "ec2", 2)
    assert moved.failure_kind is None
    assert moved.spec.checkpoint_uri == "s3://ckpt/run1/"  # the checkpoint follows the job
    assert moved.first_refusal_at is not None
    tagged = ec2.describe_instances(Filters=[{"Name": "tag:jobplane:native-id", "Values": [f"jp-{job.job_id}-a2"]}])
    instances = [i for r in tagged["Reservations"] for i in r["Instances"]]
    assert [i["InstanceId"] for i in instances] == [moved.native_id]
    history = memory_store.history(job.job_id)
    assert [(e.from_status, e.to_status, e.attempt) for e in history][-2:] == [
        (JobStatus.LAUNCHING, JobStatus.QUEUED, 2),
        (JobStatus.QUEUED, JobStatus.LAUNCHING, 2),
    ]
    failover = [e for e in history if e.reason.startswith("sagemaker: CapacityError")]
    assert [e.reason for e in failover] == [f"sagemaker: {CAPACITY_REASON}; failing over to ec2"]
    assert moved.planner_reason == "failover from sagemaker (no_capacity) to ec2"

    # The failed attempt's event again (EventBridge delivers at least once) is stale for attempt 2.
    again = handle_state_change(sagemaker_event(job, "Failed", "Failed", CAPACITY_REASON), service)
    assert again.outcome.value == "ignored"  # the job runs on ec2 now
    assert memory_store.get_job(job.job_id).attempt == 2


def test_a_refused_sagemaker_launch_fails_over_to_ec2_with_the_real_error_shape(aws_service, memory_store):
    service, _ = aws_service
    sagemaker = service.backend("sagemaker")
    message = "The account-level service limit 'ml.m5.xlarge for training job usage' is 0 Instances"
    answer(sagemaker.client("sagemaker"), "CreateTrainingJob", "ResourceLimitExceeded", message)
    job, _ = service.submit(ALICE, noop_spec(image="train:1", backend="sagemaker", fallback=["ec2"]))
    assert (job.status, job.backend, job.attempt) == (JobStatus.LAUNCHING, "ec2", 1)
    assert job.planner_reason == "failover from sagemaker (quota_exceeded) to ec2"


def test_with_the_last_candidate_failing_the_job_waits_until_the_window_from_the_first_refusal_ends():
    spec = noop_spec(image="train:1", backend="sagemaker", fallback=["ec2"], capacity_wait_minutes=60)
    job = make_job("ec2", spec, candidates=("sagemaker", "ec2"), named=True, first_refusal_at=T0)
    capacity = JobEvent(
        job.job_id,
        JobStatus.FAILED,
        EventSource.BACKEND,
        at=T0 + timedelta(minutes=59),
        reason="no spot capacity",
        failure_kind=FailureKind.NO_CAPACITY,
        attempt=1,
    )
    waits = decide(job, capacity)
    assert (waits.to_status, waits.changes["backend"], waits.changes["attempt"], waits.hold) == (
        JobStatus.QUEUED,
        "sagemaker",
        2,
        True,
    )
    assert waits.reason.startswith(
        "ec2: no spot capacity; no candidate left (sagemaker, ec2); retrying until 2024-05-01T13:00"
    )
    late = replace(capacity, at=T0 + timedelta(minutes=61))
    failed = decide(job, late)
    assert (failed.to_status, failed.changes["failure_kind"]) == (JobStatus.FAILED, FailureKind.NO_CAPACITY)


def test_a_preemption_before_the_job_started_fails_over_but_one_after_it_started_does_not():
    spec = noop_spec(image="train:1", backend="sagemaker", fallback=["ec2"])
    job = make_job("sagemaker", spec, candidates=("sagemaker", "ec2"), named=True)
    preempted = JobEvent(
        job.job_id,
        JobStatus.FAILED,
        EventSource.BACKEND,
        at=T0,
        reason="spot capacity reclaimed",
        failure_kind=FailureKind.INTERRUPTED,
        attempt=1,
    )
    moved = decide(job, preempted)
    assert (moved.to_status, moved.changes["backend"]) == (JobStatus.QUEUED, "ec2")
    ran = decide(job.with_changes(status=JobStatus.RUNNING, started_at=T0), preempted)
    assert (ran.to_status, ran.changes["failure_kind"]) == (JobStatus.FAILED, FailureKind.INTERRUPTED)


def test_a_user_error_or_a_cancel_never_fails_over():
    spec = noop_spec(image="train:1", backend="sagemaker", fallback=["ec2"], capacity_wait_minutes=60)
    job = make_job("sagemaker", spec, candidates=("sagemaker", "ec2"), named=True)
    user = JobEvent(job.job_id, JobStatus.FAILED, EventSource.BACKEND, at=T0, failure_kind=FailureKind.USER_ERROR)
    assert decide(job, user).to_status is JobStatus.FAILED
    capacity = replace(user, failure_kind=FailureKind.NO_CAPACITY)
    assert decide(job.with_changes(status=JobStatus.CANCELLING), capacity).to_status is JobStatus.CANCELLED


def test_a_move_to_another_gpu_type_writes_it_into_the_spec_and_keeps_the_checkpoint():
    spec = noop_spec(
        image="train:1",
        backend="sagemaker",
        resources={"gpus": 1, "gpu_type": "A10G"},
        gpu_types=["L4"],
        checkpoint_uri="s3://ckpt/run1/",
    )
    job = make_job("sagemaker", spec, candidates=("sagemaker+A10G", "sagemaker+L4"), named=True)
    assert job.candidate == "sagemaker+A10G"
    capacity = JobEvent(
        job.job_id,
        JobStatus.FAILED,
        EventSource.BACKEND,
        at=T0,
        reason=CAPACITY_REASON,
        failure_kind=FailureKind.NO_CAPACITY,
        attempt=1,
    )
    moved = decide(job, capacity)
    assert (moved.to_status, moved.changes["backend"], moved.changes["attempt"]) == (JobStatus.QUEUED, "sagemaker", 2)
    assert moved.changes["spec"].resources.gpu_type == "L4"
    assert moved.changes["spec"].checkpoint_uri == "s3://ckpt/run1/"
    assert moved.reason == f"sagemaker+A10G: {CAPACITY_REASON}; failing over to sagemaker+L4"
