"""Account quotas: which quota a job draws on in the provider's unit, read from Service Quotas (botocore Stubber,
the published response shapes) and Compute Engine regions.get (the fake), cached per tick, and the failover."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib.auth import Principal
from chalicelib.jobs.capacity import (
    QuotaFigure,
    claims_for,
    ec2_vcpus,
    families_of,
    quota_needs,
    quota_refusal,
)
from chalicelib.jobs.model import JobStatus
from chalicelib.jobs.quotas import QuotaBook, book_for
from chalicelib.jobs.service import JobService
from chalicelib.planner import plan
from chalicelib.reaper import reconcile_all
from tests.factories import GCP_PROJECT, ScriptedBackend, gcp_env, make_settings, noop_spec

ALICE = Principal("alice")
G5_CODE = "L-1F0C5D7A"  # SageMaker's codes are opaque: the name is what says the instance type


def _quota(code, name, value, service="sagemaker", service_name="Amazon SageMaker"):
    """A ServiceQuota as ListServiceQuotas / GetServiceQuota return it (boto3 docs' response syntax)."""
    return {
        "ServiceCode": service,
        "ServiceName": service_name,
        "QuotaArn": f"arn:aws:servicequotas:us-east-1:123456789012:{service}/{code}",
        "QuotaCode": code,
        "QuotaName": name,
        "Value": float(value),
        "Unit": "None",
        "Adjustable": True,
        "GlobalQuota": False,
    }


def _stubbed(region="us-east-1"):
    client = boto3.client("service-quotas", region_name=region)
    return client, Stubber(client)


def _a10g(**overrides):
    return noop_spec(image="train:1", resources={"gpus": 1, "gpu_type": "A10G"}, **overrides)


# --- the pure part: which quota, in which unit ---------------------------------------------------------
def test_each_backend_draws_on_its_quota_in_the_providers_unit():
    (sm,) = quota_needs("sagemaker", _a10g(), "us-east-1")
    assert (sm.name, sm.unit, sm.amount) == ("ml.g5.xlarge for training job usage", "instances", 1)
    (spot,) = quota_needs(
        "sagemaker", noop_spec(image="t:1", resources={"gpus": 1, "gpu_type": "A10G", "spot": True}), "x"
    )
    assert spot.name == "ml.g5.xlarge for spot training job usage"
    (ec2,) = quota_needs("ec2", noop_spec(resources={"gpus": 4, "gpu_type": "A10G"}), "us-west-2")
    assert (ec2.code, ec2.name, ec2.unit, ec2.amount) == (
        "L-DB2E81BA",
        "Running On-Demand G and VT instances",
        "vCPUs",
        48,
    )
    (p3,) = quota_needs("ec2", noop_spec(resources={"gpus": 1, "gpu_type": "V100", "spot": True}), "us-east-1")
    assert (p3.code, p3.amount) == ("L-7212CCBC", 8)  # p3.2xlarge: 8 vCPUs, "All P Spot Instance Requests"
    (gce,) = quota_needs("gce", noop_spec(resources={"gpus": 2, "gpu_type": "A100"}), "us-central1")
    assert (gce.code, gce.unit, gce.amount) == ("NVIDIA_A100_GPUS", "GPUs", 2)
    (pre,) = quota_needs("gce", noop_spec(resources={"gpus": 1, "gpu_type": "L4", "spot": True}), "us-central1")
    assert pre.code == "PREEMPTIBLE_NVIDIA_L4_GPUS"
    assert quota_needs("aws-batch", _a10g(), "us-east-1") == ()  # its compute environment holds the instances
    assert [ec2_vcpus(t) for t in ("m5.large", "g5.xlarge", "p4d.24xlarge", "g4dn.metal", "x.weird")] == [
        2,
        4,
        96,
        96,
        None,
    ]


def test_a_refusal_names_the_quota_and_its_figures():
    (need,) = quota_needs("sagemaker", _a10g(), "us-east-1")
    figure = QuotaFigure(G5_CODE, need.name, 0.0)
    assert quota_refusal(need, figure) == (
        f"ml.g5.xlarge for training job usage ({G5_CODE}) in us-east-1: 0 instances; the job needs 1 instances"
    )
    assert quota_refusal(need, QuotaFigure(G5_CODE, need.name, 1.0)) is None
    (gce,) = quota_needs("gce", noop_spec(resources={"gpus": 2, "gpu_type": "A100"}), "us-central1")
    used = QuotaFigure("NVIDIA_A100_GPUS", "NVIDIA_A100_GPUS", 8.0, 7.0)  # usage counts: one left
    assert quota_refusal(gce, used) == "NVIDIA_A100_GPUS in us-central1: 8 GPUs, 7 in use; the job needs 2 GPUs"


def test_the_readmes_operator_limits_apply_to_the_jobs_they_name():
    """`sagemaker:ml.g5=4` holds an A10G job that names no instance type (its family was "A10G" alone)."""
    spec = _a10g()
    assert families_of("sagemaker", spec) == ("A10G", "ml.g5")
    assert families_of("ec2", spec) == ("A10G", "g5")
    assert families_of("gce", noop_spec(resources={"gpus": 1, "gpu_type": "L4"})) == ("L4", "g2-standard")
    limits = {"sagemaker:ml.g5": 4, "sagemaker:*": 8, "local:cpu": 2}
    pools = [(c.pool, c.units, limit) for c, limit in claims_for("sagemaker", spec, limits)]
    assert pools == [("sagemaker:ml.g5", 1, 4), ("sagemaker:*", 1, 8)]
    assert [c.pool for c, _ in claims_for("local", noop_spec(), limits)] == ["local:cpu"]


# --- reading: Service Quotas --------------------------------------------------------------------------
def test_sagemaker_quotas_are_read_by_name_over_every_page_and_cached_until_the_next_tick(tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_QUOTAS="read")
    client, stub = _stubbed()
    first = {
        "Quotas": [_quota("L-0A1B2C3D", "ml.p3.2xlarge for training job usage", 2)],
        "NextToken": "page-2",
    }
    second = {"Quotas": [_quota(G5_CODE, "ml.g5.xlarge for training job usage", 0)]}
    stub.add_response("list_service_quotas", first, {"ServiceCode": "sagemaker", "MaxResults": 100})
    stub.add_response(
        "list_service_quotas", second, {"ServiceCode": "sagemaker", "MaxResults": 100, "NextToken": "page-2"}
    )
    book = QuotaBook(settings, client=lambda service, region: client)
    with stub:
        why = book.refusal("sagemaker", _a10g(), None)
        assert why == (
            f"quota ml.g5.xlarge for training job usage ({G5_CODE}) in us-east-1: 0 instances; "
            "the job needs 1 instances"
        )
        assert book.refusal("sagemaker", _a10g(), "us-east-1") == why  # cached: no third call
        assert (
            book.refusal("sagemaker", noop_spec(image="t:1", resources={"gpus": 1, "gpu_type": "V100"}), None) is None
        )
        stub.assert_no_pending_responses()
    assert book.calls == {"ListServiceQuotas": 2}
    book.new_tick()
    stub.add_response("list_service_quotas", {"Quotas": [_quota(G5_CODE, "ml.g5.xlarge for training job usage", 3)]})
    with stub:
        assert book.refusal("sagemaker", _a10g(), None) is None  # raised meanwhile: read again next tick
    (claim, limit), *_ = book.claims("sagemaker", _a10g(), None)
    assert (claim.pool, claim.units, limit) == (
        "quota:training-instances@us-east-1:ml.g5.xlarge for training job usage",
        1,
        3,
    )


def test_ec2_vcpu_quota_is_read_by_code(tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_QUOTAS="read")
    client, stub = _stubbed("us-west-2")
    quota = _quota(
        "L-DB2E81BA", "Running On-Demand G and VT instances", 32, "ec2", "Amazon Elastic Compute Cloud (Amazon EC2)"
    )
    stub.add_response("get_service_quota", {"Quota": quota}, {"ServiceCode": "ec2", "QuotaCode": "L-DB2E81BA"})
    book = QuotaBook(settings, client=lambda service, region: client)
    with stub:
        why = book.refusal("ec2", noop_spec(resources={"gpus": 4, "gpu_type": "A10G"}), "us-west-2")
    assert why == (
        "quota Running On-Demand G and VT instances (L-DB2E81BA) in us-west-2: 32 vCPUs; the job needs 48 vCPUs"
    )
    assert book.refusal("ec2", noop_spec(resources={"gpus": 1, "gpu_type": "A10G"}), "us-west-2") is None  # 4 fit


def test_a_quota_that_cannot_be_read_refuses_nothing_and_is_not_read_again_this_tick(tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_QUOTAS="read")
    client, stub = _stubbed()
    stub.add_client_error(
        "list_service_quotas", "AccessDeniedException", "not authorized to perform servicequotas:ListServiceQuotas"
    )
    book = QuotaBook(settings, client=lambda service, region: client)
    with stub:
        assert book.refusal("sagemaker", _a10g(), None) is None
        assert book.refusal("sagemaker", _a10g(), None) is None
    assert book.calls == {"ListServiceQuotas": 1}
    off = QuotaBook(make_settings(tmp_path), client=lambda s, r: pytest.fail("JOBPLANE_QUOTAS=off reads nothing"))
    assert off.refusal("sagemaker", _a10g(), None) is None


# --- reading: Compute Engine regions.get ---------------------------------------------------------------
def test_gce_gpu_quota_counts_what_is_left_from_regions_get(tmp_path, fake_gcp):
    settings = make_settings(tmp_path, **gcp_env(fake_gcp.endpoint), JOBPLANE_QUOTAS="read")
    fake_gcp.region_quotas["us-central1"] = [
        {"metric": "CPUS", "limit": 24.0, "usage": 4.0},
        {"metric": "NVIDIA_A100_GPUS", "limit": 8.0, "usage": 7.0},
        {"metric": "PREEMPTIBLE_NVIDIA_A100_GPUS", "limit": 16.0, "usage": 0.0},
    ]
    book = QuotaBook(settings)
    two = noop_spec(image="t:1", resources={"gpus": 2, "gpu_type": "A100"})
    assert book.refusal("gce", two, None) == (
        "quota NVIDIA_A100_GPUS in us-central1: 8 GPUs, 7 in use; the job needs 2 GPUs"
    )
    spot = noop_spec(image="t:1", resources={"gpus": 2, "gpu_type": "A100", "spot": True})
    assert book.refusal("gce", spot, None) is None
    assert book.claims("gce", two, None) == ()  # usage is reported: no counter of jobplane's own
    gets = [r for r in fake_gcp.requests if r["path"].endswith("/regions/us-central1")]
    assert len(gets) == 1 and gets[0]["path"] == f"/compute/v1/projects/{GCP_PROJECT}/regions/us-central1"


# --- the planner and dispatch -------------------------------------------------------------------------
def _service(store, tmp_path, stub_client):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="sagemaker,ec2,local", JOBPLANE_QUOTAS="read")
    backends = {}
    for name in ("sagemaker", "ec2", "local"):
        backend = ScriptedBackend(settings)
        backend.name = name
        backends[name] = backend
    book_for(settings).client_factory = lambda service, region: stub_client
    return JobService(store, settings, backend_factory=lambda name, _settings: backends[name]), backends


