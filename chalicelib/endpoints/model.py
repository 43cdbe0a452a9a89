"""The Endpoint record, its events and transitions, and its history entries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from chalicelib.endpoints.backends.base import EndpointStatus
from chalicelib.jobs.model import EventSource, iso, utcnow

__all__ = ["EndpointStatus", "Endpoint", "EndpointEvent", "EndpointTransition", "EndpointHistoryEntry"]

#: an endpoint in one of these may still be billed: reconcile reads its provider
ACTIVE = frozenset(
    {EndpointStatus.CREATING, EndpointStatus.IN_SERVICE, EndpointStatus.UPDATING, EndpointStatus.DELETING}
)
TERMINAL = frozenset({EndpointStatus.DELETED})


def new_endpoint_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    name: str
    owner: str
    status: EndpointStatus
    backend: str
    spec: dict[str, Any]  # the validated EndpointSpec (JSON form), with PUT's changes applied
    created_at: datetime
    model_uri: str
    handler: str
    code_uri: str | None = None
    version: int = 1
    native_id: str | None = None
    url: str | None = None
    updated_at: datetime | None = None
    in_service_at: datetime | None = None
    deleted_at: datetime | None = None
    last_invoked_at: datetime | None = None
    invocations: int = 0
    cost_per_hour_usd: float | None = None
    #: why there is no hourly price (the catalog has no rate for this backend), shown instead of $0
    cost_unknown_reason: str | None = None
    #: the provider's long-running operation in flight (Vertex deploy/undeploy), read by the next describe
    operation: str | None = None
    #: why the backend's IN_SERVICE step (SageMaker autoscaling) failed last; reconcile tries it again
    serving_error: str | None = None
    failure_reason: str | None = None
    plan_reason: str | None = None
    deleted_by: str | None = None
    deleted_reason: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def idle_minutes(self) -> int:
        return int(self.spec.get("idle_minutes", 60))

    def with_changes(self, **changes: Any) -> Endpoint:
        return replace(self, **changes)

    def cost_estimate_usd(self, now: datetime | None = None) -> float | None:
        """Cost so far: the hourly price times the hours since creation (until deletion); None without a price."""
        if self.cost_per_hour_usd is None:
            return None
        end = self.deleted_at or now or utcnow()
        hours = max(0.0, (end - self.created_at).total_seconds() / 3600)
        return round(self.cost_per_hour_usd * hours, 4)

    def to_api(self, now: datetime | None = None) -> dict[str, Any]:
        resources = self.spec.get("resources") or {}
        return {
            "endpoint_id": self.endpoint_id,
            "name": self.name,
            "owner": self.owner,
            "status": self.status.value,
            "backend": self.backend,
            "native_id": self.native_id,
            "model_uri": self.model_uri,
            "handler": self.handler,
            "code_uri": self.code_uri,
            "version": self.version,
            "url": self.url,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "in_service_at": iso(self.in_service_at),
            "deleted_at": iso(self.deleted_at),
            "last_invoked_at": iso(self.last_invoked_at),
            "invocations": self.invocations,
            "idle_minutes": self.idle_minutes,
            "resources": resources,
            "min_replicas": self.spec.get("min_replicas", 1),
            "max_replicas": self.spec.get("max_replicas", 1),
            "labels": self.spec.get("labels") or {},
            "cost_per_hour_usd": self.cost_per_hour_usd,
            "cost_estimate_usd": self.cost_estimate_usd(now),
            "cost_unknown_reason": self.cost_unknown_reason,
            "failure_reason": self.failure_reason,
            "serving_error": self.serving_error,
            "plan_reason": self.plan_reason,
            "deleted_by": self.deleted_by,
            "deleted_reason": self.deleted_reason,
        }


@dataclass(frozen=True)
class EndpointEvent:
    """Anything that may move an endpoint: a provider observation, an API request, reconcile."""

    endpoint_id: str
    status: EndpointStatus
    source: EventSource
    at: datetime
    reason: str = ""
    native_status: str | None = None
    native_id: str | None = None
    url: str | None = None
    #: for UPDATING -> IN_SERVICE: the version the provider now serves (None: whatever it is)
    version: int | None = None


@dataclass(frozen=True)
class EndpointTransition:
    endpoint_id: str
    from_status: EndpointStatus
    to_status: EndpointStatus
    reason: str
    source: EventSource
    at: datetime
    native_status: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointHistoryEntry:
    endpoint_id: str
    at: datetime
    from_status: EndpointStatus | None
    to_status: EndpointStatus
    reason: str
    source: EventSource
    native_status: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "from": self.from_status.value if self.from_status else None,
            "to": self.to_status.value,
            "reason": self.reason,
            "source": self.source.value,
            "native_status": self.native_status,
        }


def apply_transition(endpoint: Endpoint, transition: EndpointTransition) -> Endpoint:
    return endpoint.with_changes(status=transition.to_status, updated_at=transition.at, **transition.changes)


def entry_for(transition: EndpointTransition) -> EndpointHistoryEntry:
    return EndpointHistoryEntry(
        transition.endpoint_id,
        transition.at,
        transition.from_status,
        transition.to_status,
        transition.reason,
        transition.source,
        transition.native_status,
    )
