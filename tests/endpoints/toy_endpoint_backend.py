"""An endpoint backend added the way the registry says: this one module (descriptor and class) and one
ENDPOINT_REGISTRY line, which the test puts in with monkeypatch. It serves in memory: predict doubles `x`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chalicelib.backends import Cloud
from chalicelib.endpoints.backends import EndpointBackendDescriptor
from chalicelib.endpoints.backends.base import Deployment, EndpointBackend, EndpointObservation, EndpointStatus

TOY = EndpointBackendDescriptor(
    name="toy",
    cloud=Cloud.LOCAL,
    enabled_with="local",
    implementation="tests.endpoints.toy_endpoint_backend:ToyEndpointBackend",
    rank=1,
    role="the toy serves first",
    gpus=False,
    unpriced_reason="toys are priceless",
)


class ToyEndpointBackend(EndpointBackend):
    name = "toy"
    descriptor = TOY
    max_payload_bytes = 64

    def __init__(self, settings) -> None:
        self.settings = settings
        self.live: dict[str, int] = {}

    def validate(self, deployment: Deployment) -> None:
        return None

    def create(self, deployment: Deployment) -> str:
        self.live.setdefault(deployment.native_name, 0)
        return deployment.native_name

    def update(self, native_id: str, deployment: Deployment) -> None:
        self.live[native_id] = 0

    def describe(self, native_id: str, operation: str | None = None) -> EndpointObservation | None:
        if native_id not in self.live:
            return None
        return EndpointObservation(EndpointStatus.IN_SERVICE, "Ready", native_id, url=f"toy://{native_id}")

    def delete(self, native_id: str) -> None:
        self.live.pop(native_id, None)

    def invoke(self, native_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.live[native_id] += 1
        return {"y": body["x"] * 2}

    def invocations_since(self, native_id: str, since: datetime) -> int:
        return self.live.get(native_id, 0)
