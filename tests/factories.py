"""Test factories: settings and stores, specs, jobs, history, observations, resources, fakes, payloads, stacks."""

from __future__ import annotations

import base64
import collections
import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from chalicelib.backends.base import (
    ComputeBackend,
    LaunchResult,
    ManagedResource,
    Observation,
    PowerState,
    ResourceKind,
)
from chalicelib.jobs.model import (
    EventSource,
    FailureKind,
    HistoryEntry,
    Job,
    JobStatus,
    native_name,
    new_job_id,
    utcnow,
)
from chalicelib.jobs.spec import parse_spec
from chalicelib.jobs.spec_types import JobSpec

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"  # recorded provider payloads: events/, gcp/, pricing/


def fixture_json(*parts: str) -> Any:
    """A recorded payload under tests/fixtures (fixture_json("gcp", "pubsub_push_body.json"))."""
    return json.loads(FIXTURES.joinpath(*parts).read_text())


# --- settings and stores ---------------------------------------------------------------------------------
def make_settings(tmp_path, endpoint=None, **overrides):
    """Settings of the `test` stage with fresh table names, local jobs under tmp_path, on `endpoint` (moto)."""
    from chalicelib.config import Settings

    env = {
        "JOBPLANE_STAGE": "test",
        "JOBPLANE_TABLE_PREFIX": f"jp-{uuid.uuid4().hex[:10]}",
        "JOBPLANE_LOCAL_STATE_DIR": str(tmp_path / "jobs"),
        "JOBPLANE_LOCAL_RUN_AS": os.environ["JOBPLANE_LOCAL_RUN_AS"],
        "AWS_REGION": "us-east-1",
        "JOBPLANE_QUOTAS": "off",  # a test that reads quotas says so (tests/jobs/test_quotas.py)
    }
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    env.update(overrides)
    return Settings.from_env(env)


def make_stores(settings):
    """One DynamoDB store of each kind over `settings`' tables, every table created."""
    from chalicelib.store.tables import dynamo_stores

    stores = dynamo_stores(settings)
    for store in stores.values():
        store.create_tables()
    return stores


def use_stores(settings, stores, **overrides):
    """Point deps at these settings and stores (plus any other cached objects given)."""
    from chalicelib import deps

    deps.reset()
    deps.override(
        settings=settings,
        store=stores["jobs"],
        token_store=stores["tokens"],
        slack_store=stores["slack"],
        devvm_store=stores["devvms"],
        metrics_store=stores["metrics"],
        endpoint_store=stores["endpoints"],
        **overrides,
    )


