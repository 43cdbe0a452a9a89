"""Quota-aware queue, the pure part: which capacity pools a job draws from, and how much."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# Claim lives with the job model (a job record holds its claims); the pools are decided here.
from chalicelib.jobs.model import Claim

if TYPE_CHECKING:
    from chalicelib.jobs.spec_types import JobSpec


def family_of(spec: JobSpec) -> str:
    """The pool family of a spec: its instance family, TPU generation, GPU type, or `cpu`."""
    resources = spec.resources
    instance_type = resources.instance_type
    if instance_type:
        # ml.g5.xlarge -> ml.g5, g5.12xlarge -> g5, a2-highgpu-1g -> a2-highgpu
        if "." in instance_type:
            return instance_type.rsplit(".", 1)[0]
        return instance_type.rsplit("-", 1)[0]
    if resources.tpu:
        return "tpu-" + resources.tpu.split("-")[0]
    if resources.gpus > 0:
        return str(resources.gpu_type)
    return "cpu"


def units_of(spec: JobSpec) -> int:
    """GPUs the job holds; a CPU-only or TPU job counts as one unit."""
    gpus = spec.resources.gpus
    return gpus if gpus > 0 else 1


def claims_for(
    backend: str, spec: JobSpec, limits: dict[str, int], settings: Any = None
) -> tuple[tuple[Claim, int], ...]:
    """(claim, limit) for every configured pool the job draws from; `backend:*` covers GPU families only.

    None when the backend queues the job itself for these `settings` (a Kueue cluster): its limits defer."""
    if settings is not None and limits and any(pool.startswith(f"{backend}:") for pool in limits):
        from chalicelib.backends import REGISTRY, backend_class

        if backend in REGISTRY and backend_class(backend).defers_capacity(settings, spec):
            return ()
    units = units_of(spec)
    families = families_of(backend, spec)
    pools = [f"{backend}:{family}" for family in families]
    if "cpu" not in families:
        pools.append(f"{backend}:*")
    return tuple((Claim(pool, units), limits[pool]) for pool in pools if pool in limits)


def families_of(backend: str, spec: JobSpec) -> tuple[str, ...]:
    """Every pool family a job on `backend` belongs to: family_of(spec), and the family of the instance the
    backend runs it on (an A10G job on sagemaker is also in `ml.g5`, on ec2 in `g5`, on gce `g2-standard`
    for L4), so `sagemaker:ml.g5=4` applies to the jobs it names whether they say instance_type or gpu_type."""
    from chalicelib.backends import Cloud, descriptor_or_none
    from chalicelib.errors import UnsupportedError

    families = [family_of(spec)]
    resources = spec.resources
    found = descriptor_or_none(backend)
    try:
        if found is not None and found.cloud is Cloud.AWS and not resources.tpu:
            from chalicelib.backends.aws.base import instance_type_for

            families.append(instance_type_for(resources, found.instance_prefix).rsplit(".", 1)[0])
        elif found is not None and found.cloud is Cloud.GCP and not resources.tpu:
            from chalicelib.backends.gcp.base import machine_for

            families.append(machine_for(spec).machine_type.rsplit("-", 1)[0])
    except UnsupportedError:
        pass  # the backend's validate() refuses the job, naming the field
    return tuple(dict.fromkeys(families))


def queue_order(job) -> tuple:
    """Dispatch order: higher spec priority first, then oldest first."""
    return (-job.spec.priority, job.created_at, job.job_id)


# --- account quotas, the pure part: which provider quota a job draws on, in the provider's own unit --------
#: EC2's vCPU quotas per instance family group (Service Quotas, EC2's service code): (on-demand, spot)
EC2_VCPU_QUOTAS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "G and VT": (
        ("L-DB2E81BA", "Running On-Demand G and VT instances"),
        ("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ),
    "P": (
        ("L-417A185B", "Running On-Demand P instances"),
        ("L-7212CCBC", "All P Spot Instance Requests"),
    ),
    "Standard": (
        ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
        ("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"),
    ),
}
_STANDARD_LETTERS = frozenset("acdhimrtz")
#: vCPUs of the EC2 sizes whose name does not say it (the rest follow the naming: large 2, xlarge 4, Nxlarge 4N)
_METAL_VCPUS = {"g4dn.metal": 96, "g5.metal": 192, "m5.metal": 96}
#: Compute Engine's regional GPU quota metric per GCE accelerator type (regions.get `quotas[].metric`)
GCE_GPU_METRICS = {
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-tesla-v100": "NVIDIA_V100_GPUS",
    "nvidia-tesla-p100": "NVIDIA_P100_GPUS",
    "nvidia-tesla-k80": "NVIDIA_K80_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB_GPUS",
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
}


@dataclass(frozen=True)
class QuotaNeed:
    """What one launch takes from one provider quota: `amount` `unit` of quota `code` (`name`) in `region`."""

    service: str  # which quotas: the descriptor's `quota` ("training-instances", "vcpus", "regional-gpus")
    region: str
    code: str | None  # EC2's L-... code, Compute's metric; None where the name is the key (SageMaker)
    name: str
    unit: str  # "instances", "vCPUs", "GPUs"
    amount: int

    @property
    def pool(self) -> str:
        """The counter of jobplane's own use of this quota (shared by every backend that draws on it)."""
        return f"quota:{self.service}@{self.region}:{self.code or self.name}"


