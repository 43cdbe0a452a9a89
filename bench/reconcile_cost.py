"""Reconcile at scale: provider calls, DynamoDB requests and wall time per shard of one tick, for 10 to 10,000
active jobs on each AWS backend, the real backends against moto (calls counted with botocore before-call hooks).

moto cannot hold every resource where a fleet in sync would be, so the bench puts it there in moto's own
models (the server runs in this process): Batch jobs and SageMaker training jobs back to RUNNING /
InProgress-Training, ECS tasks held RUNNING through moto's state manager, and SageMaker's list summaries given
the SecondaryStatus the API documents (moto leaves it out). The jobs table holds the same jobs as RUNNING, so a
tick is the steady state: everything in sync, nothing to write.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import urllib.request
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dynamodb_requests import Counter, _hook  # noqa: E402

BACKENDS = ("aws-batch", "ecs", "ec2", "sagemaker")
SIZES = (10, 100, 1_000, 10_000)
SHARD_JOBS = 1_000  # the default JOBPLANE_RECONCILE_SHARD_JOBS
FUNCTION_LIMIT_S = 120  # the reconcile functions' lambda_timeout (.chalice/config.json)
ACCOUNT = "123456789012"


def _post(endpoint: str, path: str, body: dict) -> None:
    request = urllib.request.Request(f"{endpoint}{path}", data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(request).close()


def record_calls(backend) -> collections.Counter[str]:
    """Every botocore call the backend's clients make, as service:Operation."""
    calls: collections.Counter[str] = collections.Counter()
    build = backend.client
    hooked: set[int] = set()

    def client(service=None):
        made = build(service)
        if id(made) not in hooked:
            prefix = made.meta.service_model.signing_name

            def before_call(model, **_):
                calls[f"{prefix}:{model.name}"] += 1

            made.meta.events.register_first("before-call.*.*", before_call)
            hooked.add(id(made))
        return made

    backend.client = client
    return calls


def _jobs(backend: str, n: int):
    from chalicelib.jobs.model import Job, JobStatus, utcnow
    from chalicelib.jobs.spec_types import JobSpec

    now = utcnow()
    spec = JobSpec.from_dict({"name": "bench", "image": "train:1", "command": ["python", "train.py"]})
    return [
        Job(
            uuid.uuid4().hex,
            "bench",
            f"user{i % 20}",
            JobStatus.RUNNING,
            backend,
            spec,
            now - timedelta(hours=1),
            started_at=now - timedelta(minutes=50),
            updated_at=now - timedelta(seconds=i),
        )
        for i in range(n)
    ]


def _wait(predicate, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


# --- one fleet per backend, in sync, on moto ------------------------------------------------------------
def batch_fleet(settings, endpoint, n):
    import boto3
    from moto.batch.models import batch_backends

    from chalicelib.backends.aws.batch import BatchBackend
    from chalicelib.backends.base import Handle
    from tests.factories import batch_queues

    _post(endpoint, "/moto-api/config", {"batch": {"use_docker": False}})
    client = boto3.client("batch", region_name=settings.region, endpoint_url=endpoint)
    batch_queues(settings)
    backend = BatchBackend(settings)
    fleet = _jobs("aws-batch", n)
    definition = backend.job_definition(fleet[0].spec)  # one image, one staging shape: one definition
    jobs = []
    for job in fleet:
        handle = Handle.of(job)
        submitted = client.submit_job(**backend.submit_request(job, handle, definition))
        jobs.append(job.with_changes(native_id=submitted["jobId"], native_name=handle.native_name))
    moto = batch_backends[ACCOUNT][settings.region]
    ids = [j.native_id for j in jobs]
    _wait(lambda: all(moto._jobs[i].job_stopped for i in ids), "moto's Batch jobs to end")  # no Docker: at once
    for i in ids:
        moto._jobs[i].status = "RUNNING"
    return backend, jobs


def ecs_fleet(settings, endpoint, n):
    import boto3

    from chalicelib.backends.aws.ecs import EcsBackend
    from chalicelib.backends.base import Handle

    _post(
        endpoint,
        "/moto-api/state-manager/set-transition",
        {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}},
    )
    client = boto3.client("ecs", region_name=settings.region, endpoint_url=endpoint)
    client.create_cluster(clusterName=settings.ecs_cluster)
    family = client.register_task_definition(
        family="jp-bench", containerDefinitions=[{"name": "job", "image": "train:1", "memory": 512}]
    )["taskDefinition"]["taskDefinitionArn"]
    jobs = _jobs("ecs", n)
    arns: list[str] = []
    while len(arns) < n:  # Fargate: moto places it without container instances; RunTask starts up to 10
        count = min(10, n - len(arns))
        tasks = client.run_task(
            cluster=settings.ecs_cluster, taskDefinition=family, launchType="FARGATE", count=count, startedBy="jp-bench"
        )["tasks"]
        arns.extend(t["taskArn"] for t in tasks)
    jobs = [j.with_changes(native_id=a, native_name=Handle.of(j).native_name) for j, a in zip(jobs, arns, strict=True)]
    return EcsBackend(settings), jobs


