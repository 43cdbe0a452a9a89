"""The planner: which backend runs a job (`backend: auto`), and why, as DESIGN.md ranks them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from chalicelib.backends import Cloud, backend_class, descriptor_or_none
from chalicelib.backends.base import ComputeBackend
from chalicelib.config import Settings
from chalicelib.errors import ValidationError
from chalicelib.jobs.capacity import claims_for
from chalicelib.jobs.model import Candidate

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
    from chalicelib.jobs.quotas import book_for

    return book_for(settings).refusal(name, spec, None)  # dispatch checks again in the job's own region


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


# --- candidates: where a job may run, in the order failover tries them -------------------------------------
def candidates(spec: JobSpec, first: str, settings: Settings, make: Callable[[str], ComputeBackend]) -> tuple[str, ...]:
    """Candidate.text of every (backend, region, GPU type) the job may run on, in order: backends as the spec
    lists them (the planned one, then `fallback`); within a backend its regions and GPU types by catalog price
    (cheapest first), equal or unknown prices in the spec's order. Each fallback must be enabled and able to run it."""
    for i, name in enumerate(spec.fallback):
        field = f"fallback[{i}]"
        if name not in settings.enabled_backends:
            raise ValidationError(
                f"fallback backend {name!r} is not enabled in this deployment",
                [{"field": field, "message": f"enabled here: {', '.join(settings.enabled_backends)}"}],
            )
        try:
            make(name).validate(spec)
        except ValidationError as exc:
            reason = exc.details[0]["message"] if exc.details else exc.message
            raise ValidationError(
                f"fallback backend {name!r} cannot run this job: {reason}", [{"field": field, "message": reason}]
            ) from None
    # gpu_types are the alternatives to resources.gpu_type, which is always one of them
    gpu_types: tuple[str | None, ...] = (
        tuple(dict.fromkeys((spec.resources.gpu_type, *spec.gpu_types))) if spec.gpu_types else (None,)
    )
    found: list[str] = []
    refused: list[str] = []
    for backend in dict.fromkeys((first, *spec.fallback)):
        regions = _regions(backend, spec, refused)
        options = [Candidate(backend, r, g) for r in regions for g in gpu_types]
        order = {c: i for i, c in enumerate(options)}
        priced = {c: _price(c, spec, settings) for c in options}
        options.sort(key=lambda c: (priced[c] is None, priced[c] or 0.0, order[c]))
        found.extend(c.text for c in options)
    if not found:
        raise ValidationError(
            "no candidate can run this job in the regions it names",
            [{"field": "regions", "message": "; ".join(refused)}],
        )
    return tuple(dict.fromkeys(found))


#: how each cloud spells a region: AWS us-east-1 / us-gov-west-1, Google Cloud us-central1 / europe-west4
_REGION_NAMES = {
    Cloud.AWS: re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+$"),
    Cloud.GCP: re.compile(r"^[a-z]+-[a-z]+\d+$"),
}


def _regions(backend: str, spec: JobSpec, refused: list[str]) -> list[str | None]:
    """The spec's regions this backend can run in (None: the deployment's region, when the spec names none).
    AWS and GCP backends build their clients for the job's region (its endpoint, its zone), so each takes the
    spec's regions that its cloud names that way; local and Kubernetes run where they are."""
    if not spec.regions:
        return [None]
    found = descriptor_or_none(backend)
    cloud = found.cloud if found else None
    pattern = _REGION_NAMES.get(cloud) if cloud is not None else None
    if pattern is not None:
        mine = [r for r in spec.regions if pattern.match(r)]
        if mine:
            return mine
        refused.append(f"{backend} runs in {cloud.value} regions, the spec names {', '.join(spec.regions)}")
        return []
    refused.append(f"{backend} runs in no region (it runs here), the spec names {', '.join(spec.regions)}")
    return []


def _price(candidate: Candidate, spec: JobSpec, settings: Settings) -> float | None:
    """USD per hour of the candidate's instance from the price catalog, or None when the catalog has no price."""
    from chalicelib.backends.aws.base import instance_type_for
    from chalicelib.pricing import Price, price

    found = descriptor_or_none(candidate.backend)
    if found is None or found.price_table is None:
        return None  # GCP candidates run in one region; their order is the spec's
    resources = spec.resources
    if candidate.gpu_type:
        resources = replace(resources, gpu_type=candidate.gpu_type)
    try:
        sku = instance_type_for(resources, found.instance_prefix)
    except ValidationError:
        return None
    # (the catalog prices SageMaker's managed spot at the on-demand rate it bills)
    purchase = "spot" if resources.spot else "on_demand"
    quote = price(found.price_table, candidate.region or settings.region, sku, purchase)
    return quote.usd_per_hour if isinstance(quote, Price) else None
