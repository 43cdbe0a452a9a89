"""The orphan sweep on the managed services (SageMaker, AWS Batch, ECS, Vertex AI), each on its emulator: a
running resource jobplane started whose job is terminal, gone or on a later attempt is stopped by the reaper;
one with a jobplane-like name but no jobplane tags, or another stage's, is never touched."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest

from chalicelib.backends.base import Handle
from chalicelib.jobs.model import JobStatus, utcnow
from chalicelib.jobs.service import JobService
from chalicelib.reaper import Action, sweep
from tests.backends.harnesses import harness_for, moto_holds
from tests.factories import boto, make_history, make_job, wait_for

ACCOUNT = "123456789012"
MANAGED = ("sagemaker", "aws-batch", "ecs", "vertex")


def _foreign_name() -> str:
    return f"jp-{uuid.uuid4().hex}-a1"  # a name jobplane would give, on a resource it did not tag


class Provider:
    """One backend's provider side: hold its resources running, start an untagged one, read what still runs."""

    def __init__(self, name, harness):
        self.name, self.harness, self.backend = name, harness, harness.backend
        self.settings = self.backend.settings

    def launch(self, job):
        launched = self.backend.launch(job)
        self.hold_running(launched.native_id)
        return launched.native_id

    def hold_running(self, native_id):
        if self.name == "sagemaker":  # moto completes a training job at once
            from moto.sagemaker.models import sagemaker_backends

            found = sagemaker_backends[ACCOUNT][self.settings.region].training_jobs[native_id]
            found.training_job_status, found.secondary_status = "InProgress", "Training"
        elif self.name == "aws-batch":  # moto runs it without Docker and ends it at once
            from moto.batch.models import batch_backends

            moto = batch_backends[ACCOUNT][self.settings.region]
            wait_for(lambda: moto._jobs[native_id].job_stopped, what="moto's Batch job to end")
            moto._jobs[native_id].status = "RUNNING"
        elif self.name == "vertex":
            self.harness_fake().custom_jobs[native_id]["state"] = "JOB_STATE_RUNNING"

    def harness_fake(self):
        return self.fake

    def untagged(self):
        """A running resource named like jobplane's, started without jobplane's tags (someone else's)."""
        name = _foreign_name()
        job = make_job(self.name)
        handle = replace(Handle.of(job), native_name=name)
        if self.name == "sagemaker":
            request = self.backend.training_job_request(job, handle)
            request.pop("Tags")
            boto(self.settings, "sagemaker").create_training_job(**request)
            self.hold_running(name)
            return name
        if self.name == "aws-batch":
            request = self.backend.submit_request(job, handle, self.backend.job_definition(job.spec))
            request.pop("tags")
            native = boto(self.settings, "batch").submit_job(**request)["jobId"]
            self.hold_running(native)
            return native
        if self.name == "ecs":
            request = self.backend.run_task_request(job, handle, self.backend.task_definition(job.spec))
            request.pop("tags")
            return boto(self.settings, "ecs").run_task(**request)["tasks"][0]["taskArn"]
        parent = f"projects/{self.settings.gcp_project}/locations/{self.settings.gcp_region}"
        self.fake._ids += 1
        native = f"{parent}/customJobs/{self.fake._ids}"
        self.fake.custom_jobs[native] = {"name": native, "displayName": name, "state": "JOB_STATE_RUNNING"}
        return native

    def running(self, native_id) -> bool:
        if self.name == "sagemaker":
            from moto.sagemaker.models import sagemaker_backends

            found = sagemaker_backends[ACCOUNT][self.settings.region].training_jobs[native_id]
            return found.training_job_status == "InProgress"
        if self.name == "aws-batch":
            from moto.batch.models import batch_backends

            # moto records TerminateJob on the job (its thread already ended: the status stays where it was held)
            found = batch_backends[ACCOUNT][self.settings.region]._jobs[native_id]
            return found.status == "RUNNING" and not found.stop
        if self.name == "ecs":
            tasks = boto(self.settings, "ecs").describe_tasks(cluster=self.settings.ecs_cluster, tasks=[native_id])
            return tasks["tasks"][0]["desiredStatus"] == "RUNNING"
        return self.fake.custom_jobs[native_id]["state"] == "JOB_STATE_RUNNING"


@pytest.fixture
def provider(request, tmp_path):
    name = request.param
    harness = harness_for(name, request, tmp_path)
    found = Provider(name, harness)
    if name == "vertex":
        found.fake = request.getfixturevalue("fake_gcp")
    if name == "sagemaker":
        # moto has no StopTrainingJob: the harness answers it as SageMaker does for an ended job; here the
        # stop is recorded instead, and the job marked Stopped as SageMaker would
        from moto.sagemaker.models import sagemaker_backends

        stopped = []
        client = harness.backend.client("sagemaker")

        def stop(params, **_):
            from botocore.awsrequest import AWSResponse

            name = json.loads(params["body"])["TrainingJobName"]
            stopped.append(name)
            sagemaker_backends[ACCOUNT][found.settings.region].training_jobs[name].training_job_status = "Stopping"
            return AWSResponse("https://sweep.invalid", 200, {}, None), {"ResponseMetadata": {"HTTPStatusCode": 200}}

        client.meta.events.register_first("before-call.sagemaker.StopTrainingJob", stop)
        found.stopped = stopped
    return found