class ApiClient:
    """Chalice test client with token helpers; every call returns the Chalice response."""

    def __init__(self, client, stores):
        self.client = client
        self.stores = stores
        self.store = stores["jobs"]
        self.events = client.events
        self.lambda_ = client.lambda_

    def token(self, user: str, admin: bool = False) -> str:
        from chalicelib.auth import create_token

        return create_token(self.stores["tokens"], user, admin)

    def request(self, method, path, token=None, body=None, headers=None):
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        if body is not None and not isinstance(body, (str, bytes)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        return getattr(self.client.http, method.lower())(path, headers=hdrs, body=body or b"")


def wait_for(predicate, timeout=15.0, interval=0.05, what="condition"):
    """Poll `predicate` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_long(predicate, timeout=60.0, interval=0.2, what="condition"):
    """wait_for with the end-to-end defaults: a real stack's jobs and processes take seconds."""
    return wait_for(predicate, timeout, interval, what)


# --- specs and jobs --------------------------------------------------------------------------------------
# The least a spec needs on each backend: container services refuse a spec without an image.
BACKEND_DEFAULTS: dict[str, dict[str, Any]] = {
    "sagemaker": {"image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1"},
    "aws-batch": {"image": "train:1"},
    "ecs": {"image": "train:1"},
    "vertex": {"image": "us-docker.pkg.dev/my-project/train/resnet:1"},
}


def spec_dict(**overrides: Any) -> dict[str, Any]:
    """A spec document (what a user posts) for `overrides["backend"]` (default local), overrides on top."""
    backend = overrides.get("backend", "local")
    return {
        "name": "train",
        "command": ["python", "train.py"],
        "backend": backend,
        **BACKEND_DEFAULTS.get(backend, {}),
        **overrides,
    }


def job_spec(name: str = "train", **overrides: Any) -> dict[str, Any]:
    """A spec document for a local job that really runs: this interpreter printing hello."""
    return {"name": name, "command": [sys.executable, "-c", "print('hello')"], "backend": "local", **overrides}


def sleeper_spec(seconds: float, name: str = "sleeper", **overrides: Any) -> dict[str, Any]:
    """A spec document for a local job that prints start, sleeps `seconds`, then prints end."""
    code = f"import time; print('start', flush=True); time.sleep({seconds}); print('end')"
    return job_spec(name, command=[sys.executable, "-c", code], **overrides)


# A spec with every field the contract documents set (DESIGN.md's example, plus the queue's fields).
FULL_SPEC: dict[str, Any] = {
    "name": "resnet-cifar",
    "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:latest",
    "command": ["python", "train.py", "--epochs", "10"],
    "env": {"LR": "0.1"},
    "resources": {"gpus": 1, "gpu_type": "A10G", "cpus": 4, "memory_gb": 16, "spot": True},
    "backend": "sagemaker",
    "max_runtime_minutes": 600,
    "inputs": ["s3://bucket/datasets/cifar/"],
    "outputs": "s3://bucket/outputs/",
    "checkpoint_uri": "s3://bucket/checkpoints/resnet-cifar/",
    "retries": {"max_attempts": 3, "on": ["interruption", "capacity"]},
    "notify": {"slack_channel": "#ml-jobs"},
    "labels": {"team": "vision"},
    "priority": 5,
    "fallback": ["ec2"],
    "capacity_wait_minutes": 30,
}


def make_spec(**overrides: Any) -> JobSpec:
    """The typed JobSpec, validated the way the API validates one."""
    return parse_spec(spec_dict(**overrides))


def noop_spec(name: str = "job", **overrides: Any) -> JobSpec:
    """make_spec whose command does nothing (`true`): for tests where the job's process never matters."""
    return make_spec(name=name, command=["true"], **overrides)


def make_job(
    backend: str = "local",
    spec: dict[str, Any] | JobSpec | None = None,
    job_id: str | None = None,
    attempt: int = 1,
    owner: str = "alice",
    status: JobStatus = JobStatus.LAUNCHING,
    created_at: datetime | None = None,
    named: bool = False,
    **changes: Any,
) -> Job:
    """A job on `backend`; `spec` is a typed spec or a dict laid over `spec_dict`'s defaults for that backend
    (checked as the API checks a spec, not against the backend, so a test can build a job the backend refuses).
    `named`: the job's native id is its attempt's native name, as a job we launched under our name has."""
    if not isinstance(spec, JobSpec):
        spec = parse_spec(spec_dict(**{"backend": backend, **(spec or {})}))
    job_id = job_id or new_job_id()
    if named:
        changes.setdefault("native_id", native_name(job_id, attempt))
    job = Job(job_id, spec.name, owner, status, backend, spec, created_at or utcnow(), attempt=attempt)
    return job.with_changes(**changes) if changes else job


# A fixed clock and id, for tests whose expected output holds times and ids (Slack messages, decide() tables).
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
JOB_ID = "0123456789abcdef0123456789abcdef"
# The GPU SageMaker job messages describe: FULL_SPEC's resources and retries, no Slack channel of its own.
REPORTED_SPEC: dict[str, Any] = {
    "name": "resnet-cifar",
    "image": FULL_SPEC["image"],
    "command": ["python", "train.py"],
    "resources": FULL_SPEC["resources"],
    "backend": "sagemaker",
    "retries": FULL_SPEC["retries"],
    "notify": {"slack_channel": None},
}


def running_job(**changes: Any) -> Job:
    """REPORTED_SPEC's job JOB_ID, created at T0 and running (as its backend reported) since two minutes later;
    `spec` is laid over REPORTED_SPEC, the other changes over the job."""
    spec = {**REPORTED_SPEC, **changes.pop("spec", {})}
    base: dict[str, Any] = {
        "native_id": f"jp-{JOB_ID}",
        "native_name": f"jp-{JOB_ID}",
        "started_at": T0 + timedelta(minutes=2),
        "updated_at": T0 + timedelta(minutes=2),
        "status_reason": "running (reported by backend)",
    }
    job = make_job("sagemaker", spec, job_id=JOB_ID, status=JobStatus.RUNNING, created_at=T0, **base)
    return job.with_changes(**changes)


def finished_job(**changes: Any) -> Job:
    """running_job, succeeded an hour after it started, with its cost."""
    base = {
        "status": JobStatus.SUCCEEDED,
        "finished_at": T0 + timedelta(hours=1, minutes=2, seconds=5),
        "cost_estimate_usd": 1.234,
        "status_reason": "succeeded (reported by backend)",
    }
    return running_job(**{**base, **changes})


def failed_job(**changes: Any) -> Job:
    """finished_job, but failed by the user's code (CUDA out of memory)."""
    base = {
        "status": JobStatus.FAILED,
        "failure_kind": FailureKind.USER_ERROR,
        "failure_reason": "exit code 1: CUDA out of memory",
    }
    return finished_job(**{**base, **changes})


def make_history(
    job: Job,
    to_status: JobStatus | None = None,
    from_status: JobStatus | None = None,
    reason: str = "test",
    source: EventSource = EventSource.API,
    at: datetime | None = None,
    **extra: Any,
) -> HistoryEntry:
    """A history entry for `job` (by default: the job's creation at its own status)."""
    return HistoryEntry(
        job.job_id,
        at or job.created_at,
        from_status,
        to_status or job.status,
        reason,
        source,
        attempt=extra.pop("attempt", job.attempt),
        **extra,
    )


def make_observation(job: Job | None = None, status: JobStatus = JobStatus.RUNNING, **extra: Any) -> Observation:
    """What a backend would report of `job`'s current attempt."""
    native_status = extra.pop("native_status", status.value)
    if job is not None:
        extra.setdefault("native_id", job.native_id or job.native_name)
        extra.setdefault("job_id", job.job_id)
        extra.setdefault("attempt", job.attempt)
    return Observation(status, native_status, **extra)


def make_resource(now: datetime | None = None, **overrides: Any) -> ManagedResource:
    """A running tagged VM of the `test` stage, launched an hour before `now`, for job "a" * 32."""
    fields: dict[str, Any] = dict(
        backend="ec2",
        resource_id="i-0abc",
        kind=ResourceKind.VM,
        state="running",
        power=PowerState.RUNNING,
        stage="test",
        native_name="jp-" + "a" * 32,
        job_id="a" * 32,
        attempt=1,
        launched_at=(now or utcnow()) - timedelta(hours=1),
    )
    fields.update(overrides)
    return ManagedResource(**fields)


def resource_job(
    now: datetime | None = None, status: JobStatus = JobStatus.RUNNING, attempt: int = 1, max_runtime: int = 120
) -> Job:
    """The job make_resource's VM is for: job "a" * 32 on ec2, created two hours and started an hour before `now`."""
    now = now or utcnow()
    return make_job(
        "ec2",
        {"name": "j", "command": ["true"], "max_runtime_minutes": max_runtime},
        job_id="a" * 32,
        attempt=attempt,
        status=status,
        created_at=now - timedelta(hours=2),
        started_at=now - timedelta(hours=1),
    )


class ScriptedBackend(ComputeBackend):
    """A provider whose launches follow a script: "ok", "crash", or an exception to raise."""

    name = "local"
    named_by_us = True  # keyed by the name it is given, as the local backend is

    def __init__(self, settings, script=()):
        super().__init__(settings)
        self.script = list(script)
        self.resources: dict[str, str] = {}  # native id -> native status
        self.launch_calls = 0
        self._lock = threading.Lock()

    def _launch_impl(self, job, handle):
        with self._lock:
            self.launch_calls += 1
            step = self.script.pop(0) if self.script else "ok"
            if step == "crash":
                raise SystemExit("the function died mid-invocation")  # not an error we handle: a crash
            if isinstance(step, Exception):
                raise step
            # Launching the same native name twice finds the existing resource (as every backend must).
            self.resources.setdefault(handle.native_name, "Running")
            return LaunchResult(handle.native_name)

    def _describe_impl(self, handle):
        status = self.resources.get(handle.native_name)
        if status is None:
            return None
        return Observation(JobStatus.RUNNING, status, handle.native_name, handle.job_id, handle.attempt)

    def _cancel_impl(self, handle):
        self.resources.pop(handle.native_name, None)


def boto(settings, service: str):
    """A plain boto3 client on `settings`' endpoint (moto in tests), to set up or inspect the provider's side."""
    import boto3

    return boto3.client(service, region_name=settings.region, endpoint_url=settings.aws_endpoint_url)


def batch_queues(settings) -> str:
    """The Batch side a BatchBackend on `settings` launches into, on moto: an unmanaged compute environment and
    the CPU and GPU job queues the settings name; returns the compute environment's ARN."""
    client = boto(settings, "batch")
    role = boto(settings, "iam").create_role(RoleName=f"{settings.stage}-batch", AssumeRolePolicyDocument="{}")
    env = client.create_compute_environment(
        computeEnvironmentName=f"{settings.stage}-ce",
        type="UNMANAGED",
        state="ENABLED",
        serviceRole=role["Role"]["Arn"],
    )["computeEnvironmentArn"]
    for queue in (settings.batch_job_queue, settings.batch_gpu_job_queue):
        client.create_job_queue(
            jobQueueName=queue,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env}],
        )
    return env


