"""The EndpointBackend interface, shared by the endpoint service and every endpoint backend.

The service turns its Endpoint record into a Deployment (everything a provider needs, nothing of the
store) and reads back EndpointObservation (the provider's view in jobplane's terms)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any


class EndpointStatus(str, Enum):
    CREATING = "CREATING"
    IN_SERVICE = "IN_SERVICE"
    UPDATING = "UPDATING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class EndpointResources:
    instance_type: str | None = None
    gpus: int = 0
    gpu_type: str | None = None
    memory_gb: float | None = None


@dataclass(frozen=True)
class Deployment:
    """One version of an endpoint as a backend deploys it.

    `model_uri`: the model's files (s3://, gs://, or file:// on the local stack); `code_uri`: the packed
    folder holding `handler` (None when the handler is among the model's files); `version`: increases with
    each PUT, so backends name per-version resources (model, endpoint config) deterministically."""

    endpoint_id: str
    name: str
    stage: str
    owner: str
    model_uri: str
    handler: str
    version: int = 1
    code_uri: str | None = None
    image: str | None = None
    resources: EndpointResources = field(default_factory=EndpointResources)
    min_replicas: int = 1
    max_replicas: int = 1
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    #: the training job's packed code (a `from_job` model): where the handler is looked for last, after the
    #: endpoint's own code_uri and the model's files
    fallback_code_uri: str | None = None

    @property
    def native_name(self) -> str:
        """Deterministic provider name: `jpe-<endpoint_id>` (the endpoint); versions add `-v<version>`."""
        return f"jpe-{self.endpoint_id}"


@dataclass(frozen=True)
class EndpointObservation:
    status: EndpointStatus
    native_status: str
    native_id: str | None = None
    url: str | None = None
    reason: str = ""
    at: datetime | None = None
    #: the provider's long-running operation still in flight (Vertex deploy/undeploy): the service keeps it on
    #: the record and hands it to the next describe, which reads how it ended
    operation: str | None = None


class EndpointBackend(ABC):
    """What the endpoint service calls. Every call returns at once: nothing waits for a provider."""

    name: str = ""
    #: the provider's invocation payload limit in bytes (SageMaker real-time 6 MB, serverless 4 MB,
    #: Vertex 1.5 MB); the API answers 413 above it
    max_payload_bytes: int = 6 * 1024 * 1024

    @abstractmethod
    def validate(self, deployment: Deployment) -> None:
        """Raise chalicelib.errors.ValidationError naming the field when this backend cannot serve it
        (e.g. a GPU on SageMaker Serverless)."""

    @abstractmethod
    def create(self, deployment: Deployment) -> str:
        """Start creating the endpoint; return its native id. Idempotent for the same deployment."""

    @abstractmethod
    def update(self, native_id: str, deployment: Deployment) -> None:
        """Roll out a new version without downtime where the provider allows."""

    @abstractmethod
    def describe(self, native_id: str, operation: str | None = None) -> EndpointObservation | None:
        """The endpoint's state now; None when the provider has no such endpoint. `operation` is the one the
        previous observation said was in flight (None for backends that start none)."""

    def describe_deleting(self, native_id: str) -> EndpointObservation | None:
        """A DELETING endpoint's state (reconcile's read until it is gone). Backends whose delete takes several
        steps over time (Vertex: undeploy, then delete) take the next one here instead of a rollout step."""
        return self.describe(native_id)

    @abstractmethod
    def delete(self, native_id: str) -> None:
        """Delete the endpoint and what it alone uses (config, model, deployed models). Harmless when gone."""

    @abstractmethod
    def invoke(self, native_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """One prediction: the handler's JSON out. chalicelib.errors.BackendError with a clear message when
        the model answered an error."""

    @abstractmethod
    def invocations_since(self, native_id: str, since: datetime) -> int:
        """How many invocations the provider counted since `since` (SageMaker: CloudWatch Invocations;
        Vertex: its prediction count metric; local: the server's counter). Reconcile's idle check."""

    def serving(self, native_id: str, deployment: Deployment) -> None:  # noqa: B027 - most attach nothing
        """Called each time the endpoint comes IN_SERVICE (after create and after an update's rollout), to attach
        what needs a live endpoint (SageMaker: its autoscaling between min_replicas and max_replicas). Most
        backends attach nothing: they size the deployment when they create it."""

    def parse_event(self, event: dict[str, Any]) -> tuple[str, EndpointObservation] | None:
        """(native_id, observation) from a provider state event about an endpoint; None if not ours."""
        return None