def _put(store, job):
    store.create_job(job, make_history(job))


def _service(provider, store):
    settings = replace(provider.settings, enabled_backends=(provider.name,), default_backend=provider.name)
    provider.backend.settings = settings
    return JobService(store, settings, backend_factory=lambda name, _settings: provider.backend)


@pytest.mark.parametrize("provider", MANAGED, indirect=True)
def test_the_sweep_stops_what_jobplane_started_for_ended_or_gone_jobs_and_nothing_else(provider, memory_store):
    hold = moto_holds(provider.settings.aws_endpoint_url, "ecs::task") if provider.name == "ecs" else None
    if hold is not None:
        hold.__enter__()
    try:
        finished, gone, live, moved = (make_job(provider.name) for _ in range(4))
        native = {job.job_id: provider.launch(job) for job in (finished, gone, live, moved)}
        _put(memory_store, finished.with_changes(status=JobStatus.SUCCEEDED, native_id=native[finished.job_id]))
        _put(memory_store, live.with_changes(status=JobStatus.RUNNING, native_id=native[live.job_id]))
        # failed over after the provider accepted attempt 1: attempt 1 is left over
        _put(memory_store, moved.with_changes(status=JobStatus.QUEUED, attempt=2))
        foreign = provider.untagged()
        service = _service(provider, memory_store)
        active = {j.job_id: j for j in memory_store.iter_active()}
        asked: list[str] = []  # the task ARNs the ECS sweep reads again for their tags
        if provider.name == "ecs":
            provider.backend.client("ecs").meta.events.register(
                "provide-client-params.ecs.DescribeTasks", lambda params, **_: asked.extend(params["tasks"])
            )
        decisions = sweep(service, active, utcnow())
        by_job = {d.job_id: d for d in decisions}
        assert by_job[finished.job_id].action is Action.STOP_FINISHED, decisions
        assert by_job[gone.job_id].action is Action.STOP_ORPHAN
        assert by_job[gone.job_id].reason.startswith("orphaned: ")
        assert by_job[moved.job_id].action is Action.STOP_ORPHAN
        assert by_job[moved.job_id].reason == "left over from attempt 1 (job is on 2)"
        assert live.job_id not in by_job
        assert not [d for d in decisions if d.action is Action.ERROR], decisions
        assert len(decisions) == 3  # the untagged one is not even judged
        if provider.name == "sagemaker":
            assert sorted(provider.stopped) == sorted(native[j.job_id] for j in (finished, gone, moved))
        else:
            for job in (finished, gone, moved):
                assert not provider.running(native[job.job_id]), job
        assert provider.running(native[live.job_id])
        assert provider.running(foreign)
        if provider.name == "ecs":  # the live job's task was described by reconcile already: not read again
            assert native[live.job_id] not in asked and native[finished.job_id] in asked
    finally:
        if hold is not None:
            hold.__exit__(None, None, None)


@pytest.mark.parametrize("provider", ["sagemaker", "aws-batch"], indirect=True)
def test_another_stages_resources_are_listed_by_name_but_never_stopped(provider, memory_store, tmp_path):
    """SageMaker and Batch list names only: the tags of what would be stopped are read first (confirm)."""
    other = type(provider.backend)(replace(provider.settings, stage=f"{provider.settings.stage}x"))
    other._clients = provider.backend._clients  # the same account and clients, another stage's tags
    job = make_job(provider.name)
    launched = other.launch(job)
    provider.hold_running(launched.native_id)
    service = _service(provider, memory_store)
    # (the session's emulator also holds other tests' resources, of other stages: none of them is this one's)
    assert job.job_id in [r.job_id for r in provider.backend.list_managed() if r.unverified]
    assert provider.backend.confirm(provider.backend.list_managed()) == []
    assert sweep(service, {}, utcnow()) == []
    assert provider.running(launched.native_id)


@pytest.mark.parametrize("provider", ["sagemaker"], indirect=True)
def test_the_sagemaker_sweep_reuses_the_list_reconcile_just_read(provider, memory_store):
    job = make_job(provider.name)
    provider.launch(job)  # a job whose record is gone: the sweep stops it from the reused list
    calls = provider.harness.calls
    provider.backend.describe_many([Handle.of(job)])
    listed = calls.count("sagemaker:ListTrainingJobs")
    assert listed >= 2  # InProgress and Stopping, each at least one page
    decisions = sweep(_service(provider, memory_store), {}, utcnow())
    assert job.job_id in {d.job_id for d in decisions if d.action is Action.STOP_ORPHAN}
    assert calls.count("sagemaker:ListTrainingJobs") == listed  # no second list in the same tick
    sweep(_service(provider, memory_store), {}, utcnow())  # a later sweep with no fresh list lists itself
    assert calls.count("sagemaker:ListTrainingJobs") > listed