@contextlib.contextmanager
def moto_service(store, tmp_path, backends: str = "sagemaker,aws-batch,ec2,local", regions: tuple[str, ...] = ()):
    """A JobService over `store` with the real AWS backends on in-process moto, ready to launch: Batch queues,
    the EC2 instance profile, an AMI and the artifacts bucket; its backends have moto clients in the settings'
    region and in `regions`. Yields (service, ec2 client)."""
    from dataclasses import replace

    import boto3
    from moto import mock_aws

    from chalicelib.jobs.service import JobService

    with mock_aws(config={"batch": {"use_docker": False}}):
        base = make_settings(tmp_path, None, JOBPLANE_BACKENDS=backends)
        ec2 = boto(base, "ec2")
        boto(base, "iam").create_instance_profile(InstanceProfileName=base.ec2_instance_profile)
        boto(base, "s3").create_bucket(Bucket=base.artifacts_bucket)
        if "aws-batch" in backends.split(","):
            batch_queues(base)
        settings = replace(base, ec2_ami=ec2.describe_images()["Images"][0]["ImageId"])
        service = JobService(store, settings)
        # The process's shared clients may predate moto's import (and so bypass the mock): clients made here
        for name in settings.enabled_backends:
            backend = service.backend(name)
            if hasattr(backend, "set_client"):
                for api in ("sagemaker", "batch", "ecs", "ec2", "s3", "logs", "sts", "iam"):
                    backend.set_client(api, boto(settings, api))
                    for region in regions:
                        backend.set_client(api, boto3.client(api, region_name=region), region)
        yield service, ec2


