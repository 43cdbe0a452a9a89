"""The planner: which backend runs a job (`backend: auto`), and why, as DESIGN.md ranks them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from chalicelib.backends import Cloud, backend_class, descriptor_or_none
from chalicelib.backends.base import ComputeBackend
from chalicelib.config import Settings
from chalicelib.errors import ValidationError
from chalicelib.jobs.capacity import claims_for

if TYPE_CHECKING:
    from chalicelib.jobs.spec_types import JobSpec

# Enabled names without a descriptor (test doubles) come after every ranked backend.
_UNRANKED = 1 << 30


def plan(
    spec: JobSpec,
    settings: Settings,
    make: Callable[[str], ComputeBackend] | None = None,
) -> tuple[str, str]:
    """(backend, why) for a JobSpec. An explicit backend is taken as is (if enabled and able to run it).

    This is the launch decision, so the chosen backend's validate() runs here and nowhere after it."""
    enabled = settings.enabled_backends
    make = make or (lambda name: backend_class(name)(settings))
    if spec.backend != "auto":
        if spec.backend not in enabled:
            raise ValidationError(
                f"backend {spec.backend!r} is not enabled in this deployment",
                [{"field": "backend", "message": f"enabled here: auto, {', '.join(enabled)}"}],
            )
        make(spec.backend).validate(spec)
        return spec.backend, f"backend {spec.backend!r} requested by the spec"
    limits = dict(settings.capacity_limits)
    # DESIGN.md's ranking, from each descriptor (managed training services, queues, containers, VMs);
    # the local stack (a local default backend) keeps auto jobs local.
    known = {b: descriptor_or_none(b) for b in enabled}
    ranked = sorted(enabled, key=lambda b: known[b].rank if known[b] else _UNRANKED)
    local = [b for b in ranked if known[b] and known[b].cloud is Cloud.LOCAL]
    order = [b for b in ranked if b not in local]
    order = [*local, *order] if settings.default_backend in local else [*order, *local]
    skipped: list[str] = []
    for name in order:
        why_not = _refusal(name, spec, limits, make, settings)
        if why_not:
            skipped.append(f"{name}: {why_not}")
            continue
        reason = f"auto: {name}, {known[name].role if known[name] else name}, for {_describe(spec)}"
        if skipped:
            reason += "; skipped " + "; ".join(skipped)
        return name, reason
    raise ValidationError(
        "no enabled backend can run this job",
        [{"field": "backend", "message": "; ".join(dict.fromkeys(skipped)) or "no backend is enabled"}],
    )


def _refusal(name: str, spec: JobSpec, limits: dict[str, int], make, settings: Settings) -> str | None:
    """Why `name` cannot take this job, or None."""
    runtime = spec.max_runtime_minutes
    found = descriptor_or_none(name)
    limit = found.time_limit_minutes if found else None
    if limit is not None and runtime > limit:
        return f"runs at most {limit} minutes, the job asks for {runtime}"
    try:
        make(name).validate(spec)
    except ValidationError as exc:
        return exc.details[0]["message"] if exc.details else exc.message
    for claim, limit in claims_for(name, spec, limits, settings):
        if limit < claim.units:
            return f"{claim.pool} allows {limit} here (JOBPLANE_CAPACITY_LIMITS)"
    return None


def _describe(spec: JobSpec) -> str:
    resources = spec.resources
    gpus = resources.gpus
    what = f"{gpus}x {resources.gpu_type or resources.instance_type} GPU" if gpus else "a CPU-only job"
    if resources.tpu:
        what = f"TPU {resources.tpu}"
    if resources.spot:
        what += " on spot"
    if not spec.image:
        what += " (bare command, no image)"
    return what
