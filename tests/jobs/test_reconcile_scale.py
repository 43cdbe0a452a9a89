"""Reconcile at scale: batched truth-reading (calls counted against moto), oldest first, shards planned and run."""

from __future__ import annotations

import collections
from dataclasses import replace
from datetime import timedelta

import pytest

from chalicelib.backends.base import Handle
from chalicelib.errors import ValidationError
from chalicelib.jobs.model import JobStatus, utcnow
from chalicelib.jobs.service import JobService
from chalicelib.reaper import Action, oldest_first, plan_shards, reconcile, reconcile_shard, run_shard
from tests.backends.harnesses import batch_harness, record_calls
from tests.factories import ScriptedBackend, boto, count_dynamodb, make_history, make_job, make_settings

NOW = utcnow()


def _jobs(backend: str, n: int, start: int = 0):
    return [
        make_job(backend, job_id=f"{start + i:032x}", status=JobStatus.RUNNING, updated_at=NOW - timedelta(seconds=i))
        for i in range(n)
    ]


# --- shard planning (pure) --------------------------------------------------------------------------
def test_a_tick_that_fits_one_shard_is_one_shard():
    jobs = _jobs("aws-batch", 250) + _jobs("ecs", 30, 1000)
    assert plan_shards(jobs, 1000) == [jobs]