def test_dispatch_fails_over_from_an_exhausted_quota_naming_it(memory_store, tmp_path):
    client, stub = _stubbed()
    stub.add_response("list_service_quotas", {"Quotas": [_quota(G5_CODE, "ml.g5.xlarge for training job usage", 0)]})
    quota = _quota("L-DB2E81BA", "Running On-Demand G and VT instances", 64, "ec2", "Amazon EC2")
    stub.add_response("get_service_quota", {"Quota": quota}, {"ServiceCode": "ec2", "QuotaCode": "L-DB2E81BA"})
    service, backends = _service(memory_store, tmp_path, client)
    with stub:
        job, _ = service.submit(ALICE, _a10g(backend="sagemaker", fallback=["ec2"]))
    assert job.status is JobStatus.LAUNCHING and job.backend == "ec2"
    assert backends["sagemaker"].launch_calls == 0 and backends["ec2"].launch_calls == 1
    assert job.planner_reason == "failover from sagemaker (quota_exceeded) to ec2"
    reasons = [e.reason for e in memory_store.history(job.job_id) if e.to_status is JobStatus.QUEUED]
    assert reasons[-1] == (
        f"sagemaker: quota ml.g5.xlarge for training job usage ({G5_CODE}) in us-east-1: 0 instances; "
        "the job needs 1 instances; failing over to ec2"
    )
    # ec2 draws 4 vCPUs on its quota's counter (Service Quotas reports no usage): released when it ends
    assert [c.to_list() for c in job.claims] == [["quota:vcpus@us-east-1:L-DB2E81BA", 4]]


