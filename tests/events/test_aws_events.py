"""on_job_state_change with AWS's published event payloads: duplicates, out of order, not ours."""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from chalicelib.auth import Principal
from chalicelib.events import EventResult, Outcome, handle_state_change
from chalicelib.jobs.model import FailureKind, JobStatus, native_name
from chalicelib.jobs.service import JobService
from chalicelib.jobs.spec import parse_spec
from chalicelib.store.memory import InMemoryJobStore
from tests.factories import FIXTURES, boto, make_history, make_job, make_settings

PLACEHOLDER = "0123456789abcdef0123456789abcdef"


def sample(name: str, job_id: str = PLACEHOLDER, instance_id: str | None = None) -> dict:
    text = (FIXTURES / "events" / name).read_text().replace(PLACEHOLDER, job_id)
    if instance_id:
        text = text.replace("i-1234567890abcdef0", instance_id)
    return json.loads(text)


@pytest.fixture
def world(tmp_path, moto_endpoint):
    stage = f"t{uuid.uuid4().hex[:8]}"
    settings = make_settings(
        tmp_path,
        moto_endpoint,
        JOBPLANE_STAGE=stage,
        JOBPLANE_BACKENDS="sagemaker,aws-batch,ecs,ec2",
        JOBPLANE_ECS_CLUSTER="jobplane-test",
    )
    store = InMemoryJobStore()
    return settings, store, JobService(store, settings)


def stored(store, backend: str, spec: dict | None = None, status=JobStatus.LAUNCHING, native_id=None, attempt=1):
    job = make_job(backend, spec or {"image": "train:1"}, attempt=attempt).with_changes(
        status=status, native_id=native_id
    )
    job = job.with_changes(native_id=native_id or native_name(job.job_id, attempt))
    store.create_job(job, make_history(job))
    return job


def outcomes(service, events):
    return [(r.outcome, r.status) for r in (handle_state_change(e, service) for e in events)]


def test_sagemaker_events_apply_in_order_and_duplicates_or_late_ones_change_nothing(world):
    _, store, service = world
    job = stored(store, "sagemaker")
    training = sample("sagemaker-training-job-state-change.json", job.job_id)
    training["detail"].update(TrainingJobStatus="InProgress", SecondaryStatus="Training")
    completed = sample("sagemaker-training-job-state-change.json", job.job_id)
    assert outcomes(service, [training, training, completed, completed, training]) == [
        ("applied", "RUNNING"),
        ("unchanged", "RUNNING"),
        ("applied", "SUCCEEDED"),
        ("unchanged", "SUCCEEDED"),
        ("unchanged", "SUCCEEDED"),
    ]
    assert [e.to_status for e in store.history(job.job_id)] == [
        JobStatus.LAUNCHING,
        JobStatus.RUNNING,
        JobStatus.SUCCEEDED,
    ]


def test_a_failed_training_job_records_why(world):
    _, store, service = world
    job = stored(store, "sagemaker")
    failed = sample("sagemaker-training-job-state-change.json", job.job_id)
    failed["detail"].update(
        TrainingJobStatus="Failed", SecondaryStatus="Failed", FailureReason="AlgorithmError: exit status 2"
    )
    assert outcomes(service, [failed]) == [("applied", "FAILED")]
    after = store.get_job(job.job_id)
    assert (after.failure_kind, after.failure_reason) == (FailureKind.USER_ERROR, "AlgorithmError: exit status 2")


def test_events_for_resources_jobplane_did_not_start_are_ignored(world):
    _, store, service = world
    foreign = sample("sagemaker-training-job-state-change.json")
    foreign["detail"]["TrainingJobName"] = "89c96cc8-dded-4739-afcc-6f1dc936701d"  # AWS's own sample name
    other_stage = sample("sagemaker-training-job-state-change.json", stored(store, "sagemaker").job_id)
    other_stage["detail"]["Tags"] = {"jobplane:managed": "true", "jobplane:stage": "prod"}
    unknown_job = sample("batch-job-state-change.json", uuid.uuid4().hex)
    other_cluster = sample("ecs-task-state-change.json", stored(store, "ecs").job_id)
    other_cluster["detail"]["clusterArn"] = "arn:aws:ecs:us-west-2:111122223333:cluster/FargateCluster"
    results = [handle_state_change(e, service) for e in (foreign, other_stage, unknown_job, other_cluster)]
    assert [r.outcome for r in results] == ["ignored", "ignored", "unknown_job", "ignored"]
    assert [r.outcome for r in results] == [Outcome.IGNORED, Outcome.IGNORED, Outcome.UNKNOWN_JOB, Outcome.IGNORED]
    # the backend's parser said None for each foreign resource, and the result says which backend was asked
    assert [r.detail for r in results if r.outcome is Outcome.IGNORED] == [
        "not about a job this deployment runs on sagemaker",
        "not about a job this deployment runs on sagemaker",
        "not about a job this deployment runs on ecs",
    ]
    assert all(r.job_id is None for r in results if r.outcome is Outcome.IGNORED)


def test_an_event_result_leaves_the_handler_as_plain_json_strings():
    for outcome in Outcome:
        body = EventResult(outcome, "a" * 32, "RUNNING", "Training").to_dict()
        assert type(body["outcome"]) is str
        assert json.loads(json.dumps(body)) == {
            "outcome": outcome.value,
            "job_id": "a" * 32,
            "status": "RUNNING",
            "detail": "Training",
        }


