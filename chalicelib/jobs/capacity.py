"""Quota-aware queue, the pure part: which capacity pools a job draws from, and how much."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def family_of(spec: dict[str, Any]) -> str:
    """The pool family of a spec: its instance family, TPU generation, GPU type, or `cpu`."""
    resources = spec.get("resources") or {}
    instance_type = resources.get("instance_type")
    if instance_type:
        # ml.g5.xlarge -> ml.g5, g5.12xlarge -> g5, a2-highgpu-1g -> a2-highgpu
        if "." in instance_type:
            return instance_type.rsplit(".", 1)[0]
        return instance_type.rsplit("-", 1)[0]
    if resources.get("tpu"):
        return "tpu-" + str(resources["tpu"]).split("-")[0]
    if resources.get("gpus", 0) > 0:
        return str(resources.get("gpu_type"))
    return "cpu"


def units_of(spec: dict[str, Any]) -> int:
    """GPUs the job holds; a CPU-only or TPU job counts as one unit."""
    gpus = int((spec.get("resources") or {}).get("gpus", 0))
    return gpus if gpus > 0 else 1


def claims_for(backend: str, spec: dict[str, Any], limits: dict[str, int]) -> tuple[tuple[Claim, int], ...]:
    """(claim, limit) for every configured pool the job draws from; `backend:*` covers GPU families only."""
    family = family_of(spec)
    units = units_of(spec)
    pools = [f"{backend}:{family}"]
    if family != "cpu":
        pools.append(f"{backend}:*")
    return tuple((Claim(pool, units), limits[pool]) for pool in pools if pool in limits)


def queue_order(job) -> tuple:
    """Dispatch order: higher spec priority first, then oldest first."""
    return (-int(job.spec.get("priority", 0)), job.created_at, job.job_id)
