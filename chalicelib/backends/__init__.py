"""Backend registry and descriptors: a backend's facts are read without importing its implementation."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from chalicelib.errors import ValidationError

# Settings, Job and ComputeBackend are typed Any here: config reads this module to validate backend
# names, and importing them, even for type checking, would close an import cycle through config.
Settings = Job = ComputeBackend = Any

# The one place that names every backend: registry key -> "module:NAME" of its BackendDescriptor, in a
# light module per cloud (or "module:Class" of a ComputeBackend that carries its own, as test doubles do).
# Facts (settings, spec validation, the planner, event routing) come from the descriptor; the
# implementation, named by the descriptor, is imported only when a backend is built, so a cold start pays
# only for the backends it touches. Add a backend with one line here (or register()).
REGISTRY: dict[str, str] = {
    "local": "chalicelib.backends.local.descriptors:LOCAL",
    "sagemaker": "chalicelib.backends.aws.descriptors:SAGEMAKER",
    "aws-batch": "chalicelib.backends.aws.descriptors:BATCH",
    "ecs": "chalicelib.backends.aws.descriptors:ECS",
    "ec2": "chalicelib.backends.aws.descriptors:EC2",
    "vertex": "chalicelib.backends.gcp.descriptors:VERTEX",
    "gce": "chalicelib.backends.gcp.descriptors:GCE",
    "kubernetes": "chalicelib.backends.kubernetes.descriptors:KUBERNETES",
}
# What a deployment enables when JOBPLANE_BACKENDS is unset: the one backend that needs no cloud.
DEFAULT_BACKENDS = ("local",)
# A spec's `backend` may also say this: the planner chooses.
AUTO = "auto"


class Cloud(str, Enum):
    """Whose API a backend calls, which decides the policy it lands in and the events it hears."""

    AWS = "aws"
    GCP = "gcp"
    #: this machine (the local stack): no cloud account, no IAM
    LOCAL = "local"
    #: a Kubernetes API server (EKS, GKE or a kubeconfig's): its own RBAC, no cloud event stream
    KUBERNETES = "kubernetes"


@dataclass(frozen=True)
class ConsoleContext:
    """What a console URL builder may need besides the job: the deployment's region, project and zone."""

    region: str
    gcp_project: str | None = None
    gce_zone: str | None = None


@dataclass(frozen=True)
class Requirement:
    """A Settings field an enabled backend cannot run without (`prefix`: the value must start with it)."""

    field: str
    prefix: str = ""


@dataclass(frozen=True)
class BackendDescriptor:
    """Every fact about a backend that the rest of jobplane reads, declared once, apart from its code."""

    name: str
    cloud: Cloud
    display_name: str
    #: the planner's order among enabled backends (lower first) and the reason text it prints
    rank: int
    role: str
    #: False when it can run a bare command with no container image (VMs and local processes)
    needs_image: bool = True
    #: longest run (minutes) the service allows; jobs longer than this never go there
    time_limit_minutes: int | None = None
    #: `source` values of the state events it understands (EventBridge sources, GCP service names)
    event_sources: tuple[str, ...] = ()
    #: Cloud Logging resource types whose entries are about its resources (GCP event routing)
    log_resource_types: tuple[str, ...] = ()
    #: IAM actions the control plane needs for it (AWS: the checked-in policy grants exactly these)
    iam_actions: tuple[str, ...] = ()
    #: (job, context) -> the job's page in the provider's console, or None
    console_url: Callable[[Job, ConsoleContext], str | None] | None = None
    #: feature -> why it cannot offer it (checked before every launch); "multi_node" says why max_nodes is 1
    unsupported_features: Mapping[str, str] = field(default_factory=dict)
    #: the most nodes (machines) one job may ask for in resources.nodes; 1: single-machine jobs only
    max_nodes: int = 1
    #: True when it lists and stops tagged resources (ad-hoc VMs must)
    reaps: bool = False
    #: True for ad-hoc VMs whose own startup script stops them (Slack says "auto-stopped")
    vm: bool = False
    #: "module:Class" of the dev VM provider it hosts, if any
    devvm_provider: str | None = None
    requires: tuple[Requirement, ...] = ()
    #: the price catalog table its instances bill at, and the prefix of its instance type names there (the
    #: planner orders a backend's regions and GPU types by it); None: not priced by instance type
    price_table: str | None = None
    instance_prefix: str = ""
    #: the account quota a launch draws on, which jobs/capacity.quota_needs reads in the provider's unit:
    #: "training-instances" (SageMaker's per-type Service Quotas), "vcpus" (EC2's per family group),
    #: "regional-gpus" (Compute Engine's per region); None: none is read
    quota: str | None = None
    #: "module:Class" of the ComputeBackend (whose `descriptor` is this one); None when the class itself
    #: is registered
    implementation: str | None = None


