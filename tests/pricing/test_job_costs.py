"""A job's cost on every backend: the catalog's price of what it ran on times the hours it billed, per attempt."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from botocore.stub import Stubber

from chalicelib.backends import get_backend
from chalicelib.backends.aws.ec2 import Ec2Backend
from chalicelib.backends.aws.sagemaker import SageMakerBackend
from chalicelib.backends.base import Handle
from chalicelib.pricing.jobs import AttemptCost, Usage, costs_from_text, costs_to_text, total
from chalicelib.pricing.tables import DATA_DIR
from tests.factories import T0, boto, make_job, make_settings

GPU = {"image": "train:1", "command": ["python", "train.py"], "resources": {"gpus": 1, "gpu_type": "A10G"}}
T4 = {"image": "train:1", "command": ["python", "train.py"], "resources": {"gpus": 1, "gpu_type": "T4"}}
HOURS = 1.5


def row(provider: str, sku: str, region: str, **match) -> dict:
    """A row of the packaged table, read from its JSON file here (not through the code under test)."""
    rows = json.loads((DATA_DIR / f"{provider}.json").read_text())["rows"]
    found = [
        r for r in rows if r["sku"] == sku and r["region"] == region and all(r.get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, (provider, sku, region, found)
    return found[0]


def read_at(provider: str) -> str:
    return json.loads((DATA_DIR / f"{provider}.json").read_text())["read_at"]


def ran(backend: str, spec: dict, hours: float = HOURS, **changes):
    """A job on `backend` that started at T0 and is priced up to T0 + hours."""
    job = make_job(backend, spec, started_at=T0, native_name="jp-x", **changes)
    return job, T0 + timedelta(hours=hours)


@pytest.fixture
def settings(tmp_path):
    return make_settings(
        tmp_path,
        JOBPLANE_BACKENDS="sagemaker,ec2,aws-batch,ecs,gce,vertex,kubernetes,local",
        JOBPLANE_GCP_PROJECT="p",
        JOBPLANE_GCP_STATUS_URI="gs://status",
        JOBPLANE_LOCAL_PRICE_PER_HOUR="2.5",
    )


@pytest.mark.parametrize(("spot", "column"), [(False, "on_demand"), (True, "spot")])
def test_an_ec2_job_costs_its_instance_types_price_for_its_purchase_option_times_its_hours(settings, spot, column):
    job, until = ran("ec2", {**GPU, "resources": {**GPU["resources"], "spot": spot}})
    figure = get_backend("ec2", settings).attempt_cost(job, until)
    rate = row("ec2", "g5.xlarge", "us-east-1")[column]
    purchase = "spot" if spot else "on-demand"
    assert (figure.priced, figure.usd_per_hour) == (f"ec2 g5.xlarge {purchase} in us-east-1", rate)
    assert figure.hours == HOURS and figure.usd == pytest.approx(rate * HOURS)
    assert figure.prices_of == read_at("ec2")


def test_an_ec2_job_is_priced_as_describe_instances_says_it_runs_not_as_the_spec_asked(settings):
    from moto import mock_aws

    with mock_aws():
        backend = Ec2Backend(settings)
        ec2 = boto(settings, "ec2")
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        started = ec2.run_instances(
            ImageId=image,
            InstanceType="g5.2xlarge",
            MinCount=1,
            MaxCount=1,
            InstanceMarketOptions={"MarketType": "spot"},
        )["Instances"][0]
        instance = ec2.describe_instances(InstanceIds=[started["InstanceId"]])["Reservations"][0]["Instances"][0]
    seen = backend.observe(instance)
    assert seen.usage == Usage("g5.2xlarge", 1, True)
    job, until = ran("ec2", GPU)  # the spec asked for on-demand g5.xlarge
    figure = backend.attempt_cost(job, until, seen.usage)
    assert figure.usd_per_hour == row("ec2", "g5.2xlarge", "us-east-1")["spot"]
    # a later report that leaves the type out (an event) prices what the record says it ran on
    again = backend.attempt_cost(job.with_changes(costs=(figure,)), until, None)
    assert again.usd_per_hour == figure.usd_per_hour


def test_ec2_in_another_region_uses_that_regions_price(settings):
    job, until = ran("ec2", GPU, region="eu-west-1")
    figure = get_backend("ec2", settings).attempt_cost(job, until)
    assert figure.usd_per_hour == row("ec2", "g5.xlarge", "eu-west-1")["on_demand"]


def describe_training_job(name: str, **extra) -> dict:
    """A DescribeTrainingJob response as the API reference lays it out (the Stubber checks it against botocore's
    model of the service)."""
    return {
        "TrainingJobName": name,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://bucket/outputs/{name}/output/model.tar.gz"},
        "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed",
        "AlgorithmSpecification": {"TrainingImage": "train:1", "TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 10800},
        "CreationTime": T0,
        "TrainingStartTime": T0,
        "TrainingEndTime": T0 + timedelta(hours=HOURS),
        "LastModifiedTime": T0 + timedelta(hours=HOURS),
        "EnableManagedSpotTraining": True,
        "TrainingTimeInSeconds": int(HOURS * 3600),
        **extra,
    }


def test_sagemaker_managed_spot_costs_the_on_demand_rate_for_its_billable_seconds_only(settings):
    backend = SageMakerBackend(settings)
    client = boto(settings, "sagemaker")
    backend.set_client("sagemaker", client)
    job, until = ran("sagemaker", {**GPU, "resources": {**GPU["resources"], "spot": True}})
    name = f"jp-{job.job_id}"
    with Stubber(client) as stub:
        stub.add_response(
            "describe_training_job", describe_training_job(name, BillableTimeInSeconds=1620), {"TrainingJobName": name}
        )
        seen = backend.describe(Handle(job.job_id, name))
    assert seen.usage == Usage("ml.g5.xlarge", 1, True, 1620.0)
    figure = backend.attempt_cost(job, until, seen.usage, final=True)
    rate = row("sagemaker", "ml.g5.xlarge", "us-east-1")["on_demand"]
    # 1620 billable seconds of 5400 trained: a 70 % saving, as AWS reports it
    assert figure.hours == pytest.approx(0.45) and figure.usd == pytest.approx(rate * 0.45)
    assert figure.reason == "BillableTimeInSeconds 1620" and figure.final
    assert figure.prices_of == row("sagemaker", "ml.g5.xlarge", "us-east-1")["read_at"]


def test_sagemaker_on_demand_without_billable_seconds_costs_its_run_time_times_its_instances(settings):
    backend = SageMakerBackend(settings)
    job, until = ran("sagemaker", GPU)
    figure = backend.attempt_cost(job, until, Usage("ml.g5.xlarge", 2, False))
    rate = row("sagemaker", "ml.g5.xlarge", "us-east-1")["on_demand"]
    assert figure.priced == "sagemaker 2 x ml.g5.xlarge on-demand in us-east-1"
    assert figure.usd == pytest.approx(2 * rate * HOURS)


@pytest.mark.parametrize(("spot", "column"), [(False, "on_demand"), (True, "spot")])
def test_a_gce_vm_costs_its_machine_plus_its_gpus(settings, spot, column):
    job, until = ran("gce", {**T4, "resources": {**T4["resources"], "spot": spot}})
    figure = get_backend("gce", settings).attempt_cost(job, until)
    rate = (
        row("gce", "n1-standard-8", "us-central1")[column]
        + row("gce", "nvidia-tesla-t4", "us-central1", count=1)[column]
    )
    purchase = "spot" if spot else "on-demand"
    assert figure.priced == f"gce n1-standard-8 + 1 x nvidia-tesla-t4 {purchase} in us-central1"
    assert figure.usd_per_hour == pytest.approx(rate) and figure.usd == pytest.approx(rate * HOURS)


def test_a_gce_machine_that_bundles_its_gpus_is_priced_with_them(settings):
    job, until = ran("gce", {**T4, "resources": {"gpus": 1, "gpu_type": "A100"}})
    figure = get_backend("gce", settings).attempt_cost(job, until)
    rate = row("gce", "a2-highgpu-1g", "us-central1")["on_demand"]
    rate += row("gce", "nvidia-tesla-a100", "us-central1", count=1)["on_demand"]
    assert figure.priced == "gce a2-highgpu-1g on-demand in us-central1"
    assert figure.usd == pytest.approx(rate * HOURS)


def test_a_cpu_ec2_job_is_unknown_because_the_snapshot_prices_gpu_types_only(settings):
    job, until = ran("ec2", {"image": "train:1", "command": ["t"], "resources": {"cpus": 2}})
    figure = get_backend("ec2", settings).attempt_cost(job, until)
    assert figure.usd is None and "ec2 has no price for m5.large in us-east-1" in figure.reason


def test_vertex_is_an_explicit_unknown_with_the_reason_never_zero(settings):
    job, until = ran("vertex", T4)
    figure = get_backend("vertex", settings).attempt_cost(job, until)
    assert figure.usd is None and figure.usd_per_hour is None
    assert "no authoritative table of that premium" in figure.reason
    spent = total((figure,))
    assert spent.usd is None and "no authoritative table" in spent.format()


@pytest.mark.parametrize(
    ("backend", "env", "why"),
    [
        ("aws-batch", {}, "AWS Batch has not said which instance the job runs on"),
        ("ecs", {}, "ECS has not said which container instance the task runs on"),
        ("ecs", {"JOBPLANE_ECS_LAUNCH_TYPE": "FARGATE"}, "Fargate bills per vCPU-hour and GB-hour"),
    ],
)
def test_batch_and_ecs_say_why_they_cannot_be_priced_before_they_are_placed(tmp_path, backend, env, why):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="aws-batch,ecs,local", **env)
    job, until = ran(backend, {**GPU, "resources": {"cpus": 2}} if env else GPU)
    figure = get_backend(backend, settings).attempt_cost(job, until)
    assert figure.usd is None and why in figure.reason


def test_kubernetes_prices_a_pinned_node_type_in_its_clusters_cloud_and_is_unknown_otherwise(tmp_path):
    clusters = json.dumps([{"name": "prod", "kind": "eks", "cluster": "ml", "region": "us-west-2"}])
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="kubernetes,local", JOBPLANE_K8S_CLUSTERS=clusters)
    pinned, until = ran("kubernetes", {**GPU, "resources": {"instance_type": "g5.xlarge", "gpus": 1}})
    figure = get_backend("kubernetes", settings).attempt_cost(pinned, until)
    assert figure.priced == "ec2 g5.xlarge on-demand in us-west-2 (the whole node)"
    assert figure.usd == pytest.approx(row("ec2", "g5.xlarge", "us-west-2")["on_demand"] * HOURS)
    free, _ = ran("kubernetes", GPU)
    unknown = get_backend("kubernetes", settings).attempt_cost(free, until)
    assert unknown.usd is None and "cluster prod picks the node" in unknown.reason


def test_kubernetes_on_gke_prices_a_pinned_node_from_the_gce_table_and_a_kubeconfig_cluster_is_unknown(tmp_path):
    clusters = json.dumps(
        [
            {"name": "gke", "kind": "gke", "project": "p", "location": "us-central1-a", "cluster": "ml"},
            {"name": "lab", "kind": "kubeconfig"},
        ]
    )
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="kubernetes,local", JOBPLANE_K8S_CLUSTERS=clusters)
    backend = get_backend("kubernetes", settings)
    pinned = {"image": "train:1", "command": ["t"], "resources": {"instance_type": "g2-standard-8", "spot": True}}
    job, until = ran("kubernetes", pinned)
    figure = backend.attempt_cost(job, until)
    rate = row("gce", "g2-standard-8", "us-central1")["spot"] + row("gce", "nvidia-l4", "us-central1", count=1)["spot"]
    assert figure.priced == "gce g2-standard-8 spot in us-central1 (the whole node)"
    assert figure.usd == pytest.approx(rate * HOURS)
    lab, _ = ran("kubernetes", {**pinned, "resources": {**pinned["resources"], "cluster": "lab"}})
    unknown = backend.attempt_cost(lab, until)
    assert unknown.usd is None and "cluster lab is a kubeconfig context" in unknown.reason


def test_a_local_job_costs_the_deployments_price_per_hour(settings):
    job, until = ran("local", {"command": ["true"]})
    figure = get_backend("local", settings).attempt_cost(job, until)
    assert (figure.usd_per_hour, figure.usd) == (2.5, pytest.approx(2.5 * HOURS))


def test_an_attempt_that_never_started_cost_nothing_even_where_the_price_is_unknown(settings):
    job = make_job("vertex", T4, native_name="jp-x")
    figure = get_backend("vertex", settings).attempt_cost(job, T0, final=True)
    assert (figure.usd, figure.hours, figure.reason) == (0.0, 0.0, "never started")


def test_attempts_sum_and_one_unknown_makes_the_total_unknown():
    known = AttemptCost(1, "ec2", None, "ec2 g5.xlarge", 1.0, "2026-01-21", 1.0, 1.0, final=True)
    older = AttemptCost(2, "sagemaker", None, "ml.g5.xlarge", 1.4, "2021-11-29", 0.5, 0.7, final=True)
    spent = total((known, older))
    assert spent.usd == pytest.approx(1.7) and spent.read_at.isoformat() == "2021-11-29"  # the oldest date
    assert spent.format() == "$1.70 (prices of 2021-11-29)"
    missing = AttemptCost(3, "vertex", None, "vertex", None, None, 1.0, None, "no price", final=True)
    assert total((known, missing)).usd is None
    assert total((known, missing)).format() == "unknown (attempt 3: no price)"
    assert costs_from_text(costs_to_text((known, missing))) == (known, missing)


def test_an_ecs_task_on_ec2_capacity_is_priced_by_its_container_instances_type(tmp_path):
    from moto import mock_aws

    from chalicelib.backends.aws.ecs import EcsBackend

    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="ecs,local")
    with mock_aws():
        ecs, ec2 = boto(settings, "ecs"), boto(settings, "ec2")
        ecs.create_cluster(clusterName=settings.ecs_cluster)
        image = ec2.describe_images()["Images"][0]["ImageId"]
        host = ec2.run_instances(ImageId=image, InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1)["Instances"][0]
        document = json.dumps({"instanceId": host["InstanceId"]})
        ecs.register_container_instance(cluster=settings.ecs_cluster, instanceIdentityDocument=document)
        backend = EcsBackend(settings)
        job = make_job("ecs", {**GPU, "resources": {"gpus": 1, "gpu_type": "T4"}})
        launched = backend.launch(job)
        seen = backend.describe(Handle(job.job_id, f"jp-{job.job_id}", 1, native_id=launched.native_id))
        assert backend.priced_by_placement  # reconcile describes it once more if its start came from a list
    assert seen.usage == Usage("g4dn.xlarge", 1, None)
    started, until = ran("ecs", GPU)
    figure = backend.attempt_cost(started, until, seen.usage)
    assert figure.priced == "ec2 g4dn.xlarge on-demand in us-east-1 (its container instance)"
    assert figure.usd == pytest.approx(row("ec2", "g4dn.xlarge", "us-east-1")["on_demand"] * HOURS)


def test_a_batch_job_is_priced_by_the_container_instance_describe_jobs_names(settings):
    from chalicelib.backends.aws.batch import BatchBackend

    backend = BatchBackend(settings)
    batch, ecs = boto(settings, "batch"), boto(settings, "ecs")
    backend.set_client("batch", batch)
    backend.set_client("ecs", ecs)
    job, until = ran("aws-batch", {**GPU, "resources": {**GPU["resources"], "spot": True}})
    instance = "arn:aws:ecs:us-east-1:123456789012:container-instance/AWSBatch-gpu-spot-4d1c/9f2e0c1a"
    detail = {  # DescribeJobs' JobDetail of a multi-container (ecsProperties) job, as the API reference has it
        "jobArn": "arn:aws:batch:us-east-1:123456789012:job/8b3f",
        "jobName": f"jp-{job.job_id}",
        "jobId": "8b3f",
        "jobQueue": "arn:aws:batch:us-east-1:123456789012:job-queue/gpu-spot",
        "status": "RUNNING",
        "createdAt": 1733140000000,
        "startedAt": 1733140060000,
        "jobDefinition": "arn:aws:batch:us-east-1:123456789012:job-definition/jp-train:1",
        "ecsProperties": {
            "taskProperties": [
                {
                    "containerInstanceArn": instance,
                    "taskArn": "arn:aws:ecs:us-east-1:123456789012:task/AWSBatch-gpu-spot-4d1c/77aa",
                    "containers": [{"name": "job", "image": "train:1"}],
                }
            ]
        },
    }
    described = {
        "containerInstances": [
            {
                "containerInstanceArn": instance,
                "ec2InstanceId": "i-0abc",
                "status": "ACTIVE",
                "attributes": [
                    {"name": "ecs.os-type", "value": "linux"},
                    {"name": "ecs.instance-type", "value": "g5.2xlarge"},
                ],
            }
        ],
        "failures": [],
    }
    with Stubber(batch) as batch_stub, Stubber(ecs) as ecs_stub:
        batch_stub.add_response("describe_jobs", {"jobs": [detail]}, {"jobs": ["8b3f"]})
        ecs_stub.add_response(
            "describe_container_instances",
            described,
            {"cluster": "AWSBatch-gpu-spot-4d1c", "containerInstances": [instance]},
        )
        seen = backend.describe(Handle(job.job_id, f"jp-{job.job_id}", 1, native_id="8b3f"))
    assert seen.usage == Usage("g5.2xlarge", 1, None)
    figure = backend.attempt_cost(job, until, seen.usage)
    assert figure.priced == "ec2 g5.2xlarge spot in us-east-1 (its container instance)"  # the spot queue
    assert figure.usd == pytest.approx(row("ec2", "g5.2xlarge", "us-east-1")["spot"] * HOURS)


def test_a_sagemaker_state_event_says_what_the_job_ran_on_and_the_end_prices_every_instance(settings):
    from tests.factories import JOB_ID, fixture_json

    raw = fixture_json("events", "sagemaker-training-job-state-change.json")
    raw["detail"].update(TrainingJobStatus="Completed", SecondaryStatus="Completed", BillableTimeInSeconds=1800)
    raw["detail"]["ResourceConfig"]["InstanceType"] = "ml.g5.xlarge"  # the published example says "InstanceType"
    seen = SageMakerBackend(settings).parse_event(raw)
    assert (seen.job_id, seen.usage) == (JOB_ID, Usage("ml.g5.xlarge", 3, None, 1800.0))  # InstanceCount 3
    job, until = ran("sagemaker", GPU)
    figure = get_backend("sagemaker", settings).attempt_cost(job, until, seen.usage, final=True)
    rate = row("sagemaker", "ml.g5.xlarge", "us-east-1")["on_demand"]
    assert figure.priced == "sagemaker 3 x ml.g5.xlarge on-demand in us-east-1"
    assert figure.usd == pytest.approx(3 * rate * 0.5)