@dataclass(frozen=True)
class QuotaFigure:
    """A quota as the provider reported it: its value, and its current usage where the provider says it."""

    code: str
    name: str
    limit: float
    usage: float | None = None


def ec2_vcpus(instance_type: str) -> int | None:
    """vCPUs of an EC2 instance type by its published naming (g5.12xlarge: 48), None when the name does not say."""
    if instance_type in _METAL_VCPUS:
        return _METAL_VCPUS[instance_type]
    size = instance_type.rsplit(".", 1)[-1]
    if size == "large":
        return 2
    if size == "xlarge":
        return 4
    if size.endswith("xlarge") and size[: -len("xlarge")].isdigit():
        return 4 * int(size[: -len("xlarge")])
    return None


def ec2_quota_group(instance_type: str) -> str | None:
    """The vCPU quota group of an instance type: "G and VT", "P", "Standard", or None (no vCPU quota known)."""
    family = instance_type.split(".", 1)[0]
    if family.startswith(("g", "vt")):
        return "G and VT"
    if family.startswith("p"):
        return "P"
    if family[:1] in _STANDARD_LETTERS:
        return "Standard"
    return None


def quota_needs(backend: str, spec: JobSpec, region: str) -> tuple[QuotaNeed, ...]:
    """The provider quotas one launch of `spec` on `backend` in `region` draws on (empty: none jobplane reads).

    SageMaker counts training instances per type ("ml.g5.xlarge for training job usage"; spot has its own);
    EC2 counts running vCPUs per family group; Compute Engine counts GPUs per region and type (preemptible
    and spot GPUs under PREEMPTIBLE_*)."""
    from chalicelib.backends import descriptor_or_none
    from chalicelib.errors import UnsupportedError

    resources = spec.resources
    found = descriptor_or_none(backend)
    kind = found.quota if found is not None else None
    if resources.tpu or kind is None:
        return ()
    try:
        if kind == "training-instances":
            from chalicelib.backends.aws.base import instance_type_for

            instance = instance_type_for(resources, found.instance_prefix)
            usage = "spot training job usage" if resources.spot else "training job usage"
            return (QuotaNeed(kind, region, None, f"{instance} for {usage}", "instances", 1),)
        if kind == "vcpus":
            from chalicelib.backends.aws.base import instance_type_for

            instance = instance_type_for(resources, found.instance_prefix)
            group, vcpus = ec2_quota_group(instance), ec2_vcpus(instance)
            if group is None or vcpus is None:
                return ()
            code, name = EC2_VCPU_QUOTAS[group][1 if resources.spot else 0]
            return (QuotaNeed(kind, region, code, name, "vCPUs", vcpus),)
        if kind == "regional-gpus" and resources.gpus:
            from chalicelib.backends.gcp.base import machine_for

            machine = machine_for(spec)
            metric = GCE_GPU_METRICS.get(machine.gpu.gce_accelerator) if machine.gpu else None
            if metric is None:
                return ()
            if resources.spot:
                metric = f"PREEMPTIBLE_{metric}"
            return (QuotaNeed(kind, region, metric, metric, "GPUs", machine.gpu_count),)
    except UnsupportedError:
        return ()  # the backend's validate() says why it cannot run the job
    return ()


def quota_refusal(need: QuotaNeed, figure: QuotaFigure) -> str | None:
    """Why the quota cannot take this launch, with the figures, or None. Where the provider reports usage
    (Compute Engine), what is left counts; where it does not (Service Quotas), the value alone, and jobplane's
    own use is counted by the quota's pool (quota_claims)."""
    left = figure.limit - (figure.usage or 0.0)
    if need.amount <= left:
        return None
    used = f", {figure.usage:g} in use" if figure.usage is not None else ""
    code = f" ({figure.code})" if figure.code != figure.name else ""
    return (
        f"{figure.name}{code} in {need.region}: {figure.limit:g} {need.unit}{used}; "
        f"the job needs {need.amount} {need.unit}"
    )


def quota_claims(needs_and_figures) -> tuple[tuple[Claim, int], ...]:
    """(claim, limit) on the pool of every quota whose usage the provider does not report: jobplane counts its
    own use there, so two launches in one tick cannot both take the last instances."""
    return tuple(
        (Claim(need.pool, need.amount), int(figure.limit))
        for need, figure in needs_and_figures
        if figure is not None and figure.usage is None
    )