def test_the_quota_counter_holds_a_second_job_when_the_first_took_the_last_instance(memory_store, tmp_path):
    client, stub = _stubbed()
    stub.add_response("list_service_quotas", {"Quotas": [_quota(G5_CODE, "ml.g5.xlarge for training job usage", 1)]})
    service, backends = _service(memory_store, tmp_path, client)
    with stub:
        first, _ = service.submit(ALICE, _a10g(backend="sagemaker"))
        second, _ = service.submit(ALICE, _a10g(backend="sagemaker"))
    assert first.status is JobStatus.LAUNCHING
    assert second.status is JobStatus.QUEUED
    assert second.status_reason == (
        "waiting for capacity: quota:training-instances@us-east-1:ml.g5.xlarge for training job usage "
        "is at its limit of 1"
    )


def test_auto_skips_a_backend_without_quota_and_says_why(memory_store, tmp_path):
    client, stub = _stubbed()
    stub.add_response("list_service_quotas", {"Quotas": [_quota(G5_CODE, "ml.g5.xlarge for training job usage", 0)]})
    quota = _quota("L-DB2E81BA", "Running On-Demand G and VT instances", 64, "ec2", "Amazon EC2")
    stub.add_response("get_service_quota", {"Quota": quota}, {"ServiceCode": "ec2", "QuotaCode": "L-DB2E81BA"})
    service, backends = _service(memory_store, tmp_path, client)
    with stub:
        name, why = plan(_a10g(backend="auto"), service.settings, service.backend)
    assert name == "ec2"
    assert f"sagemaker: quota ml.g5.xlarge for training job usage ({G5_CODE}) in us-east-1: 0 instances" in why