def ec2_fleet(settings, endpoint, n):
    import boto3

    from chalicelib.backends.aws.ec2 import Ec2Backend
    from chalicelib.backends.base import Handle

    ec2 = boto3.client("ec2", region_name=settings.region, endpoint_url=endpoint)
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    backend = Ec2Backend(replace(settings, ec2_ami=ami))
    jobs = []
    for job in _jobs("ec2", n):
        handle = Handle.of(job)
        tags = [{"Key": k, "Value": v} for k, v in backend.job_tags(handle, job).items()]
        instance = ec2.run_instances(
            ImageId=ami,
            MinCount=1,
            MaxCount=1,
            InstanceType="g5.xlarge",
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"][0]
        jobs.append(job.with_changes(native_id=instance["InstanceId"], native_name=handle.native_name))
    return backend, jobs


def sagemaker_fleet(settings, endpoint, n):  # noqa: ARG001 - every fleet takes the same arguments
    from moto.sagemaker import models

    from chalicelib.backends.aws.sagemaker import SageMakerBackend
    from chalicelib.backends.base import Handle

    backend = SageMakerBackend(replace(settings, sagemaker_role=f"arn:aws:iam::{ACCOUNT}:role/bench"))
    moto = models.sagemaker_backends[ACCOUNT][settings.region]
    jobs = []
    for job in _jobs("sagemaker", n):
        handle = Handle.of(job)
        backend.client().create_training_job(**backend.training_job_request(job, handle))
        found = moto.training_jobs[handle.native_name]
        found.training_job_status, found.secondary_status, found.training_end_time = "InProgress", "Training", None
        jobs.append(job.with_changes(native_id=handle.native_name, native_name=handle.native_name))
    listed = moto.list_training_jobs

    def with_secondary_status(*args, **kwargs):
        page = listed(*args, **kwargs)
        for summary in page["TrainingJobSummaries"]:
            summary["SecondaryStatus"] = moto.training_jobs[summary["TrainingJobName"]].secondary_status
        return page

    moto.list_training_jobs = with_secondary_status
    return backend, jobs


FLEETS = {"aws-batch": batch_fleet, "ecs": ecs_fleet, "ec2": ec2_fleet, "sagemaker": sagemaker_fleet}


# --- one tick, its shards run one after another -----------------------------------------------------------
def _store(settings, jobs):
    from chalicelib.store.dynamo import DynamoJobStore

    store = DynamoJobStore(settings)
    store.create_tables()
    with store.Job.batch_write() as batch:
        for job in jobs:
            batch.save(store._item(job))
    return store


def tick(service, store) -> dict:
    from chalicelib.reaper import Action, reconcile, reconcile_shard

    counter = Counter()
    _hook(store, counter)
    handed: list[list[str]] = []
    started = time.perf_counter()
    decisions = reconcile(service, fan_out=handed.append)
    walls = [time.perf_counter() - started]
    for shard in handed:
        started = time.perf_counter()
        decisions += reconcile_shard(service, shard)
        walls.append(time.perf_counter() - started)
    actions = collections.Counter(d.action.value for d in decisions if d.action is not Action.SHARD)
    return {"dynamodb": dict(counter.ops), "walls": walls, "actions": dict(actions)}


def measure(backend_name: str, n: int) -> dict:
    from chalicelib.config import Settings
    from chalicelib.jobs.service import JobService
    from jobplane.local.emulator import start_moto

    server, endpoint = start_moto()
    try:
        _post(endpoint, "/moto-api/reset", {})  # moto's models outlive a server in this process
        stage = f"b{uuid.uuid4().hex[:8]}"
        settings = Settings.from_env(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "JOBPLANE_STAGE": stage,
                "JOBPLANE_BACKENDS": backend_name,
                "JOBPLANE_RECONCILE_SHARD_JOBS": str(SHARD_JOBS),
            }
        )
        began = time.perf_counter()
        backend, jobs = FLEETS[backend_name](settings, endpoint, n)
        store = _store(settings, jobs)
        setup_s = time.perf_counter() - began
        calls = record_calls(backend)
        service = JobService(store, settings, backend_factory=lambda *_: backend)
        result = tick(service, store)
        return {"backend": backend_name, "active": n, "calls": dict(calls), "setup_s": setup_s, **result}
    finally:
        server.stop()