def api_event(method: str, path: str, token: str, body: dict | None = None) -> dict:
    """An API Gateway REST proxy event, as Lambda hands it to the Chalice app."""
    headers = {"authorization": f"Bearer {token}", "host": "api.example.com"}
    if body is not None:
        headers["content-type"] = "application/json"
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": path,
            "httpMethod": method,
            "path": f"/api{path}",
            "stage": "api",
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }


def count_dynamodb(store) -> collections.Counter[str]:
    """A live count of the DynamoDB operations `store` sends (GetItem, Query, ...), from botocore before-call hooks."""
    counts: collections.Counter[str] = collections.Counter()

    def before_call(model, **_):
        counts[model.name] += 1

    for model in store.models.values():
        model._get_connection().connection.client.meta.events.register("before-call.dynamodb", before_call)
    return counts


# --- DynamoDB faults ---------------------------------------------------------------------------------------
_DYNAMO_PREFIX = "com.amazonaws.dynamodb.v20120810#"


class _Raw:
    def stream(self, **_):
        yield b""


def _cancelled(request) -> dict:
    """TransactWriteItems: the whole transaction cancelled, one reason per item in request order."""
    items = len(json.loads(request.body)["TransactItems"])
    reasons = [{"Code": "None"}] * (items - 1) + [
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
    ]
    codes = ", ".join(r["Code"] for r in reasons)
    return {
        "__type": f"{_DYNAMO_PREFIX}TransactionCanceledException",
        "Message": f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
        "CancellationReasons": reasons,
    }


def _single(_request) -> dict:
    """PutItem / UpdateItem on an item a transaction is writing."""
    return {"__type": f"{_DYNAMO_PREFIX}TransactionConflictException", "message": "Transaction is ongoing for the item"}


def inject_transaction_conflicts(store, count: int, operations=("TransactWriteItems",)) -> dict[str, int]:
    """The next `count` calls of `operations` answer HTTP 400 with DynamoDB's conflict error (the emulator
    applies requests one at a time, so it never does); returns the live count of injected answers."""
    from botocore.awsrequest import AWSResponse

    state = {"left": count, "seen": 0}
    lock = threading.Lock()

    def conflict(request, **_):
        with lock:
            if state["left"] <= 0:
                return None
            state["left"] -= 1
            state["seen"] += 1
        operation = request.headers["X-Amz-Target"].decode().rsplit(".", 1)[-1]
        body = _cancelled(request) if operation == "TransactWriteItems" else _single(request)
        response = AWSResponse(request.url, 400, {"x-amzn-requestid": "conflict"}, _Raw())
        response._content = json.dumps(body).encode()
        return response

    for client in {m._get_connection().connection.client for m in store.models.values()}:
        for operation in operations:
            client.meta.events.register(f"before-send.dynamodb.{operation}", conflict)
    return state


# --- Google Cloud: settings for the fake APIs (tests/fakegcp.py), payloads in Google's published shapes ----
GCP_PROJECT = "my-project"
GCP_STATUS_URI = "gs://jp-status/test"


def gcp_fixture(name: str) -> dict:
    """A recorded Google payload from tests/fixtures/gcp."""
    return fixture_json("gcp", name)


def k8s_env(fake, *clusters: dict[str, Any]) -> dict[str, str]:
    """Settings variables for the kubernetes backend on the loopback API server `fake` (tests/fakek8s.py):
    KUBECONFIG naming it, and `clusters` (JOBPLANE_K8S_CLUSTERS entries; none: its current context)."""
    env = {"JOBPLANE_BACKENDS": "kubernetes,local", "KUBECONFIG": str(fake.config)}
    if clusters:
        env["JOBPLANE_K8S_CLUSTERS"] = json.dumps(list(clusters))
    return env


def gcp_env(endpoint: str) -> dict[str, str]:
    """Settings variables for the GCP backends on the fake at `endpoint` (plus local)."""
    return {
        "JOBPLANE_BACKENDS": "vertex,gce,local",
        "JOBPLANE_GCP_PROJECT": GCP_PROJECT,
        "JOBPLANE_GCP_REGION": "us-central1",
        "JOBPLANE_GCE_ZONE": "us-central1-a",
        "JOBPLANE_GCP_STATUS_URI": GCP_STATUS_URI,
        "JOBPLANE_GCP_EVENTS_TOPIC": f"projects/{GCP_PROJECT}/topics/jobplane-test-events",
        "JOBPLANE_GCP_API_ENDPOINT": endpoint,
    }


