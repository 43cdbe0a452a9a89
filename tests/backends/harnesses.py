"""The backend harnesses: each backend against its emulator or fake, for the contract suite and reconcile tests."""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from chalicelib.backends import REGISTRY, backend_class
from chalicelib.backends.base import ComputeBackend, Handle, LaunchResult
from chalicelib.jobs.model import Job
from tests.factories import FIXTURES, batch_queues, boto, k8s_env, make_job, make_settings, wait_for

PLACEHOLDER = "0123456789abcdef0123456789abcdef"  # the job id the recorded AWS payloads carry


def declared(name: str, fact: str) -> Any:
    """A fact a backend declares about itself (iam_actions, event_sources, ...): the one place this suite
    reads them, so moving them into a descriptor changes this line only."""
    return getattr(backend_class(name), fact)


def aws_event(name: str, job_id: str = PLACEHOLDER) -> dict[str, Any]:
    return json.loads((FIXTURES / "events" / name).read_text().replace(PLACEHOLDER, job_id))


def gcp_hint(source: str, entry: str) -> dict[str, Any]:
    """What chalicelib.events.gcp hands a backend for a Cloud Logging entry (an EventBridge-shaped hint)."""
    body = json.loads((FIXTURES / "gcp" / entry).read_text())
    return {"source": source, "detail-type": "Cloud Logging entry", "detail": body}


@dataclass
class Harness:
    """One backend on its emulator, with the provider-side views the contract needs."""

    backend: ComputeBackend
    #: a job this backend can run, not launched yet
    job: Callable[[], Job]
    #: how many provider resources exist for the job (through the provider's list API or the fake's records)
    count: Callable[[Job], int]
    #: end the launched resource the way the provider would (it finished on its own)
    finish: Callable[[Job, LaunchResult], None]
    #: case -> a raw event that is not about any jobplane resource
    foreign: dict[str, Callable[[], dict[str, Any]]]
    #: how many start requests the provider has received (an emulator that overwrites a duplicate, as moto's
    #: SageMaker does, still shows one resource after two starts); None: `count` already sees every start
    starts: Callable[[], int] | None = None
    explain: Callable[[Any], str] | None = None  # what to show when a count is off
    #: botocore operations the backend called, as IAM actions (AWS backends only)
    calls: list[str] | None = None
    #: operations that need no IAM permission at all, with why
    free_actions: dict[str, str] = field(default_factory=dict)
    #: why the IAM check does not apply, where it does not
    no_iam: str = ""
    #: holds the emulator's resources where they are while a test compares two reads of them
    hold: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


# --- AWS: the session's moto server, the stage's resources provisioned as the backends' own tests do ------
AWS_BACKENDS = "sagemaker,aws-batch,ecs,ec2,local"
# botocore's operation -> the IAM action that authorises it, where the two names differ
IAM_ALIASES = {"s3:HeadObject": "s3:GetObject", "s3:ListObjectsV2": "s3:ListBucket"}
STS_FREE = {"sts:GetCallerIdentity": "AWS answers GetCallerIdentity for any caller; no policy can deny it"}
# Batch's launch checks for and puts its helpers' alias file under code/: the CodeUploads statement grants the put
# (a denied HeadObject only means one more put)
BATCH_ALIAS_FILE = {
    "s3:GetObject": "HeadObject of the alias file under code/: a denied one is answered by the put",
    "s3:PutObject": "the alias file under code/, granted by the API policy's CodeUploads statement",
}
# the operations that start a resource, one per AWS backend
STARTS = ("sagemaker:CreateTrainingJob", "batch:SubmitJob", "ecs:RunTask", "ec2:RunInstances")
GCP_NO_IAM = "Google APIs are authorised by the service account's roles, not by per-call IAM actions"


