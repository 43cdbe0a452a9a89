"""The typed JobSpec past the API edge: frozen dataclasses (no pydantic), each default stated once here."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def _frozen(mapping: Mapping[str, str] | None = None) -> Mapping[str, str]:
    # A read-only view: a frozen dataclass with a plain dict inside could still be changed in place.
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, kw_only=True)
class Resources:
    gpus: int = 0
    gpu_type: str | None = None
    # Whole numbers on purpose: an omitted cpus/memory_gb has always been stored and served as 1 and 2.
    cpus: float = 1
    memory_gb: float = 2
    spot: bool = False
    instance_type: str | None = None
    tpu: str | None = None
    cluster: str | None = None
    # Machines the job runs on together (multi-node training); each gets the same rendezvous variables.
    nodes: int = 1


@dataclass(frozen=True, kw_only=True)
class Retries:
    max_attempts: int = 1
    on: tuple[str, ...] = ("interruption",)
    fatal_exit_codes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "on", tuple(self.on))
        object.__setattr__(self, "fatal_exit_codes", tuple(self.fatal_exit_codes))


@dataclass(frozen=True, kw_only=True)
class Notify:
    slack_channel: str | None = None


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One training job as validated at the edge; the store writes it with to_dict() and reads it with from_dict()."""

    name: str
    image: str | None = None
    # An argument list run without a shell; a string command arrives here as ("/bin/sh", "-c", <string>).
    command: tuple[str, ...]
    # Run before command in the same folder: each an argument list (a string setup is one /bin/sh -c list).
    setup: tuple[tuple[str, ...], ...] = ()
    # The job's code: the CLI packs `workdir`, uploads it content-addressed and sends where it landed.
    code_uri: str | None = None
    code_sha256: str | None = None
    env: Mapping[str, str] = field(default_factory=_frozen)
    resources: Resources = Resources()
    backend: str = "auto"
    max_runtime_minutes: int = 1440
    # name -> URI; a list in a spec (or an older stored record) is named "0", "1", ... in order.
    inputs: Mapping[str, str] = field(default_factory=_frozen)
    outputs: str | None = None
    checkpoint_uri: str | None = None
    retries: Retries = Retries()
    notify: Notify = Notify()
    labels: Mapping[str, str] = field(default_factory=_frozen)
    priority: int = 0
    fallback: tuple[str, ...] = ()
    capacity_wait_minutes: int = 0
    # Failover candidates beyond backends: regions and GPU types to try, in the spec's order (then price).
    regions: tuple[str, ...] = ()
    gpu_types: tuple[str, ...] = ()
    # Metric names declared up front, for providers that must know them at launch (SageMaker's console);
    # every backend reads whatever keys the job's JOBPLANE_METRICS lines carry, declared or not.
    metrics: tuple[str, ...] = ()
    # Cost caps (USD): the job is stopped when its cost reaches max_cost_usd (failure_kind budget), and runs
    # only on candidates whose catalog price per hour is at most max_price_per_hour.
    max_cost_usd: float | None = None
    max_price_per_hour: float | None = None

    def __post_init__(self) -> None:
        # Callers hand in lists and dicts (JSON, pydantic); the spec keeps only immutable forms.
        for name in ("command", "fallback", "metrics", "regions", "gpu_types"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "setup", tuple(tuple(step) for step in self.setup))
        if not isinstance(self.inputs, Mapping):
            object.__setattr__(self, "inputs", {str(i): uri for i, uri in enumerate(self.inputs)})
        for name in ("env", "labels", "inputs"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of this spec: every field, in declaration order, None included."""
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """A spec from to_dict()'s document; missing fields take their defaults, unknown ones are refused."""
        values = _known(cls, data, "spec")
        for name, part in (("resources", Resources), ("retries", Retries), ("notify", Notify)):
            if name in values and not isinstance(values[name], part):
                values[name] = part(**_known(part, values[name], f"spec.{name}"))
        return cls(**values)

    def with_changes(self, **changes: Any) -> JobSpec:
        return dataclasses.replace(self, **changes)


def _known(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where} has unknown field {unknown[0]!r}; known: {', '.join(fields)}")
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{where} lacks the required field {missing[0]!r}")
    return dict(data)


def _to_dict(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _to_dict(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_to_dict(v) for v in value]
    return value


def default(cls: type, name: str) -> Any:
    """The default of `cls.name` as declared above (the pydantic edge model takes its defaults from here)."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    if found.default is not dataclasses.MISSING:
        return found.default
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")