def submit(service, **spec):
    """Submit a job as alice through `service` (the API's path, without HTTP)."""
    from chalicelib.auth import Principal

    body = {"name": "train", "command": ["python", "train.py"], **spec}
    job, _ = service.submit(Principal("alice", False), parse_spec(body))
    return job


def pubsub_data(payload: dict, attributes: dict | None = None, message_id: str = "2070443601311540") -> dict:
    """A messagePublished CloudEvent's data in Google's published shape (push body fixture), new payload."""
    data = copy.deepcopy(gcp_fixture("pubsub_push_body.json"))
    data["message"]["data"] = base64.b64encode(json.dumps(payload).encode()).decode()
    data["message"]["attributes"] = attributes or {}
    data["message"]["messageId"] = data["message"]["message_id"] = message_id
    return data


# --- the local stack as a real process (`jobplane local up`), for end-to-end tests ------------------------
JOBPLANE = [sys.executable, "-m", "jobplane.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stack(
    directory: Path, port: int | None = None, sigint_ignored: bool = False, args: tuple[str, ...] = (), **extra_env
) -> dict:
    """`jobplane local up` on `directory` (its state folder), ready to serve; a log per life beside it.

    `sigint_ignored`: started the way CI workers and nohup start it, with SIGINT ignored (Ctrl-C must
    still stop it)."""
    port = port or free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JOBPLANE_LOCAL_DIR": str(directory), **extra_env}
    env.pop("AWS_ENDPOINT_URL", None)
    log = open(directory.parent / f"{directory.name}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [*JOBPLANE, "local", "up", "--port", str(port), "--reconcile-seconds", "1", *args],
        cwd=ROOT,
        env=env,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"stack exited: {Path(log.name).read_text()}")
        try:
            state = json.loads((directory / "local.json").read_text())
            if state["pid"] != proc.pid:
                return None  # the file a killed stack left behind
            return state if requests.get(state["api"] + "/health", timeout=1).ok else None
        except (OSError, ValueError, KeyError, requests.RequestException):
            return None

    state = wait_for(ready, timeout=60.0, interval=0.2, what="the local stack")
    return {"state": state, "proc": proc, "log": log, "env": env, "dir": directory}


def stop_stack(stack, sig=signal.SIGINT) -> int:
    """Stop a stack start_stack started (Ctrl-C by default) and return its exit status."""
    proc = stack["proc"]
    try:
        if proc.poll() is None:
            proc.send_signal(sig)
            return proc.wait(timeout=40)
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()  # the test has failed already; leave nothing running behind it
        stack["log"].close()


def stack_api(stack, method, path, token=None, **kw):
    """One request to a running stack's API (as its admin unless `token` says otherwise)."""
    token = token or stack["state"]["admin_token"]
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    return requests.request(method, stack["state"]["api"] + path, headers=headers, timeout=30, **kw)


