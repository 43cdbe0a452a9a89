"""Reconcile moves a job that waits in its provider's queue past capacity_wait_minutes to its next candidate."""

from __future__ import annotations

from datetime import timedelta

from botocore.stub import ANY, Stubber

from chalicelib.auth import Principal
from chalicelib.jobs.model import JobStatus, utcnow
from chalicelib.reaper import Action, decide_reconcile, reconcile
from tests.factories import make_job, make_observation, moto_service, noop_spec

ALICE = Principal("alice")


def runnable(job, queue: str) -> dict:
    """DescribeJobs' JobDetail of a job Batch holds RUNNABLE (no instance in its compute environment yet)."""
    return {
        "jobName": job.native_name,
        "jobId": job.native_id,
        "jobArn": f"arn:aws:batch:us-east-1:123456789012:job/{job.native_id}",
        "jobQueue": queue,
        "status": "RUNNABLE",
        "createdAt": 1_700_000_000_000,
        "startedAt": 0,
        "jobDefinition": "arn:aws:batch:us-east-1:123456789012:job-definition/jp:1",
        "container": {},
    }


def sweep_lists(stub, service) -> None:
    """The tick's orphan sweep: Batch ListJobs for each job queue and live status (nothing else live here)."""
    backend = service.backend("aws-batch")
    for queue in backend.queues():
        for status in backend.LIVE_STATUSES:
            stub.add_response("list_jobs", {"jobSummaryList": []}, {"jobQueue": queue, "jobStatus": status})


def test_a_batch_job_runnable_past_the_capacity_wait_is_stopped_and_launched_on_ec2(memory_store, tmp_path):
    with moto_service(memory_store, tmp_path, "aws-batch,ec2,local") as (service, ec2):
        spec = noop_spec(image="train:1", backend="aws-batch", fallback=["ec2"], capacity_wait_minutes=30)
        job, _ = service.submit(ALICE, spec)
        assert (job.status, job.backend) == (JobStatus.LAUNCHING, "aws-batch")
        batch = service.backend("aws-batch").client()
        queue = service.settings.batch_job_queue
        with Stubber(batch) as stub:
            stub.add_response("describe_jobs", {"jobs": [runnable(job, queue)]}, {"jobs": [job.native_id]})
            sweep_lists(stub, service)
            assert [d.action for d in reconcile(service)] == [Action.QUEUE_WAIT]
            stub.assert_no_pending_responses()
        waiting = memory_store.get_job(job.job_id)
        assert waiting.first_refusal_at is not None and waiting.status is JobStatus.LAUNCHING
        # half an hour later it is still RUNNABLE: stopped in Batch's queue and launched on the next candidate
        memory_store.update_job(waiting, JobStatus.LAUNCHING, first_refusal_at=utcnow() - timedelta(minutes=31))
        with Stubber(batch) as stub:
            stub.add_response("describe_jobs", {"jobs": [runnable(job, queue)]}, {"jobs": [job.native_id]})
            stub.add_response("terminate_job", {}, {"jobId": job.native_id, "reason": ANY})
            sweep_lists(stub, service)
            assert [d.action for d in reconcile(service)] == [Action.QUEUE_FAILOVER]
            stub.assert_no_pending_responses()
        moved = memory_store.get_job(job.job_id)
        assert (moved.status, moved.backend, moved.attempt, moved.failure_kind) == (
            JobStatus.LAUNCHING,
            "ec2",
            2,
            None,
        )
        found = ec2.describe_instances(InstanceIds=[moved.native_id])["Reservations"][0]["Instances"][0]
        assert {t["Key"]: t["Value"] for t in found["Tags"]}["jobplane:native-id"] == f"jp-{job.job_id}-a2"
        reasons = [e.reason for e in memory_store.history(job.job_id) if e.to_status is JobStatus.QUEUED]
        assert reasons[-1].startswith("aws-batch: waited 31 minutes for capacity in aws-batch's queue (RUNNABLE)")
        assert reasons[-1].endswith("; failing over to ec2")


def test_a_queue_wait_counts_only_when_the_spec_sets_one_and_the_provider_says_it_waits():
    now = utcnow()
    waiting = make_observation(status=JobStatus.LAUNCHING, native_status="RUNNABLE", waiting_for_capacity=True)
    no_wait = make_job("aws-batch", noop_spec(image="train:1"), named=True, first_refusal_at=now - timedelta(hours=9))
    assert decide_reconcile(no_wait, waiting, now, timedelta(minutes=5)).action is Action.NONE
    spec = noop_spec(image="train:1", capacity_wait_minutes=30)
    job = make_job("aws-batch", spec, named=True, first_refusal_at=now - timedelta(minutes=29))
    assert decide_reconcile(job, waiting, now, timedelta(minutes=5)).action is Action.NONE
    starting = make_observation(status=JobStatus.LAUNCHING, native_status="STARTING")
    late = job.with_changes(first_refusal_at=now - timedelta(minutes=40))
    assert decide_reconcile(late, starting, now, timedelta(minutes=5)).action is Action.NONE
    assert decide_reconcile(late, waiting, now, timedelta(minutes=5)).action is Action.QUEUE_FAILOVER
