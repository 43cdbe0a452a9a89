"""What every AWS backend shares: cached boto3 clients, jobplane's tags, instance-type tables."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from chalicelib.backends.base import CALL_REGION, ComputeBackend, Handle, ManagedResource, job_env, parse_native_name
from chalicelib.errors import UnsupportedError

if TYPE_CHECKING:
    from chalicelib.jobs.spec_types import JobSpec, Resources
    from chalicelib.pricing import Quote

log = logging.getLogger("jobplane.aws")
TAG_JOB_ID = "jobplane:job-id"
TAG_ATTEMPT = "jobplane:attempt"
TAG_NATIVE = "jobplane:native-id"
TAG_MANAGED = "jobplane:managed"
TAG_STAGE = "jobplane:stage"
TAG_STOPPED_BY = "jobplane:stopped-by"
TAG_KIND = "jobplane:kind"
KIND_DEVVM = "devvm"

# (GPU type, GPUs per instance, EC2 instance type); SageMaker's type is the same with "ml." in front.
# The smallest instance with at least the requested GPUs wins.
GPU_INSTANCES: tuple[tuple[str, int, str], ...] = (
    ("T4", 1, "g4dn.xlarge"),
    ("T4", 4, "g4dn.12xlarge"),
    ("T4", 8, "g4dn.metal"),
    ("A10G", 1, "g5.xlarge"),
    ("A10G", 4, "g5.12xlarge"),
    ("A10G", 8, "g5.48xlarge"),
    ("L4", 1, "g6.xlarge"),
    ("L4", 4, "g6.12xlarge"),
    ("L4", 8, "g6.48xlarge"),
    ("L40S", 1, "g6e.xlarge"),
    ("L40S", 4, "g6e.12xlarge"),
    ("L40S", 8, "g6e.48xlarge"),
    ("V100", 1, "p3.2xlarge"),
    ("V100", 4, "p3.8xlarge"),
    ("V100", 8, "p3.16xlarge"),
    ("A100", 8, "p4d.24xlarge"),
    ("A100-80GB", 8, "p4de.24xlarge"),
    ("H100", 8, "p5.48xlarge"),
    ("H200", 8, "p5e.48xlarge"),
)
# CPU-only: (vCPUs, memory GiB, type) of the general-purpose family, smallest first.
CPU_INSTANCES: tuple[tuple[int, int, str], ...] = (
    (2, 8, "m5.large"),
    (4, 16, "m5.xlarge"),
    (8, 32, "m5.2xlarge"),
    (16, 64, "m5.4xlarge"),
    (48, 192, "m5.12xlarge"),
    (96, 384, "m5.24xlarge"),
)
GPU_TYPES_ON_AWS = tuple(dict.fromkeys(t for t, _, _ in GPU_INSTANCES))


def instance_type_for(resources: Resources, prefix: str = "") -> str:
    """The instance type resources ask for: their own `instance_type`, else the GPU table, else the CPU table.

    `prefix` is "ml." for SageMaker. Raises UnsupportedError naming the field when nothing fits.
    """
    explicit = resources.instance_type
    if explicit:
        if prefix and not explicit.startswith(prefix):
            explicit = prefix + explicit
        if not prefix and explicit.startswith("ml."):
            explicit = explicit[3:]
        return explicit
    gpus = resources.gpus
    if gpus > 0:
        gpu_type = resources.gpu_type
        sizes = [(n, t) for g, n, t in GPU_INSTANCES if g == gpu_type]
        if not sizes:
            raise UnsupportedError(
                f"no AWS instance type has {gpu_type} GPUs",
                [{"field": "resources.gpu_type", "message": f"on AWS: {', '.join(GPU_TYPES_ON_AWS)}"}],
            )
        for count, name in sizes:
            if count >= gpus:
                return prefix + name
        raise UnsupportedError(
            f"no AWS instance type has {gpus} {gpu_type} GPUs",
            [{"field": "resources.gpus", "message": f"at most {sizes[-1][0]} {gpu_type} GPUs per job"}],
        )
    cpus = float(resources.cpus)
    memory = float(resources.memory_gb)
    for vcpus, mem, name in CPU_INSTANCES:
        if vcpus >= cpus and mem >= memory:
            return prefix + name
    raise UnsupportedError(
        f"no general-purpose instance has {cpus:g} vCPUs and {memory:g} GiB",
        [{"field": "resources.cpus", "message": "at most 96 vCPUs and 384 GiB; or set resources.instance_type"}],
    )


def aws_quote(catalog, table: str, region: str, instance_type: str, spot: bool, count: int = 1) -> tuple[str, Quote]:
    """(what is priced, its price per hour) for `count` instances of `instance_type` from the catalog's `table`."""
    purchase = "spot" if spot else "on_demand"
    quote = catalog.price(table, region, instance_type, purchase)
    many = f"{count} x " if count > 1 else ""
    return f"{table} {many}{instance_type} {purchase.replace('_', '-')} in {region}", quote.times(count)