def stack_cli(stack, *args, stdin=None, check=True):
    """The `jobplane` CLI against a running stack (its env names the stack's folder)."""
    result = subprocess.run(
        [*JOBPLANE, *args], cwd=ROOT, env=stack["env"], input=stdin, capture_output=True, text=True, timeout=180
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def kill_runners(directory: Path) -> None:
    """A job's runner outlives a kill -9 of the stack by design; the test leaves none behind."""
    for pid_file in (directory / "jobs").glob("*/runner.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


# --- issue 11's contract end to end: one spec and train script for every backend the stack runs ---------
CONTRACT_DATA = "e2e-datasets"
CONTRACT_ARTIFACTS = "jobplane-local-artifacts"
# Reads both inputs and the setup's file, resumes from the checkpoint, sleeps at epoch 2 of attempt 1 (the
# test takes the machine away there), and writes its outputs at the end.
CONTRACT_TRAIN = """
import json, os, pathlib, time
inputs = pathlib.Path(os.environ["JOBPLANE_INPUT_DIR"])
ckpt = pathlib.Path(os.environ["JOBPLANE_CHECKPOINT_DIR"]) / "epoch"
out = pathlib.Path(os.environ["JOBPLANE_OUTPUT_DIR"])
rows = (inputs / "train" / "part-0.csv").read_text() + (inputs / "train" / "sub" / "part-1.csv").read_text()
labels = (inputs / "labels" / "labels.txt").read_text().split()
assert pathlib.Path("setup-done").read_text() == "ok\\n"
start = int(ckpt.read_text()) if ckpt.exists() else 0
print(f"attempt {os.environ['JOBPLANE_ATTEMPT']} resumed from epoch {start}", flush=True)
for epoch in range(start + 1, 5):
    ckpt.write_text(str(epoch))
    print(f"epoch {epoch}", flush=True)
    if epoch == 2 and os.environ["JOBPLANE_ATTEMPT"] == "1":
        time.sleep(300)  # the test takes this machine away here
(out / "metrics").mkdir(exist_ok=True)
(out / "model.txt").write_text(f"rows={len(rows.splitlines())} labels={len(labels)}")
(out / "metrics" / "summary.json").write_text(json.dumps({"epochs": 4, "resumed_from": start}))
"""
CONTRACT_SPEC = """
name: resumable
backend: {backend}
workdir: src
setup: test ! -e old.ckpt && echo ok > setup-done
command: python3 train.py
inputs:
  train: s3://{data}/cifar/train/
  labels: s3://{data}/cifar/labels.txt
retries: {{max_attempts: 2, on: [interruption]}}
"""


def stack_s3(stack):
    """A boto3 S3 client on a running stack's embedded AWS."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=stack["state"]["aws_endpoint"],
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the embedded emulator's placeholder
    )


def contract_job(stack, folder: Path, backend: str) -> Path:
    """The contract's two inputs in the stack's S3, a workdir (with a file its .gitignore leaves out) and
    the spec for `backend` in `folder`; returns the spec's path."""
    s3 = stack_s3(stack)
    s3.create_bucket(Bucket=CONTRACT_DATA)
    s3.put_object(Bucket=CONTRACT_DATA, Key="cifar/train/part-0.csv", Body=b"1,2\n3,4\n")
    s3.put_object(Bucket=CONTRACT_DATA, Key="cifar/train/sub/part-1.csv", Body=b"5,6\n")
    s3.put_object(Bucket=CONTRACT_DATA, Key="cifar/labels.txt", Body=b"cat dog bird\n")
    src = folder / "src"
    src.mkdir()
    (src / "train.py").write_text(CONTRACT_TRAIN)
    (src / ".gitignore").write_text("*.ckpt\n")
    (src / "old.ckpt").write_text("left behind")
    spec = folder / "job.yaml"
    spec.write_text(CONTRACT_SPEC.format(backend=backend, data=CONTRACT_DATA))
    return spec


def contract_checkpoint(stack, job_id: str) -> bytes | None:
    """The job's checkpoint as the stack's S3 holds it (None before the first upload)."""
    s3 = stack_s3(stack)
    key = f"checkpoints/{job_id}/epoch"
    if not s3.list_objects_v2(Bucket=CONTRACT_ARTIFACTS, Prefix=key).get("KeyCount"):
        return None
    return s3.get_object(Bucket=CONTRACT_ARTIFACTS, Key=key)["Body"].read()


def check_contract_artifacts(stack, job_id: str, folder: Path) -> None:
    """The resumed job's outputs: listed by the API and the CLI, downloaded by `jobplane artifacts --download`."""
    listed = stack_api(stack, "GET", f"/jobs/{job_id}/artifacts").json()
    summary = '{"epochs": 4, "resumed_from": 2}'
    assert [(a["key"], a["size"]) for a in listed["artifacts"]] == [
        ("metrics/summary.json", len(summary)),
        ("model.txt", len("rows=3 labels=3")),
    ], listed
    table = stack_cli(stack, "artifacts", job_id).stdout
    assert "metrics/summary.json" in table and "model.txt" in table
    got = folder / "got"
    stack_cli(stack, "artifacts", job_id, "--download", str(got))
    assert (got / "model.txt").read_text() == "rows=3 labels=3"
    assert (got / "metrics" / "summary.json").read_text() == summary


class LogBackend(ScriptedBackend):
    """ScriptedBackend with output: a byte-offset log per native name, or (paged=True) pages behind an
    opaque cursor as CloudWatch and Cloud Logging give them. `fail` makes every logs() call raise it."""

    def __init__(self, settings, output: dict[str, str] | None = None, paged: bool = False, page_lines: int = 2):
        super().__init__(settings)
        self.output = dict(output or {})
        self.paged = paged
        self.page_lines = page_lines
        self.logs_calls = 0
        self.fail: Exception | None = None

    def _logs_impl(self, handle, offset, limit):
        from chalicelib.backends.base import LogChunk, decode_log_token, encode_log_token

        self.logs_calls += 1
        if self.fail is not None:
            raise self.fail
        text = self.output.get(handle.native_name, "")
        if not self.paged:
            data = text.encode()[offset : offset + limit]
            return LogChunk(data.decode(), offset + len(data), True)
        start = decode_log_token(offset)["line"] if offset else 0
        lines = text.splitlines(keepends=True)
        page = lines[start : start + self.page_lines]
        return LogChunk("".join(page), encode_log_token({"line": start + len(page)}), not page)


# --- CloudWatch Logs: events where a service would write them ------------------------------------------
def put_events(logs, group, stream, lines):
    """Write `lines` to a CloudWatch Logs stream (created if needed), as the service would."""
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    try:
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    now = int(time.time() * 1000)
    events = [{"timestamp": now + i, "message": line} for i, line in enumerate(lines)]
    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)


def check_aws_request(service: str, operation: str, params: dict[str, Any]) -> None:
    """Raise unless `params` are a valid `operation` request by the AWS service model botocore ships: botocore's
    own validator (required members, unknown members, types, minimums) and, which it leaves to the service, each
    string's and list's maximum length and each enum's values."""
    import botocore.session
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model(service)
    shape = model.operation_model(operation).input_shape
    validate_parameters(params, shape)
    problems: list[str] = []
    _check_limits(shape, params, operation, problems)
    if problems:
        raise AssertionError(f"invalid {service} {operation} request: " + "; ".join(problems))


def _check_limits(shape, value: Any, where: str, problems: list[str]) -> None:
    limit = shape.metadata.get("max")
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            if name in value:
                _check_limits(member, value[name], f"{where}.{name}", problems)
    elif shape.type_name == "list":
        if limit is not None and len(value) > limit:
            problems.append(f"{where} has {len(value)} items, at most {limit}")
        for i, item in enumerate(value):
            _check_limits(shape.member, item, f"{where}[{i}]", problems)
    elif shape.type_name == "map":
        if limit is not None and len(value) > limit:
            problems.append(f"{where} has {len(value)} entries, at most {limit}")
        for key, item in value.items():
            _check_limits(shape.key, key, f"{where} key {key!r}", problems)
            _check_limits(shape.value, item, f"{where}.{key}", problems)
    elif shape.type_name == "string":
        if limit is not None and len(value) > limit:
            problems.append(f"{where} has {len(value)} characters, at most {limit}")
        if shape.enum and value not in shape.enum:
            problems.append(f"{where} is {value!r}, not one of {shape.enum}")


# --- DynamoDB Streams records, as Lambda's event source delivers them to notify ---------------------------
WEBHOOK = "/services/T000/B000/XXXX"  # the Slack webhook path the tests' sink answers on
STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/jp-test-jobs/stream/2024-05-01T00:00:00.000"


def image(codec, job):
    return codec._item(job).serialize()


def record(codec, new, old=None, seq=1, event_name=None):
    """One record in the exact shape Lambda's DynamoDB Streams event source delivers it."""
    ddb = {
        "ApproximateCreationDateTime": 1714564800.0,
        "Keys": {"job_id": {"S": new.job_id}},
        "NewImage": image(codec, new),
        "SequenceNumber": f"{seq:021d}",
        "SizeBytes": 1024,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if old is not None:
        ddb["OldImage"] = image(codec, old)
    return {
        "eventID": f"event-{seq}",
        "eventName": event_name or ("MODIFY" if old is not None else "INSERT"),
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": ddb,
        "eventSourceARN": STREAM_ARN,
    }


class InstantBackend(ComputeBackend):
    named_by_us = True  # keyed by the name it is given, as the local backend is
    """Launches nothing; the tests play the provider's events."""

    name = "local"

    def _launch_impl(self, job, handle):
        return LaunchResult(handle.native_name)

    def _describe_impl(self, handle):
        return None

    def _cancel_impl(self, handle):
        return None


# --- inference endpoints -----------------------------------------------------------------------
def endpoint_body(name: str = "clf", **overrides: Any) -> dict[str, Any]:
    """A valid POST /endpoints body (a model by URI on the local backend) with `overrides` merged in."""
    body: dict[str, Any] = {
        "name": name,
        "model": {"uri": "s3://models/clf/"},
        "handler": "serve.py",
        "backend": "local",
        "idle_minutes": 60,
    }
    body.update(overrides)
    return body


def make_endpoint(
    owner: str = "alice",
    status=None,
    created_at: datetime | None = None,
    **changes: Any,
):
    """An Endpoint record from endpoint_body()'s spec (validated), CREATING unless `status` says otherwise."""
    from chalicelib.endpoints.model import Endpoint, EndpointStatus, new_endpoint_id
    from chalicelib.endpoints.spec import parse_endpoint_spec

    spec = parse_endpoint_spec(endpoint_body(**changes.pop("body", {}))).model_dump(mode="json")
    fields: dict[str, Any] = {
        "endpoint_id": new_endpoint_id(),
        "name": spec["name"],
        "owner": owner,
        "status": status or EndpointStatus.CREATING,
        "backend": spec["backend"],
        "spec": spec,
        "created_at": created_at or datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "model_uri": spec["model"]["uri"],
        "handler": spec["handler"],
    }
    fields.update(changes)
    return Endpoint(**fields)


# --- inference endpoints: what their backends are handed ------------------------------------------
# A handler whose preprocess and postprocess visibly change the request and the answer, and that raises on
# {"boom": ...}: the model is the number in model_dir/scale.txt.
ENDPOINT_HANDLER = """
import os


def load(model_dir):
    with open(os.path.join(model_dir, "scale.txt")) as fh:
        return float(fh.read())


def preprocess(request):
    if "boom" in request:
        raise ValueError("boom requested")
    return [float(x) for x in request["x"]]


def predict(model, inputs):
    return [model * x for x in inputs]


def postprocess(outputs):
    return {"y": outputs, "postprocessed": True}
"""


def make_deployment(**overrides: Any):
    """An endpoint Deployment as the endpoint service hands it to a backend."""
    from chalicelib.endpoints.backends.base import Deployment, EndpointResources

    fields: dict[str, Any] = {
        "endpoint_id": "e" * 32,
        "name": "scaler",
        "stage": "test",
        "owner": "alice",
        "model_uri": "s3://models-bucket/scaler/",
        "handler": "serve.py",
    }
    resources = overrides.pop("resources", None)
    fields.update(overrides)
    if isinstance(resources, dict):
        fields["resources"] = EndpointResources(**resources)
    elif resources is not None:
        fields["resources"] = resources
    return Deployment(**fields)


def endpoint_model_dir(folder: Path, scale: float = 3.0, handler: bool = True) -> Path:
    """A model folder (scale.txt) with, when `handler`, serve.py (ENDPOINT_HANDLER) among its files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scale.txt").write_text(str(scale))
    if handler:
        (folder / "serve.py").write_text(ENDPOINT_HANDLER)
    return folder


# --- budgets ---------------------------------------------------------------------------------------------
BUDGET_PRICE = 2.0  # USD per hour of every job of a BudgetWorld


class PricedBackend(ScriptedBackend):
    def hourly_quote(self, spec, region, usage=None):
        from datetime import date

        from chalicelib.pricing import Price

        return self.name, Price(BUDGET_PRICE, date(2026, 12, 1), "BudgetWorld")


class BudgetWorld:
    """Jobs, budgets and a priced backend (BUDGET_PRICE per hour) for the budget tests: an in-memory job store
    unless given one."""

    def __init__(self, settings, jobs=None, budget_store=None):
        from chalicelib.budgets.service import BudgetService
        from chalicelib.jobs.service import JobService
        from chalicelib.store.budgets import InMemoryBudgetStore
        from chalicelib.store.memory import InMemoryJobStore

        self.settings = settings
        self.jobs = jobs or InMemoryJobStore()
        self.budget_store = budget_store or InMemoryBudgetStore()
        self.backends: dict[str, PricedBackend] = {}
        self.budgets = BudgetService(self.budget_store, self.jobs, settings, backend_factory=self.backend)
        self.service = JobService(self.jobs, settings, backend_factory=self.backend, budgets=self.budgets)

    def backend(self, name, settings):
        return self.backends.setdefault(name, PricedBackend(settings))

    def set(self, **body):
        from chalicelib.auth import Principal

        return self.budgets.set(Principal("root", True), body)

    def spent(self, owner="alice", usd=1.0, labels=None, created=None, status=None, **changes):
        """A finished job of `owner` that cost `usd`, submitted `created` (default: now)."""
        from chalicelib.jobs.model import EventSource, HistoryEntry

        status = status or JobStatus.SUCCEEDED
        at = created or utcnow()
        job = make_job(
            owner=owner,
            status=status,
            created_at=at,
            started_at=at,
            finished_at=at + timedelta(hours=usd / BUDGET_PRICE),
            cost_estimate_usd=usd,
            spec={"labels": labels or {}},
            **changes,
        )
        self.jobs.create_job(job, HistoryEntry(job.job_id, at, None, status, "seeded", EventSource.API))
        return job

    def running(self, owner="alice", hours=1.0, labels=None):
        """A RUNNING job of `owner` started `hours` ago, no cost recorded yet (its price times its time so far)."""
        from chalicelib.jobs.model import EventSource, HistoryEntry

        started = utcnow() - timedelta(hours=hours)
        job = make_job(
            owner=owner,
            status=JobStatus.RUNNING,
            created_at=started,
            started_at=started,
            named=True,
            spec={"labels": labels or {}},
        )
        self.jobs.create_job(job, HistoryEntry(job.job_id, started, None, job.status, "seeded", EventSource.API))
        self.backend(job.backend, self.settings).resources[job.native_id] = "Running"  # reconcile finds it
        return job


ENDPOINT_NATIVE_NAME = "jpe-" + "e" * 32
# The published sample of "SageMaker Endpoint State Change" (SageMaker developer guide, EventBridge events),
# with our endpoint's name.
ENDPOINT_STATE_EVENT = {
    "version": "0",
    "id": "d2921b5a-b0ad-cace-a8e3-0f159d018e06",
    "detail-type": "SageMaker Endpoint State Change",
    "source": "aws.sagemaker",
    "account": "111122223333",
    "time": "1583831889050",
    "region": "us-west-2",
    "resources": [f"arn:aws:sagemaker:us-west-2:111122223333:endpoint/{ENDPOINT_NATIVE_NAME}"],
    "detail": {
        "EndpointName": ENDPOINT_NATIVE_NAME,
        "EndpointArn": f"arn:aws:sagemaker:us-west-2:111122223333:endpoint/{ENDPOINT_NATIVE_NAME}",
        "EndpointConfigName": f"{ENDPOINT_NATIVE_NAME}-v1",
        "ProductionVariants": [{"DesiredWeight": 1.0, "DesiredInstanceCount": 1.0}],
        "EndpointStatus": "IN_SERVICE",
        "CreationTime": 1592411992203.0,
        "LastModifiedTime": 1592411994287.0,
        "Tags": {},
    },
}
