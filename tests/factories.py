"""Test factories: specs, jobs, history entries, observations, managed resources and shared fake backends."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

from chalicelib.backends.base import (
    ComputeBackend,
    LaunchResult,
    ManagedResource,
    Observation,
    PowerState,
    ResourceKind,
)
from chalicelib.jobs.model import EventSource, HistoryEntry, Job, JobStatus, new_job_id, utcnow
from chalicelib.jobs.spec import parse_spec
from chalicelib.jobs.spec_types import JobSpec

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


def make_spec(**overrides: Any) -> JobSpec:
    """The typed JobSpec, validated the way the API validates one."""
    return parse_spec(spec_dict(**overrides))


def make_job(
    backend: str = "local",
    spec: dict[str, Any] | JobSpec | None = None,
    job_id: str | None = None,
    attempt: int = 1,
    owner: str = "alice",
    status: JobStatus = JobStatus.LAUNCHING,
    created_at: datetime | None = None,
    **changes: Any,
) -> Job:
    """A job on `backend`; `spec` is a typed spec or a dict laid over `spec_dict`'s defaults for that backend
    (checked as the API checks a spec, not against the backend, so a test can build a job the backend refuses)."""
    if not isinstance(spec, JobSpec):
        spec = parse_spec(spec_dict(**{"backend": backend, **(spec or {})}))
    job = Job(job_id or new_job_id(), spec.name, owner, status, backend, spec, created_at or utcnow(), attempt=attempt)
    return job.with_changes(**changes) if changes else job


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