def measure_heal(n: int = 1_000) -> dict:
    """A healing tick: n Batch jobs the table holds as RUNNING that Batch reports SUCCEEDED."""
    from moto.batch.models import batch_backends

    from chalicelib.config import Settings
    from chalicelib.jobs.service import JobService
    from jobplane.local.emulator import start_moto

    server, endpoint = start_moto()
    try:
        _post(endpoint, "/moto-api/reset", {})
        settings = Settings.from_env({"AWS_ENDPOINT_URL": endpoint, "JOBPLANE_STAGE": "heal"})
        backend, jobs = batch_fleet(settings, endpoint, n)
        for job in jobs:
            batch_backends[ACCOUNT][settings.region]._jobs[job.native_id].status = "SUCCEEDED"
        store = _store(settings, jobs)
        calls = record_calls(backend)
        service = JobService(store, settings, backend_factory=lambda *_: backend)
        result = tick(service, store)
        return {"active": n, "calls": dict(calls), **result}
    finally:
        server.stop()


def target(row: dict) -> tuple[int, str]:
    """(the most provider calls the issue's target allows this tick, what it counts)."""
    n = row["active"]
    batches = -(-n // 100)
    if row["backend"] == "aws-batch":
        # DescribeJobs, plus the orphan sweep's ListJobs: one page per queue (2) and live status (5), the
        # RUNNING one of the fleet's queue ceil(active/100) pages
        return batches + (batches + 9), "ceil(active/100) + the sweep's list pages"
    if row["backend"] == "ecs":
        # DescribeTasks, plus the sweep's ListTasks pages (the fleet's own tasks are not described again)
        return 2 * batches, "ceil(active/100) + the sweep's list pages"
    if row["backend"] == "sagemaker":
        # InProgress + Stopping (moto pages Stopping over every job of the region; SageMaker: 1 page); the sweep
        # reuses the InProgress list
        return 2 * batches, "list pages (InProgress + Stopping)"
    return -(-n // 1000) * 2, "list pages (describe_many + the sweep)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--no-heal", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"{'backend':10} {'active':>7} {'provider calls':>14} {'target':>7} {'DynamoDB req':>12} "
        f"{'shards':>6} {'max shard s':>11} {'setup s':>8}  calls / DynamoDB operations"
    )
    for name in args.backends.split(","):
        for n in sizes:
            row = measure(name, n)
            total = sum(row["calls"].values())
            most, _what = target(row)
            walls = row["walls"]
            print(
                f"{name:10} {n:7,d} {total:14,d} {most:7,d} {sum(row['dynamodb'].values()):12,d} "
                f"{len(walls):6d} {max(walls):11.2f} {row['setup_s']:8.1f}  {row['calls']} {row['dynamodb']} "
                f"{row['actions']}",
                flush=True,
            )
    if not args.no_heal:
        heal = measure_heal()
        print(
            f"healing tick, {heal['active']:,} Batch jobs RUNNING -> SUCCEEDED: provider calls {heal['calls']}, "
            f"DynamoDB {sum(heal['dynamodb'].values()):,} requests {heal['dynamodb']} "
            f"(one read per job before: {heal['active'] * 3 + 2:,}), {heal['actions']}"
        )
    print(f"shard limit {SHARD_JOBS:,} jobs; function limit {FUNCTION_LIMIT_S} s (target: every shard under half)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