def aws_settings(request, tmp_path):
    endpoint = request.getfixturevalue("moto_endpoint")
    body = json.dumps({"batch": {"use_docker": False}}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/config", data=body, method="POST"))
    stage = f"c{uuid.uuid4().hex[:8]}"
    return make_settings(tmp_path, endpoint, JOBPLANE_STAGE=stage, JOBPLANE_BACKENDS=AWS_BACKENDS)


def record_calls(backend) -> list[str]:
    """Every botocore operation the backend's clients make, as `service:Operation`, from a before-call hook."""
    calls: list[str] = []
    build = backend.client
    hooked_here: set[int] = set()  # clients are shared per process: each recorder hooks them itself

    def hooked(service=None):
        client = build(service)
        if id(client) not in hooked_here:
            prefix = client.meta.service_model.signing_name

            def before_call(model, **_):
                action = f"{prefix}:{model.name}"
                calls.append(IAM_ALIASES.get(action, action))

            client.meta.events.register_first("before-call.*.*", before_call)
            hooked_here.add(id(client))
        return client

    backend.client = hooked
    return calls


@contextlib.contextmanager
def moto_holds(endpoint: str, model: str):
    """moto's state manager leaves `model` (e.g. ecs::task) where it is until the block ends."""

    def post(verb: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{endpoint}/moto-api/state-manager/{verb}", data=json.dumps(body).encode(), method="POST"
        )
        urllib.request.urlopen(request).close()

    post("set-transition", {"model_name": model, "transition": {"progression": "manual", "times": 1_000_000}})
    try:
        yield
    finally:
        post("unset-transition", {"model_name": model})


def answer(client, operation: str, code: str, message: str, status: int = 400) -> None:
    """Make `client` answer `operation` with the error the real service gives (where moto has none)."""
    from botocore.awsrequest import AWSResponse

    def reply(**_):
        error = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return AWSResponse("https://contract.invalid", status, {}, None), error

    client.meta.events.register(f"before-call.{client.meta.service_model.endpoint_prefix}.{operation}", reply)


def sagemaker_harness(request, tmp_path) -> Harness:
    from chalicelib.backends.aws.sagemaker import SageMakerBackend

    settings = aws_settings(request, tmp_path)
    backend = SageMakerBackend(settings)
    calls = record_calls(backend)
    # moto has no StopTrainingJob (HTTP 500); SageMaker refuses to stop an ended job with this error.
    answer(backend.client("sagemaker"), "StopTrainingJob", "ValidationException", "The job status is Completed")
    client = boto(settings, "sagemaker")

    def count(job):
        name = Handle.of(job).native_name
        found = client.list_training_jobs(NameContains=name)["TrainingJobSummaries"]
        return sum(1 for j in found if j["TrainingJobName"] == name)

    def foreign_name():
        event = aws_event("sagemaker-training-job-state-change.json")
        event["detail"]["TrainingJobName"] = "89c96cc8-dded-4739-afcc-6f1dc936701d"  # AWS's own sample name
        return event

    return Harness(
        backend,
        job=lambda: make_job("sagemaker"),
        count=count,
        finish=lambda job, launched: None,  # moto completes a training job at once
        foreign={"another service": lambda: aws_event("batch-job-state-change.json"), "not ours": foreign_name},
        starts=lambda: sum(1 for c in calls if c in STARTS),
        calls=calls,
        free_actions=STS_FREE,
    )


def batch_harness(request, tmp_path) -> Harness:
    from chalicelib.backends.aws.batch import BatchBackend

    settings = aws_settings(request, tmp_path)
    client = boto(settings, "batch")
    batch_queues(settings)
    boto(settings, "s3").create_bucket(Bucket=settings.artifacts_bucket)
    backend = BatchBackend(settings)
    calls = record_calls(backend)

    def count(job):
        name = Handle.of(job).native_name
        queues = (settings.batch_job_queue, settings.batch_gpu_job_queue)
        filters = [{"name": "JOB_NAME", "values": [name]}]
        return sum(len(client.list_jobs(jobQueue=q, filters=filters)["jobSummaryList"]) for q in queues)

    def finish(job, launched):  # moto runs the job without Docker: it ends by itself
        wait_for(lambda: backend.describe(Handle.of(job)).status.terminal, what="the Batch job to end")

    def foreign_name():
        event = aws_event("batch-job-state-change.json")
        event["detail"]["jobName"] = "nightly-etl"
        return event

    return Harness(
        backend,
        job=lambda: make_job("aws-batch"),
        count=count,
        finish=finish,
        foreign={"another service": lambda: aws_event("ecs-task-state-change.json"), "not ours": foreign_name},
        starts=lambda: sum(1 for c in calls if c in STARTS),
        calls=calls,
        free_actions={**STS_FREE, **BATCH_ALIAS_FILE},
    )


def ecs_harness(request, tmp_path) -> Harness:
    from chalicelib.backends.aws.ecs import EcsBackend

    settings = aws_settings(request, tmp_path)
    client = boto(settings, "ecs")
    client.create_cluster(clusterName=settings.ecs_cluster)
    ec2 = boto(settings, "ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    client.register_container_instance(
        cluster=settings.ecs_cluster, instanceIdentityDocument=json.dumps({"instanceId": instance["InstanceId"]})
    )
    backend = EcsBackend(settings)
    calls = record_calls(backend)

    def count(job):
        name = Handle.of(job).native_name
        return sum(
            len(client.list_tasks(cluster=settings.ecs_cluster, startedBy=name, desiredStatus=s)["taskArns"])
            for s in ("RUNNING", "STOPPED")
        )

    def finish(job, launched):
        client.stop_task(cluster=settings.ecs_cluster, task=launched.native_id, reason="Essential container exited")
        # moto moves a stopped task one step (DEACTIVATING, STOPPING, ...) per describe until it is STOPPED.
        handle = replace(Handle.of(job), native_id=launched.native_id)
        wait_for(lambda: backend.describe(handle).status.terminal, what="the ECS task to stop")

    def foreign_name():
        event = aws_event("ecs-task-state-change.json")
        event["detail"]["startedBy"] = "ecs-svc/1234567890123456789"
        event["detail"]["clusterArn"] = f"arn:aws:ecs:us-east-1:123456789012:cluster/{settings.ecs_cluster}"
        return event

    return Harness(
        backend,
        job=lambda: make_job("ecs"),
        count=count,
        finish=finish,
        foreign={"another service": lambda: aws_event("ec2-instance-state-change.json"), "not ours": foreign_name},
        starts=lambda: sum(1 for c in calls if c in STARTS),
        calls=calls,
        free_actions=STS_FREE,
        # moto moves every task one status on at each DescribeTasks
        hold=lambda: moto_holds(settings.aws_endpoint_url, "ecs::task"),
    )


def ec2_harness(request, tmp_path) -> Harness:
    from chalicelib.backends.aws.ec2 import Ec2Backend

    base = aws_settings(request, tmp_path)
    ec2 = boto(base, "ec2")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    boto(base, "iam").create_instance_profile(InstanceProfileName=base.ec2_instance_profile)
    boto(base, "s3").create_bucket(Bucket=base.artifacts_bucket)
    settings = replace(base, ec2_ami=ami)
    backend = Ec2Backend(settings)
    calls = record_calls(backend)

    def count(job):
        filters = [
            {"Name": "tag:jobplane:native-id", "Values": [Handle.of(job).native_name]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ]
        return sum(len(r["Instances"]) for r in ec2.describe_instances(Filters=filters)["Reservations"])

    def foreign_instance():
        untagged = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        event = aws_event("ec2-instance-state-change.json")
        event["detail"]["instance-id"] = untagged
        return event

    return Harness(
        backend,
        job=lambda: make_job("ec2", {"image": "train:1"}),
        count=count,
        finish=lambda job, launched: ec2.terminate_instances(InstanceIds=[launched.native_id]),
        foreign={
            "another service": lambda: aws_event("sagemaker-training-job-state-change.json"),
            "not ours": foreign_instance,
        },
        starts=lambda: sum(1 for c in calls if c in STARTS),
        calls=calls,
        free_actions=STS_FREE,
    )


# --- GCP: the loopback fake of the Vertex, Compute and Storage REST APIs ------------------------------
def gcp_settings(request, tmp_path):
    from tests.factories import gcp_env

    fake = request.getfixturevalue("fake_gcp")
    return fake, make_settings(tmp_path, **gcp_env(fake.endpoint))


def vertex_harness(request, tmp_path) -> Harness:
    from chalicelib.backends.gcp.vertex import EVENT_SOURCE, VertexBackend

    fake, settings = gcp_settings(request, tmp_path)

    def count(job):
        return sum(1 for j in fake.custom_jobs.values() if j.get("displayName") == Handle.of(job).native_name)

    def finish(job, launched):
        fake.custom_jobs[launched.native_id]["state"] = "JOB_STATE_SUCCEEDED"

    def foreign_job():
        parent = f"projects/{settings.gcp_project}/locations/{settings.gcp_region}"
        fake._ids += 1
        name = f"{parent}/customJobs/{fake._ids}"
        fake.custom_jobs[name] = {"name": name, "displayName": "someone-elses-notebook", "state": "JOB_STATE_RUNNING"}
        event = gcp_hint(EVENT_SOURCE, "logentry_vertex_ml_job.json")
        event["detail"]["resource"]["labels"].update(job_id=name.rsplit("/", 1)[1], project_id=settings.gcp_project)
        return event

    from chalicelib.backends.gcp.gce import EVENT_SOURCE as COMPUTE

    return Harness(
        VertexBackend(settings),
        job=lambda: make_job("vertex"),
        count=count,
        finish=finish,
        foreign={"another service": lambda: gcp_hint(COMPUTE, "logentry_gce_preempted.json"), "not ours": foreign_job},
        starts=lambda: len(fake.bodies("POST", "/customJobs$")),
        no_iam=GCP_NO_IAM,
    )


def gce_harness(request, tmp_path) -> Harness:
    from chalicelib.backends.gcp.gce import EVENT_SOURCE, GceBackend
    from chalicelib.backends.gcp.vertex import EVENT_SOURCE as VERTEX

    fake, settings = gcp_settings(request, tmp_path)

    def count(job):
        return sum(1 for _zone, name in fake.instances if name == Handle.of(job).native_name)

    def finish(job, launched):
        fake.instances[(settings.gce_zone, launched.native_id)]["status"] = "TERMINATED"
        fake.set_status_object(settings.gcp_status_uri, launched.native_id, {"state": "SUCCEEDED", "exit_code": 0})

    def foreign_vm():  # the recorded entry names INSTANCE_NAME, a VM jobplane did not name
        return gcp_hint(EVENT_SOURCE, "logentry_gce_preempted.json")

    return Harness(
        GceBackend(settings),
        job=lambda: make_job("gce"),
        count=count,
        finish=finish,
        foreign={"another service": lambda: gcp_hint(VERTEX, "logentry_vertex_ml_job.json"), "not ours": foreign_vm},
        no_iam=GCP_NO_IAM,
    )


# --- local: real processes ------------------------------------------------------------------------------
def local_harness(request, tmp_path) -> Harness:
    from chalicelib.backends.local.backend import EVENT_DETAIL_TYPE, EVENT_SOURCE, LocalBackend

    backend = LocalBackend(make_settings(tmp_path))

    def runners(job):
        folder = str(backend.job_dir(Handle.of(job).native_name))
        found = 0
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue  # the process ended while we looked
            found += folder.encode() in args and any(b"chalicelib.backends.local.runner" in a for a in args)
        if found == 0 and (Path(folder) / "runner.pid").exists():
            # Not seen in /proc (ended, or gone under a loaded worker): the one runner it records counts,
            # and `starts` (its pid, read before and after the second launch) shows no second one.
            return 1
        return found

    def runner_pid(job):
        return (backend.job_dir(Handle.of(job).native_name) / "runner.pid").read_text()

    def finish(job, launched):  # the job's process exits by itself at once
        wait_for(lambda: (o := backend.describe(Handle.of(job))) and o.status.terminal, what="the local job to end")

    def foreign_folder():
        detail = {"native_id": "somebody-elses-job", "state": "SUCCEEDED", "exit_code": 0}
        return {"source": EVENT_SOURCE, "detail-type": EVENT_DETAIL_TYPE, "detail": detail}

    made: list[Any] = []

    def job():
        made.append(make_job("local", {"command": [sys.executable, "-c", "import time; time.sleep(3)"]}))
        return made[-1]

    return Harness(
        backend,
        job=job,
        count=runners,
        starts=lambda: runner_pid(made[-1]),
        explain=lambda job: "\n".join(
            f"{p.name}: {p.read_text(errors='replace')[-2000:]}"
            for p in sorted(backend.job_dir(Handle.of(job).native_name).glob("*"))
            if p.is_file()
        ),
        finish=finish,
        foreign={"another service": lambda: aws_event("s3-object-created.json"), "not ours": foreign_folder},
        no_iam="local jobs are processes on this machine: no cloud API is called",
    )


# --- kubernetes: the official client against the loopback API server (tests/fakek8s.py) -------------------
def kubernetes_harness(request, tmp_path) -> Harness:
    from chalicelib.backends.kubernetes.backend import KubernetesBackend

    fake = request.getfixturevalue("fake_k8s")
    settings = make_settings(tmp_path, **k8s_env(fake))

    def count(job):
        return sum(1 for _ns, name in fake.jobs if name == Handle.of(job).native_name)

    def finish(job, launched):
        fake.succeed(Handle.of(job).native_name)

    def foreign_job():
        # Another team's Job in the same namespace, with no jobplane labels (Kubernetes sends no events here).
        fake.jobs[("default", "nightly-etl")] = {"metadata": {"name": "nightly-etl", "labels": {}}, "status": {}}
        return {"kind": "Job", "apiVersion": "batch/v1", "metadata": {"name": "nightly-etl", "namespace": "default"}}

    return Harness(
        KubernetesBackend(settings),
        job=lambda: make_job("kubernetes", {"image": "busybox:1.36"}),
        count=count,
        finish=finish,
        foreign={"another service": lambda: aws_event("s3-object-created.json"), "not ours": foreign_job},
        starts=lambda: len(fake.bodies("POST", "/jobs")),
        no_iam="the Kubernetes API is authorised by the cluster's RBAC (deploy/kubernetes/rbac.yaml), not IAM; "
        "eks:DescribeCluster is checked in tests/backends/kubernetes",
    )


# A new backend gets its row here; a registered backend without one fails every case below.
HARNESSES: dict[str, Callable[..., Harness]] = {
    "local": local_harness,
    "sagemaker": sagemaker_harness,
    "aws-batch": batch_harness,
    "ecs": ecs_harness,
    "ec2": ec2_harness,
    "vertex": vertex_harness,
    "gce": gce_harness,
    "kubernetes": kubernetes_harness,
}

# Known breaches of the contract, each a real defect to fix in the backend (strict: fixing one fails here
# until its row goes). Key: (backend, case), as cases() and the foreign test name them.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def cases(case: str) -> list[Any]:
    return [
        pytest.param(name, id=name, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[(name, case)])])
        if (name, case) in KNOWN_GAPS
        else pytest.param(name, id=name)
        for name in sorted(REGISTRY)
    ]


def harness_for(name: str, request, tmp_path) -> Harness:
    if name not in HARNESSES:
        pytest.fail(f"backend {name!r} is registered but has no harness in tests/backends/test_contract.py HARNESSES")
    return HARNESSES[name](request, tmp_path)
