"""Candidates: backends in the spec's order, and within each its regions and GPU types by catalog price."""

from __future__ import annotations

import copy

import boto3
import pytest

from chalicelib.auth import Principal
from chalicelib.backends import get_backend
from chalicelib.errors import ValidationError
from chalicelib.events import handle_state_change
from chalicelib.jobs.model import Candidate, JobStatus
from chalicelib.planner import _price, candidates
from tests.factories import fixture_json, make_settings, moto_service, noop_spec

GPU = {"gpus": 1, "gpu_type": "A100"}
CAPACITY_REASON = (
    "CapacityError: Unable to provision requested ML compute capacity. Please retry using a different ML instance type."
)


@pytest.fixture
def aws(tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="sagemaker,ec2,vertex,local", JOBPLANE_GCP_PROJECT="p")
    return settings, (lambda name: get_backend(name, settings))


def test_backends_keep_the_spec_order_and_each_backends_options_go_cheapest_first(aws):
    settings, make = aws
    spec = noop_spec(
        image="train:1",
        backend="sagemaker",
        fallback=["ec2"],
        resources=GPU,
        gpu_types=["A10G"],
        regions=["us-west-2", "us-east-1"],
    )
    found = [Candidate.parse(c) for c in candidates(spec, "sagemaker", settings, make)]
    assert [c.backend for c in found] == ["sagemaker"] * 4 + ["ec2"] * 4
    assert {(c.region, c.gpu_type) for c in found[:4]} == {
        (r, g) for r in ("us-west-2", "us-east-1") for g in ("A100", "A10G")
    }
    for backend in ("sagemaker", "ec2"):
        prices = [_price(c, spec, settings) for c in found if c.backend == backend]
        known = [p for p in prices if p is not None]
        assert known == sorted(known) and prices[: len(known)] == known  # cheapest first, unpriced last
    # the A10G the spec lists second is far cheaper than its A100: it comes first
    assert (found[0].gpu_type, found[4].gpu_type) == ("A10G", "A10G")


def test_each_cloud_takes_the_regions_it_names_and_a_gcp_backend_runs_in_any_of_its_own(aws):
    settings, make = aws
    spec = noop_spec(image="train:1", backend="vertex", fallback=["ec2"], regions=["us-east-1"])
    assert candidates(spec, "vertex", settings, make) == ("ec2@us-east-1",)
    both = noop_spec(image="train:1", backend="vertex", fallback=["ec2"], regions=["europe-west4", "us-east-1"])
    assert candidates(both, "vertex", settings, make) == ("vertex@europe-west4", "ec2@us-east-1")
    only_vertex = noop_spec(image="train:1", backend="vertex", regions=["us-east-1"])
    with pytest.raises(ValidationError) as err:
        candidates(only_vertex, "vertex", settings, make)
    assert err.value.details == [
        {"field": "regions", "message": "vertex runs in gcp regions, the spec names us-east-1"}
    ]


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"regions": ["US East"]}, "regions[0]", "'US East' is not a region name (like us-east-1 or us-central1)"),
        ({"regions": ["us-east-1", "us-east-1"]}, "regions[1]", "each region is listed once"),
        ({"gpu_types": ["A10G"]}, "gpu_types", "gpu_types needs resources.gpus of 1 or more and no instance_type"),
        ({"gpu_types": ["B300"], "resources": GPU}, "gpu_types[0]", None),
    ],
)
def test_regions_and_gpu_types_are_validated_naming_the_field(spec, field, message):
    with pytest.raises(ValidationError) as err:
        noop_spec(image="train:1", **spec)
    detail = err.value.details[0]
    assert detail["field"] == field
    if message:
        assert detail["message"] == message
    else:
        assert "A10G" in detail["message"]  # names the valid GPU types


def test_a_capacity_failure_in_one_region_moves_the_job_to_the_next_region(memory_store, tmp_path):
    with moto_service(memory_store, tmp_path, "sagemaker,local", regions=("us-west-2",)) as (service, _):
        spec = noop_spec(image="train:1", backend="sagemaker", regions=["us-east-1", "us-west-2"], resources=GPU)
        job, _ = service.submit(Principal("alice"), spec)
        # the catalog prices SageMaker in us-east-1 only: the priced region first, then the spec's other one
        assert job.candidates == ("sagemaker@us-east-1", "sagemaker@us-west-2")
        assert (job.status, job.region) == (JobStatus.LAUNCHING, "us-east-1")
        event = copy.deepcopy(fixture_json("events", "sagemaker-training-job-state-change.json"))
        event["detail"].pop("Tags", None)
        event["detail"].update(
            TrainingJobName=job.native_name,
            TrainingJobStatus="Failed",
            SecondaryStatus="Failed",
            FailureReason=CAPACITY_REASON,
        )
        event["detail"].pop("TrainingStartTime", None)
        handle_state_change(event, service)
        moved = memory_store.get_job(job.job_id)
        assert (moved.status, moved.region, moved.attempt) == (JobStatus.LAUNCHING, "us-west-2", 2)
        west = boto3.client("sagemaker", region_name="us-west-2")
        found = west.describe_training_job(TrainingJobName=moved.native_name)
        assert found["TrainingJobArn"].split(":")[3] == "us-west-2"
        assert moved.native_name == f"jp-{job.job_id}-a2"
