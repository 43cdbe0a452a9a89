"""Quota-aware queue, the pure part: which capacity pools a job draws from, and how much."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chalicelib.jobs.spec_types import JobSpec


@dataclass(frozen=True)
class Claim:
    """`units` of pool `pool` (e.g. "sagemaker:A10G"), held by a job from LAUNCHING until it ends."""

    pool: str
    units: int

    def to_list(self) -> list[Any]:
        return [self.pool, self.units]

    @classmethod
    def from_list(cls, raw: list[Any]) -> Claim:
        return cls(str(raw[0]), int(raw[1]))


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
    family = family_of(spec)
    units = units_of(spec)
    pools = [f"{backend}:{family}"]
    if family != "cpu":
        pools.append(f"{backend}:*")
    return tuple((Claim(pool, units), limits[pool]) for pool in pools if pool in limits)


def queue_order(job) -> tuple:
    """Dispatch order: higher spec priority first, then oldest first."""
    return (-job.spec.priority, job.created_at, job.job_id)
