"""Backend registry: each backend module is imported only when a job needs it."""

from __future__ import annotations

import importlib
import threading

from chalicelib.backends.base import ComputeBackend
from chalicelib.config import Settings
from chalicelib.errors import ValidationError

# registry key -> "module:Class"; importing is deferred so a cold start pays only for what it uses
REGISTRY: dict[str, str] = {
    "local": "chalicelib.backends.local.backend:LocalBackend",
    "sagemaker": "chalicelib.backends.aws.sagemaker:SageMakerBackend",
    "aws-batch": "chalicelib.backends.aws.batch:BatchBackend",
    "ecs": "chalicelib.backends.aws.ecs:EcsBackend",
    "ec2": "chalicelib.backends.aws.ec2:Ec2Backend",
    "vertex": "chalicelib.backends.gcp.vertex:VertexBackend",
    "gce": "chalicelib.backends.gcp.gce:GceBackend",
}

_lock = threading.Lock()
_cache: dict[tuple[str, int], ComputeBackend] = {}


def backend_class(name: str) -> type[ComputeBackend]:
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ValidationError(
            f"backend {name!r} is not available in this build",
            [{"field": "backend", "message": f"available: {', '.join(sorted(REGISTRY))}"}],
        ) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


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
        if name in REGISTRY and source in backend_class(name).event_sources:
            found.append(get_backend(name, settings))
    return found