_lock = threading.Lock()
_cache: dict[tuple[str, int], ComputeBackend] = {}


def register(name: str, target: str) -> None:
    """Add a backend at run time: `target` is "module:NAME" of its BackendDescriptor, or "module:Class" of
    a ComputeBackend with a descriptor.

    Names are accepted by spec validation, settings and the planner from the next call on."""
    if name == AUTO or not name:
        raise ValueError(f"{name!r} cannot name a backend")
    if REGISTRY.get(name, target) != target:
        raise ValueError(f"backend {name!r} is already registered as {REGISTRY[name]}")
    REGISTRY[name] = target


def unregister(name: str) -> None:
    """Remove a backend added by register() (and the instances built for it)."""
    REGISTRY.pop(name, None)
    with _lock:
        for key in [k for k in _cache if k[0] == name]:
            del _cache[key]


def names() -> tuple[str, ...]:
    """The registered backend names, without importing any backend."""
    return tuple(REGISTRY)


def _unknown(name: str) -> ValidationError:
    return ValidationError(
        f"backend {name!r} is not available in this build",
        [{"field": "backend", "message": f"available: {', '.join(sorted(REGISTRY))}"}],
    )


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _registered(name: str) -> Any:
    """What REGISTRY names for `name`: a BackendDescriptor, or a ComputeBackend class."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise _unknown(name) from None
    return _load(target)


def backend_class(name: str) -> type[ComputeBackend]:
    """The implementation of backend `name`: the one call that imports its module (and its SDK's types)."""
    found = _registered(name)
    if not isinstance(found, BackendDescriptor):
        return found
    if found.implementation is None:
        raise TypeError(f"{REGISTRY[name]} names no implementation for backend {name!r}")
    cls = _load(found.implementation)
    if getattr(cls, "descriptor", None) is not found:
        raise TypeError(f"{found.implementation} does not declare the descriptor {REGISTRY[name]}")
    return cls


def descriptor(name: str) -> BackendDescriptor:
    """The facts of backend `name`, without importing its implementation (for a registered class: its own)."""
    found = _registered(name)
    if not isinstance(found, BackendDescriptor):
        found = getattr(found, "descriptor", None)
    if not isinstance(found, BackendDescriptor) or found.name != name:
        raise TypeError(f"{REGISTRY[name]} declares no BackendDescriptor named {name!r}")
    return found


def descriptor_or_none(name: str | None) -> BackendDescriptor | None:
    """As descriptor(), or None for a name no longer (or never) registered, e.g. on an old job record."""
    return descriptor(name) if name in REGISTRY else None


def descriptors(cloud: Cloud | None = None) -> list[BackendDescriptor]:
    """Every registered backend's descriptor (of one cloud), in registry order."""
    found = [descriptor(n) for n in REGISTRY]
    return [d for d in found if cloud is None or d.cloud is cloud]


def get_backend(name: str, settings: Settings) -> ComputeBackend:
    key = (name, id(settings))
    with _lock:
        if key not in _cache:
            _cache[key] = backend_class(name)(settings)
        return _cache[key]


def backends_for_source(source: str, settings: Settings) -> list[ComputeBackend]:
    """The enabled backends that understand state events from `source`."""
    found = []
    for name in settings.enabled_backends:
        if name in REGISTRY and source in descriptor(name).event_sources:
            found.append(get_backend(name, settings))
    return found


def event_sources(*clouds: Cloud) -> list[str]:
    """Every state-event source the registered backends of these clouds understand (cloud, then registry order)."""
    found: list[str] = []
    for cloud in clouds:
        for d in descriptors(cloud):
            found += [s for s in d.event_sources if s not in found]
    return found