def test_reconcile_reads_the_quotas_again_each_tick(memory_store, tmp_path):
    client, stub = _stubbed()
    service, _ = _service(memory_store, tmp_path, client)
    book = book_for(service.settings)
    stub.add_response("list_service_quotas", {"Quotas": [_quota(G5_CODE, "ml.g5.xlarge for training job usage", 0)]})
    with stub:
        job, _ = service.submit(ALICE, _a10g(backend="sagemaker", capacity_wait_minutes=30))
    assert job.status is JobStatus.QUEUED and "0 instances" in job.status_reason
    stub.add_response("list_service_quotas", {"Quotas": [_quota(G5_CODE, "ml.g5.xlarge for training job usage", 2)]})
    with stub:
        reconcile_all(service)  # the increase came through: this tick reads it and launches
    assert memory_store.get_job(job.job_id).status is JobStatus.LAUNCHING
    assert book.calls == {"ListServiceQuotas": 2}


def test_a_read_quota_is_kept_five_minutes_and_the_policy_grants_the_reads(tmp_path):
    from chalicelib.backends import descriptor

    settings = make_settings(tmp_path, JOBPLANE_QUOTAS="read")
    client, stub = _stubbed()
    now = [1000.0]
    book = QuotaBook(settings, client=lambda service, region: client, clock=lambda: now[0])
    for value in (0, 1):
        stub.add_response(
            "list_service_quotas", {"Quotas": [_quota(G5_CODE, "ml.g5.xlarge for training job usage", value)]}
        )
    with stub:
        assert book.refusal("sagemaker", _a10g(), None) is not None
        now[0] += 299
        assert book.refusal("sagemaker", _a10g(), None) is not None  # still the cached 0
        now[0] += 2
        assert book.refusal("sagemaker", _a10g(), None) is None  # read again after 5 minutes: 1
    assert book.calls == {"ListServiceQuotas": 2}
    assert "servicequotas:ListServiceQuotas" in descriptor("sagemaker").iam_actions
    assert "servicequotas:GetServiceQuota" in descriptor("ec2").iam_actions
    assert "compute.regions.get" in descriptor("gce").iam_actions