def container_instance_type(client, cluster: str | None, arn: str | None) -> str | None:
    """The `ecs.instance-type` attribute of an ECS container instance (DescribeContainerInstances), or None when
    there is none to read (Fargate, not placed yet) or ECS cannot say. `cluster` None: the one the ARN names
    (arn:aws:ecs:REGION:ACCOUNT:container-instance/CLUSTER/ID, as Batch's compute environments have them)."""
    from chalicelib.backends.aws.errors import aws_errors
    from chalicelib.errors import BackendError

    if not arn:
        return None
    if cluster is None:
        parts = arn.split(":", 5)[-1].split("/")
        if len(parts) != 3:
            return None  # the old ARN format does not name its cluster
        cluster = parts[1]
    try:
        with aws_errors("ecs", "DescribeContainerInstances"):
            found = client.describe_container_instances(cluster=cluster, containerInstances=[arn])
    except BackendError as exc:
        log.warning("reading the container instance %s failed: %s", arn, exc.message)  # a cost is not worth a failure
        return None
    for instance in found.get("containerInstances", []):
        attributes = {a.get("name"): a.get("value") for a in instance.get("attributes") or []}
        if attributes.get("ecs.instance-type"):
            return attributes["ecs.instance-type"]
    return None


def role_arn(name_or_arn: str, account: str = "*") -> str:
    """A configured role: an ARN is kept, a bare name becomes an ARN in the given account."""
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    return f"arn:aws:iam::{account}:role/{name_or_arn}"


def epoch_ms(value: Any) -> datetime | None:
    """Event timestamps: epoch milliseconds (number or string), ISO strings, or datetimes."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    try:
        return datetime.fromtimestamp(float(value) / 1000.0, UTC)
    except (TypeError, ValueError):
        pass
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


class AwsBackend(ComputeBackend):
    """An AWS service backend: one client per service from the container's session, built on first use."""

    #: the boto3 service names this backend calls
    services: ClassVar[tuple[str, ...]] = ()
    #: whether the backend's jobs move code, inputs, outputs and checkpoints through the stage's artifact store
    #: with the role they run as (job_role_policy() is then what that role needs there)
    stages_files: ClassVar[bool] = False

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self._clients: dict[str, Any] = {}
        self._client_lock = threading.Lock()
        self._account: str | None = None

    def client(self, service: str | None = None):
        """The client of `service` for the region of the job this call is about (base.CALL_REGION), else the
        deployment's; a client handed in with set_client serves the deployment's region."""
        name = service or self.services[0]
        region = CALL_REGION.get()
        key = name if region in (None, self.settings.region) else f"{name}@{region}"
        with self._client_lock:
            if key not in self._clients:
                from chalicelib import aws_session

                # The container's one session: a session per backend parsed every service description and
                # resolved credentials again (a second STS client and ~0.1 s per backend on a cold start).
                self._clients[key] = aws_session.client(
                    name, region or self.settings.region, self.settings.aws_endpoint_url, aws_session.standard_retries()
                )
            return self._clients[key]

    def set_client(self, service: str, client: Any, region: str | None = None) -> None:
        """Use this client for `service` (in `region`; tests hand in a client wrapped in a botocore Stubber)."""
        key = service if region in (None, self.settings.region) else f"{service}@{region}"
        with self._client_lock:
            self._clients[key] = client

    def job_role_policy(self) -> dict[str, Any] | None:
        """The IAM policy the role this backend's jobs run as needs in the artifact store (None: no such role)."""
        if not self.stages_files:
            return None
        from chalicelib.backends.aws.staging import job_role_policy

        return job_role_policy(self.settings.artifacts_bucket)

    def job_tags(self, handle: Handle, job=None) -> dict[str, str]:
        tags = {
            TAG_JOB_ID: handle.job_id,
            TAG_ATTEMPT: str(handle.attempt),
            TAG_NATIVE: handle.native_name,
            TAG_MANAGED: "true",
            TAG_STAGE: self.settings.stage,
        }
        if job is not None:
            tags["jobplane:owner"] = job.owner
            for key, value in sorted(job.spec.labels.items()):
                tags[f"label:{key}"] = value
        return tags

    def role(self, name_or_arn: str) -> str:
        """The role's ARN in this account (looked up once with sts:GetCallerIdentity when only a name is set)."""
        if name_or_arn.startswith("arn:"):
            return name_or_arn
        if self._account is None:
            from chalicelib.backends.aws.errors import aws_errors

            with aws_errors("sts", "GetCallerIdentity"):
                self._account = self.client("sts").get_caller_identity()["Account"]
        return role_arn(name_or_arn, self._account)

    def confirmed(self, resource: ManagedResource, tags: dict[str, str]) -> ManagedResource | None:
        """`resource` as its own tags describe it, when they say this deployment made it; else None."""
        parsed = self.ours(tags)
        if parsed is None:
            return None
        job_id, attempt = parsed
        return replace(resource, stage=tags[TAG_STAGE], job_id=job_id, attempt=attempt, unverified=False)

    def ours(self, tags: dict[str, str]) -> tuple[str, int] | None:
        """(job_id, attempt) when the tags say this deployment made the resource, else None."""
        if tags.get(TAG_MANAGED) != "true" or tags.get(TAG_STAGE) != self.settings.stage:
            return None
        parsed = parse_native_name(tags.get(TAG_NATIVE))
        if parsed is None or parsed[0] != tags.get(TAG_JOB_ID):
            return None
        return parsed


def env_list(spec: JobSpec, handle: Handle) -> list[tuple[str, str]]:
    """The job's environment, plus what jobplane tells every job about itself, sorted."""
    return sorted(job_env(spec, handle).items())