def test_shards_keep_each_backends_jobs_in_whole_batches_of_100():
    jobs = _jobs("aws-batch", 2_850) + _jobs("ecs", 230, 10_000) + _jobs("local", 7, 20_000)
    shards = plan_shards(jobs, 1000)
    assert [len(s) for s in shards] == [1000, 1000, 950, 137]
    assert [j for s in shards for j in s] == jobs  # every job once, in order
    runs = collections.defaultdict(list)  # backend -> sizes of its runs, shard by shard
    for shard in shards:
        for name, count in collections.Counter(j.backend for j in shard).items():
            runs[name].append(count)
    assert runs == {"aws-batch": [1000, 1000, 850], "ecs": [100, 130], "local": [7]}
    # the batched reads of the whole tick: ceil(n / 100) per backend, however it is cut
    assert sum(-(-r // 100) for r in runs["aws-batch"]) == 29 == -(-2_850 // 100)
    assert sum(-(-r // 100) for r in runs["ecs"]) == 3 == -(-230 // 100)


def test_a_listing_backends_jobs_are_never_split_so_its_list_is_read_once():
    jobs = _jobs("aws-batch", 950) + _jobs("sagemaker", 1_500, 10_000)
    shards = plan_shards(jobs, 1000, whole=frozenset({"sagemaker"}))
    assert [collections.Counter(j.backend for j in s) for s in shards] == [{"aws-batch": 950}, {"sagemaker": 1_500}]


def test_a_shard_is_at_least_one_batch():
    assert [len(s) for s in plan_shards(_jobs("ecs", 250), 10)] == [100, 100, 50]


def test_the_jobs_whose_last_event_is_oldest_are_read_first():
    fresh, stale, never = _jobs("ecs", 3)
    never = never.with_changes(updated_at=None, created_at=NOW - timedelta(days=1))
    assert oldest_first([fresh, stale, never]) == [never, stale, fresh]


def test_a_shard_payload_must_name_job_ids(service):
    for bad in (None, {}, {"job_ids": []}, {"job_ids": "abc"}, {"job_ids": [1]}):
        with pytest.raises(ValidationError, match="job_ids"):
            run_shard(service, bad)


# --- provider calls and DynamoDB requests, counted against moto ----------------------------------------
@pytest.fixture
def batch_fleet(request, tmp_path):
    """250 RUNNING jobs in a DynamoDB store, each a real Batch job on moto (which runs them to the end)."""
    from chalicelib.store.dynamo import DynamoJobStore

    harness = batch_harness(request, tmp_path)
    backend = harness.backend
    settings = backend.settings
    client = boto(settings, "batch")
    jobs = _jobs("aws-batch", 250)
    definition = backend.job_definition(jobs[0].spec)  # one image, one staging shape: one definition
    store = DynamoJobStore(settings)
    store.create_tables()
    for i, job in enumerate(jobs):
        handle = Handle.of(job)
        submitted = client.submit_job(**backend.submit_request(job, handle, definition))
        job = job.with_changes(native_id=submitted["jobId"], native_name=handle.native_name, updated_at=NOW)
        store.create_job(job.with_changes(updated_at=NOW - timedelta(seconds=i)), make_history(job))
    only = replace(settings, enabled_backends=("aws-batch",), default_backend="aws-batch")
    service = JobService(store, only, backend_factory=lambda name, _settings: backend)
    harness.calls.clear()
    return service, harness.calls


# the orphan sweep's ListJobs: one page per job queue (CPU and GPU) and live status (SUBMITTED ... RUNNING);
# moto ended the fleet's jobs, so none is live and no queue has a second page
SWEEP_LISTS = 2 * 5


def test_250_active_batch_jobs_cost_3_describe_jobs_calls_and_no_second_read_of_a_job(batch_fleet):
    service, calls = batch_fleet
    dynamodb = count_dynamodb(service.store)
    decisions = reconcile(service)
    assert collections.Counter(calls) == {"batch:DescribeJobs": 3, "batch:ListJobs": SWEEP_LISTS}
    healed = [d for d in decisions if d.action is Action.APPLY]
    assert len(decisions) == 250 and healed  # moto ran them: their end is applied
    # one active-index query; each heal is its guarded write and its history entry, with no GetItem
    assert dynamodb["GetItem"] == 0
    assert dynamodb["UpdateItem"] == dynamodb["PutItem"] == len(healed)


@pytest.mark.slow  # ~15 s on a loaded 2-core machine: 250 Batch jobs on moto, healed through DynamoDB
def test_shards_handed_on_read_each_job_once_and_together_make_the_same_3_calls(batch_fleet):
    service, calls = batch_fleet
    service.settings = replace(service.settings, reconcile_shard_jobs=100)
    handed: list[list[str]] = []
    decisions = reconcile(service, fan_out=handed.append)
    assert [len(s) for s in handed] == [100, 50]
    assert [d.action for d in decisions].count(Action.SHARD) == 2
    # the shard this invocation kept, and the sweep (the schedule's own invocation sweeps)
    assert collections.Counter(calls) == {"batch:DescribeJobs": 1, "batch:ListJobs": SWEEP_LISTS}
    dynamodb = count_dynamodb(service.store)
    for shard in handed:
        shard_decisions = reconcile_shard(service, shard)
        assert sorted(d.job_id for d in shard_decisions) == sorted(shard)
    assert collections.Counter(calls) == {"batch:DescribeJobs": 3, "batch:ListJobs": SWEEP_LISTS}
    assert dynamodb["BatchGetItem"] == 2 and dynamodb["GetItem"] == 0 and dynamodb["Query"] == 0


def test_sagemaker_reads_running_jobs_from_list_pages_and_describes_only_what_the_list_cannot_say(
    tmp_path, moto_endpoint, monkeypatch
):
    """moto completes a training job at once and leaves SecondaryStatus out of its summaries (the API
    documents it): the jobs are put back InProgress/Training, and the field added, in moto's own models."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker import models as sagemaker_models

    from chalicelib.backends.aws.sagemaker import SageMakerBackend

    region = "ap-southeast-2"  # a region no other test uses: moto pages over every job of the region
    settings = make_settings(
        tmp_path, moto_endpoint, AWS_REGION=region, JOBPLANE_SAGEMAKER_ROLE="arn:aws:iam::123456789012:role/r"
    )
    backend = SageMakerBackend(settings)
    calls = record_calls(backend)
    jobs = [make_job("sagemaker", status=JobStatus.RUNNING) for _ in range(150)]
    for job in jobs:
        backend.client().create_training_job(**backend.training_job_request(job, Handle.of(job)))
    moto = sagemaker_models.sagemaker_backends[DEFAULT_ACCOUNT_ID][region]
    for job in jobs[:148]:
        found = moto.training_jobs[Handle.of(job).native_name]
        found.training_job_status, found.secondary_status, found.training_end_time = "InProgress", "Training", None
    listed = moto.list_training_jobs

    def with_secondary_status(*args, **kwargs):
        page = listed(*args, **kwargs)
        for summary in page["TrainingJobSummaries"]:
            summary["SecondaryStatus"] = moto.training_jobs[summary["TrainingJobName"]].secondary_status
        return page

    monkeypatch.setattr(moto, "list_training_jobs", with_secondary_status)
    unknown = make_job("sagemaker")
    calls.clear()
    seen = backend.describe_many([Handle.of(j) for j in [*jobs, unknown]])
    # 2 pages of InProgress and 2 of Stopping (moto cuts pages from every job of the region before it
    # filters; SageMaker filters first: 1 page); the 2 completed jobs and the unknown one described alone
    assert collections.Counter(calls) == {"sagemaker:ListTrainingJobs": 4, "sagemaker:DescribeTrainingJob": 3}
    assert {seen[j.job_id].native_status for j in jobs[:148]} == {"InProgress/Training"}
    assert {seen[j.job_id].status for j in jobs[148:]} == {JobStatus.SUCCEEDED}
    assert seen[unknown.job_id] is None
    described = backend.describe(Handle.of(jobs[0]))
    assert seen[jobs[0].job_id] == replace(described, started_at=None, usage=None)


# --- the deployed wiring: the schedule hands shards to reconcile_shard -----------------------------------
class _CountingBackend(ScriptedBackend):
    """Every job it is asked about runs, in sync; it records which jobs each describe_many was about."""

    def __init__(self, settings):
        super().__init__(settings)
        self.asked: list[list[str]] = []

    def _describe_many_impl(self, handles):
        self.asked.append([h.job_id for h in handles])
        return super()._describe_many_impl(handles)


def test_the_schedule_keeps_one_shard_and_hands_the_rest_to_reconcile_shard(tmp_path, moto_endpoint):
    from chalice.test import Client

    import app as app_module
    from chalicelib import deps
    from tests.factories import make_stores, use_stores, wait_for

    settings = make_settings(
        tmp_path, moto_endpoint, JOBPLANE_RECONCILE_SHARD_JOBS="100", JOBPLANE_RECONCILE_ASYNC="thread"
    )
    stores = make_stores(settings)
    backend = _CountingBackend(settings)
    jobs = _jobs("local", 150)
    for job in jobs:
        backend.resources[Handle.of(job).native_name] = "Running"
        stores["jobs"].create_job(job, make_history(job))
    use_stores(settings, stores, service=JobService(stores["jobs"], settings, backend_factory=lambda *_: backend))
    try:
        with Client(app_module.app) as client:
            event = client.events.generate_cw_event(
                source="aws.events", detail_type="Scheduled Event", detail={}, resources=["arn:aws:events:rule/r"]
            )
            tick = client.lambda_.invoke("reconcile", event).payload
            assert [r["action"] for r in tick].count("shard") == 1
            assert [r["action"] for r in tick].count("none") == 100
            wait_for(lambda: len(backend.asked) == 2, what="the shard handed on to be read")
            assert sorted(i for asked in backend.asked for i in asked) == sorted(j.job_id for j in jobs)
            # oldest last event first: the tick kept the 100 stalest jobs
            assert set(backend.asked[0]) == {j.job_id for j in jobs[50:]}
            direct = client.lambda_.invoke("reconcile_shard", {"job_ids": [jobs[0].job_id, "f" * 32]}).payload
            assert direct == [{"job_id": jobs[0].job_id, "action": "none", "reason": "in sync (Running)"}]
    finally:
        deps.reset()


def test_deployed_shards_go_to_the_reconcile_shard_function_as_event_invocations(tmp_path):
    import json

    import boto3
    from botocore.stub import Stubber

    from chalicelib.notify.invoke import LambdaInvoker, ThreadInvoker, shard_invoker

    assert isinstance(shard_invoker(make_settings(tmp_path, JOBPLANE_STAGE="local"), print), ThreadInvoker)
    client = boto3.client("lambda", region_name="us-east-1")
    invoker = shard_invoker(make_settings(tmp_path, JOBPLANE_STAGE="prod"), print, client)
    assert isinstance(invoker, LambdaInvoker)
    payload = {"job_ids": ["a" * 32]}
    with Stubber(client) as stub:
        stub.add_response(
            "invoke",
            {"StatusCode": 202},
            {
                "FunctionName": "jobplane-prod-reconcile_shard",
                "InvocationType": "Event",
                "Payload": json.dumps(payload).encode(),
            },
        )
        invoker.invoke(payload)
        stub.assert_no_pending_responses()


def test_vertex_lists_the_stages_unfinished_custom_jobs_100_a_page(tmp_path, fake_gcp):
    from chalicelib.backends.gcp.vertex import VertexBackend
    from tests.factories import gcp_env

    backend = VertexBackend(make_settings(tmp_path, **gcp_env(fake_gcp.endpoint)))
    jobs = [make_job("vertex") for _ in range(3)]
    launched = {j.job_id: backend.launch(j) for j in jobs}
    fake_gcp.requests.clear()
    seen = backend.describe_many([replace(Handle.of(j), native_id=launched[j.job_id].native_id) for j in jobs])
    assert {o.native_status for o in seen.values()} == {"JOB_STATE_PENDING"}
    (listing,) = fake_gcp.requests  # one list call, no get per job
    assert listing["method"] == "GET" and listing["path"].endswith("/customJobs")
    assert listing["query"]["pageSize"] == "100"
    wanted = listing["query"]["filter"]
    assert 'labels.jobplane-stage="test"' in wanted and 'labels.jobplane-managed="true"' in wanted
    for ended in ("SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED", "PARTIALLY_SUCCEEDED"):
        assert f'state!="JOB_STATE_{ended}"' in wanted
