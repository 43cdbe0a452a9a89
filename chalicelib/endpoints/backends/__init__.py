"""Endpoint backends: where an endpoint's model server runs (local, SageMaker, SageMaker Serverless, Vertex).

ENDPOINT_REGISTRY names each backend's EndpointBackendDescriptor as "module:NAME". The facts the rest of
jobplane reads (spec validation, which deployment backend enables it, auto's order, event sources, IAM,
prices) come from the descriptor; the implementation it names is imported only when the backend is built.
Adding an endpoint backend is its module (descriptor and class) and one line here."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from chalicelib.backends import Cloud
from chalicelib.errors import ValidationError

ENDPOINT_REGISTRY: dict[str, str] = {
    "local": "chalicelib.endpoints.backends.local:LOCAL",
    "sagemaker": "chalicelib.endpoints.backends.sagemaker:SAGEMAKER",
    "sagemaker-serverless": "chalicelib.endpoints.backends.sagemaker:SAGEMAKER_SERVERLESS",
    "vertex": "chalicelib.endpoints.backends.vertex:VERTEX",
}
#: a spec's `backend` may also say this: the service chooses (EndpointService.plan)
AUTO = "auto"


@dataclass(frozen=True)
class EndpointBackendDescriptor:
    """Every fact about an endpoint backend that is read without building it."""

    name: str
    cloud: Cloud
    #: the deployment backend (JOBPLANE_BACKENDS) whose account, credentials and events it shares: it is
    #: enabled with that backend
    enabled_with: str
    #: "module:Class" of the EndpointBackend (whose `descriptor` is this one)
    implementation: str
    #: auto's order among the backends that can serve a model (lower first); a tie goes to the backend on
    #: the model's cloud
    rank: int
    #: the reason auto gives for choosing it
    role: str
    #: False when it serves CPU models only (auto never sends a GPU model there)
    gpus: bool = True
    #: the most memory it offers a model (GB), None when the machine decides
    max_memory_gb: float | None = None
    #: the model URI schemes it reads (the model on that cloud is a reason to prefer it)
    model_schemes: tuple[str, ...] = ()
    #: `source` values of the provider state events about its endpoints (EventBridge sources)
    event_sources: tuple[str, ...] = ()
    #: IAM actions the control plane needs for it (AWS: the checked-in policy grants exactly these)
    iam_actions: tuple[str, ...] = ()
    #: the provider resource kinds it makes (the policy limits its actions to those named jpe-*)
    resource_kinds: tuple[str, ...] = ()
    #: (role ARN, service) of service-linked roles its calls create on first use (iam:CreateServiceLinkedRole
    #: is granted on those only)
    service_linked_roles: tuple[tuple[str, str], ...] = ()
    #: CloudWatch alarms its calls make (target tracking): the alarm actions are granted on these only
    alarm_resources: tuple[str, ...] = ()
    #: why the price catalog has no hourly price for it (None: it prices by the catalog's `price_table`)
    unpriced_reason: str | None = None
    #: the price catalog provider whose hourly rates it bills at ("local": the JOBPLANE_LOCAL_PRICE_PER_HOUR
    #: setting); None with `unpriced_reason`
    price_table: str | None = None


def names() -> tuple[str, ...]:
    """The registered endpoint backend names, without importing any backend."""
    return tuple(ENDPOINT_REGISTRY)


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _unknown(name: str) -> ValidationError:
    return ValidationError(
        f"unknown endpoint backend {name!r}",
        [{"field": "backend", "message": f"one of {', '.join(ENDPOINT_REGISTRY)} or {AUTO}"}],
    )


def descriptor(name: str) -> EndpointBackendDescriptor:
    """The facts of endpoint backend `name` (its module is imported; its SDK is not)."""
    target = ENDPOINT_REGISTRY.get(name)
    if target is None:
        raise _unknown(name)
    found = _load(target)
    if not isinstance(found, EndpointBackendDescriptor) or found.name != name:
        raise TypeError(f"{target} declares no EndpointBackendDescriptor named {name!r}")
    return found


def descriptors() -> list[EndpointBackendDescriptor]:
    return [descriptor(n) for n in ENDPOINT_REGISTRY]


def backend_class(name: str) -> type:
    """The implementation of endpoint backend `name`."""
    found = descriptor(name)
    cls = _load(found.implementation)
    if getattr(cls, "descriptor", None) is not found:
        raise TypeError(f"{found.implementation} does not declare the descriptor {ENDPOINT_REGISTRY[name]}")
    return cls


def enabled(enabled_backends) -> list[EndpointBackendDescriptor]:
    """The endpoint backends a deployment with these JOBPLANE_BACKENDS enables, in registry order."""
    on = set(enabled_backends)
    return [d for d in descriptors() if d.enabled_with in on]


def for_source(source: str, enabled_backends) -> list[EndpointBackendDescriptor]:
    """The enabled endpoint backends that understand state events from `source`."""
    return [d for d in enabled(enabled_backends) if source in d.event_sources]
