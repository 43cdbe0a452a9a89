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
from chalicelib.pricing import Price, Quote, Unknown, money, rate

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
    allowed: list[tuple[str, Quote]] = []
    for name in order:
        why_not = _refusal(name, spec, limits, make, settings)
        if why_not is None and _price_capped(spec):
            cheapest, why_not = _cheapest(name, spec, settings, make)
        if why_not:
            skipped.append(f"{name}: {why_not}")
            continue
        if _price_capped(spec):
            allowed.append((name, cheapest))  # every backend is priced: the cheapest allowed one wins
            continue
        return name, _reason(name, spec, known[name], skipped)
    if allowed:
        name, quote = min(allowed, key=lambda a: a[1].usd_per_hour)  # min keeps the ranking among equals
        return name, _reason(name, spec, known[name], skipped, f"the cheapest allowed at {quote.format()}")
    raise ValidationError(
        "no enabled backend can run this job",
        [{"field": "backend", "message": "; ".join(dict.fromkeys(skipped)) or "no backend is enabled"}],
    )


def _reason(name: str, spec: JobSpec, found, skipped: list[str], priced: str = "") -> str:
    reason = f"auto: {name}, {found.role if found else name}, for {_describe(spec)}"
    if priced:
        reason += f", {priced}"
    if skipped:
        reason += "; skipped " + "; ".join(skipped)
    return reason


def _price_capped(spec: JobSpec) -> bool:
    """A spec that caps its price or its cost is placed by price: every candidate must have a known one."""
    return spec.max_price_per_hour is not None or spec.max_cost_usd is not None


def _cheapest(name: str, spec: JobSpec, settings: Settings, make) -> tuple[Price | None, str | None]:
    """(the backend's cheapest allowed candidate price, None) or (None, why none is allowed)."""
    refused: list[str] = []
    options = _options(name, spec, refused)
    quotes = [_quote(c, spec, settings, make) for c in options]
    allowed = [q for q in quotes if _allowed(q, spec) is None]
    if not allowed:
        return None, "; ".join(refused + [_allowed(q, spec) for q in quotes]) or "no candidate"
    return min(allowed, key=lambda q: q.usd_per_hour), None


def _allowed(quote: Quote, spec: JobSpec) -> str | None:
    """Why a price-capped spec may not run at this price, or None."""
    if not isinstance(quote, Price):
        return f"no known price ({quote.reason})"
    cap = spec.max_price_per_hour
    if cap is not None and quote.usd_per_hour > cap:
        return f"{quote.format()} is over max_price_per_hour {rate(cap)}/h"
    return None


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
    # gpu_types are the alternatives to resources.gpu_type, which is always one of them (see _options)
    found: list[Candidate] = []
    refused: list[str] = []
    priced: dict[Candidate, Quote] = {}
    for backend in dict.fromkeys((first, *spec.fallback)):
        options = _options(backend, spec, refused)
        order = {c: i for i, c in enumerate(options)}
        priced.update({c: _quote(c, spec, settings, make) for c in options})
        options.sort(key=lambda c: (priced[c].usd_per_hour is None, priced[c].usd_per_hour or 0.0, order[c]))
        found.extend(options)
    if not found:
        raise ValidationError(
            "no candidate can run this job in the regions it names",
            [{"field": "regions", "message": "; ".join(refused)}],
        )
    if _price_capped(spec):
        found = _within_caps(found, priced, spec)
    return tuple(dict.fromkeys(c.text for c in found))


def _within_caps(found: list[Candidate], priced: dict[Candidate, Quote], spec: JobSpec) -> list[Candidate]:
    """A price-capped spec's candidates: those priced at or under max_price_per_hour, cheapest first across
    backends (ties in the spec's order); refused (400 naming the cap and the figures) when none is, or when
    the cheapest costs more than max_cost_usd at max_runtime_minutes."""
    refusals = {c: _allowed(priced[c], spec) for c in found}
    allowed = sorted((c for c in found if refusals[c] is None), key=lambda c: priced[c].usd_per_hour)
    field = "max_price_per_hour" if spec.max_price_per_hour is not None else "max_cost_usd"
    if not allowed:
        why = "; ".join(f"{c.text}: {refusals[c]}" for c in found)
        raise ValidationError(
            f"no candidate has a known price{' within ' + field if field == 'max_price_per_hour' else ''}: {why}",
            [{"field": field, "message": why}],
        )
    cap = spec.max_cost_usd
    cheapest = allowed[0]
    quote = priced[cheapest]
    worst = quote.cost(spec.max_runtime_minutes / 60.0)
    if cap is not None and worst.usd > cap:
        why = (
            f"the cheapest candidate, {cheapest.text} at {quote.format()}, costs {money(worst.usd)} over "
            f"max_runtime_minutes {spec.max_runtime_minutes}, more than max_cost_usd {money(cap)}"
        )
        longest = int(cap / quote.usd_per_hour * 60) if quote.usd_per_hour else None
        hint = (
            f"raise max_cost_usd or set max_runtime_minutes to at most {longest}" if longest else "raise max_cost_usd"
        )
        raise ValidationError(why, [{"field": "max_cost_usd", "message": f"{why}; {hint}"}])
    return allowed


def _options(backend: str, spec: JobSpec, refused: list[str]) -> list[Candidate]:
    """The backend's candidates: each region it can run in times each GPU type, in the spec's order."""
    gpu_types: tuple[str | None, ...] = (
        tuple(dict.fromkeys((spec.resources.gpu_type, *spec.gpu_types))) if spec.gpu_types else (None,)
    )
    return [Candidate(backend, r, g) for r in _regions(backend, spec, refused) for g in gpu_types]


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


def _quote(
    candidate: Candidate, spec: JobSpec, settings: Settings, make: Callable[[str], ComputeBackend] | None = None
) -> Quote:
    """The candidate's price per hour, as its backend prices an attempt there (Backend.hourly_quote)."""
    make = make or (lambda name: backend_class(name)(settings))
    if candidate.gpu_type:
        spec = spec.with_changes(resources=replace(spec.resources, gpu_type=candidate.gpu_type))
    try:
        return make(candidate.backend).node_quote(spec, candidate.region)[1]
    except ValidationError as exc:
        return Unknown(exc.message)


def _price(candidate: Candidate, spec: JobSpec, settings: Settings, make=None) -> float | None:
    """USD per hour of the candidate from the price catalog, or None when the catalog has no price."""
    return _quote(candidate, spec, settings, make).usd_per_hour