def test_batch_events_out_of_order_end_where_the_job_ended(world):
    _, store, service = world
    job = stored(store, "aws-batch")
    runnable = sample("batch-job-state-change.json", job.job_id)
    running = copy.deepcopy(runnable)
    running["detail"].update(status="RUNNING", startedAt=1641944300058)
    failed = copy.deepcopy(runnable)
    failed["detail"].update(
        status="FAILED",
        statusReason="Essential container in task exited",
        startedAt=1641944300058,
        stoppedAt=1641944400058,
    )
    failed["detail"]["container"]["exitCode"] = 1
    assert outcomes(service, [runnable, failed, running, runnable]) == [
        ("unchanged", "LAUNCHING"),
        ("applied", "FAILED"),
        ("unchanged", "FAILED"),
        ("unchanged", "FAILED"),
    ]
    after = store.get_job(job.job_id)
    assert after.failure_kind is FailureKind.USER_ERROR
    assert after.native_id == "4c7599ae-0a82-49aa-ba5a-4727fcce14a8"
    assert after.started_at.isoformat() == "2022-01-11T23:38:20.058000+00:00"


def test_ecs_events_run_and_finish_the_job(world):
    _, store, service = world
    job = stored(store, "ecs")
    running = sample("ecs-task-state-change.json", job.job_id)
    stopped = copy.deepcopy(running)
    stopped["detail"].update(lastStatus="STOPPED", desiredStatus="STOPPED", stopCode="EssentialContainerExited")
    stopped["detail"]["containers"][0].update(lastStatus="STOPPED", exitCode=0)
    assert outcomes(service, [running, stopped, running]) == [
        ("applied", "RUNNING"),
        ("applied", "SUCCEEDED"),
        ("unchanged", "SUCCEEDED"),
    ]


def _ec2_world(world):
    settings, store, _ = world
    from dataclasses import replace

    ami = boto(settings, "ec2").describe_images()["Images"][0]["ImageId"]
    boto(settings, "iam").create_instance_profile(InstanceProfileName=settings.ec2_instance_profile)
    boto(settings, "s3").create_bucket(Bucket=settings.artifacts_bucket)
    settings = replace(settings, ec2_ami=ami)
    return settings, store, JobService(store, settings)


def test_ec2_state_changes_and_a_missing_exit_status_after_termination(world):
    settings, store, service = _ec2_world(world)
    job = stored(store, "ec2")
    launched = service.backend("ec2").launch(job)
    store.update_job(store.get_job(job.job_id), JobStatus.LAUNCHING, native_id=launched.native_id)
    event = sample("ec2-instance-state-change.json", instance_id=launched.native_id)
    running = copy.deepcopy(event)
    running["detail"]["state"] = "running"
    terminated = copy.deepcopy(event)
    terminated["detail"]["state"] = "terminated"
    boto(settings, "ec2").terminate_instances(InstanceIds=[launched.native_id])
    assert outcomes(service, [event, running, running, terminated]) == [
        ("unchanged", "LAUNCHING"),
        ("applied", "RUNNING"),
        ("unchanged", "RUNNING"),
        ("applied", "FAILED"),
    ]
    after = store.get_job(job.job_id)
    assert after.failure_kind is FailureKind.BACKEND_ERROR
    assert after.failure_reason.startswith("instance terminated without an exit status")
    stranger = boto(settings, "ec2").run_instances(ImageId=settings.ec2_ami, MinCount=1, MaxCount=1)["Instances"][0]
    assert (
        handle_state_change(
            sample("ec2-instance-state-change.json", instance_id=stranger["InstanceId"]), service
        ).outcome
        == "ignored"
    )


def test_a_spot_interruption_retries_the_job_as_a_new_attempt_or_fails_it(world):
    settings, store, service = _ec2_world(world)
    spot = {"image": "train:1", "resources": {"spot": True}, "checkpoint_uri": "s3://ckpt-bucket/run/"}
    retried = service.submit(
        Principal("alice"),
        parse_spec(
            {"name": "spot", "backend": "ec2", "command": ["python", "t.py"], "retries": {"max_attempts": 2}, **spot}
        ),
    )[0]
    first_instance = retried.native_id
    warning = sample("ec2-spot-instance-interruption-warning.json", instance_id=first_instance)
    # LAUNCHING again, as attempt 2 (the status is the same, so the event reports no status change).
    handle_state_change(warning, service)
    after = store.get_job(retried.job_id)
    assert (after.attempt, after.status) == (2, JobStatus.LAUNCHING)
    assert after.native_id != first_instance
    second = boto(settings, "ec2").describe_instances(InstanceIds=[after.native_id])["Reservations"][0]["Instances"][0]
    assert {t["Key"]: t["Value"] for t in second["Tags"]}["jobplane:native-id"] == f"jp-{retried.job_id}-a2"
    # The first attempt's instance going away later changes nothing: it belongs to attempt 1.
    terminated = sample("ec2-instance-state-change.json", instance_id=first_instance)
    terminated["detail"]["state"] = "terminated"
    assert outcomes(service, [warning, terminated]) == [("unchanged", "LAUNCHING"), ("unchanged", "LAUNCHING")]
    # On its last attempt, an interruption fails the job as interrupted.
    warning2 = sample("ec2-spot-instance-interruption-warning.json", instance_id=after.native_id)
    assert outcomes(service, [warning2]) == [("applied", "FAILED")]
    final = store.get_job(retried.job_id)
    assert final.failure_kind is FailureKind.INTERRUPTED
    assert final.failure_reason.startswith("spot interruption warning: EC2 will terminate")
