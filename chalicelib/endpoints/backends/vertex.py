"""Vertex AI endpoints: the user's serving image uploaded as a Model, deployed to an Endpoint on dedicated nodes."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

from chalicelib.backends import Cloud
from chalicelib.endpoints.backends import EndpointBackendDescriptor
from chalicelib.endpoints.backends.base import Deployment, EndpointBackend, EndpointObservation, EndpointStatus
from chalicelib.errors import BackendError, ValidationError

# The custom-container contract: Vertex sets AIP_HTTP_PORT, AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE from the
# ModelContainerSpec, and AIP_STORAGE_URI to a copy of the model's artifact_uri; chalicelib/endpoints/
# vertex_serve.py honours them.
PORT = 8080
HEALTH_ROUTE = "/health"
PREDICT_ROUTE = "/predict"
SERVE_COMMAND = ["python", "-m", "jobplane_serve"]
MONITORING = "https://monitoring.googleapis.com"
PREDICTION_COUNT = "aiplatform.googleapis.com/prediction/online/prediction_count"
LABEL_ENDPOINT_ID = "jobplane-endpoint-id"

VERTEX = EndpointBackendDescriptor(
    name="vertex",
    cloud=Cloud.GCP,
    enabled_with="vertex",
    implementation="chalicelib.endpoints.backends.vertex:VertexEndpointBackend",
    rank=20,
    role="a real-time endpoint",
    model_schemes=("gs://",),
    unpriced_reason="the price catalog has no Vertex AI prediction rates (no authoritative table was found)",
)


def model_id(deployment: Deployment) -> str:
    """Vertex's Model id for one version (up to 63 of [a-z0-9_-], starting with a letter)."""
    return f"{deployment.native_name}-v{deployment.version}"


def _refused_for_now(exc: Exception) -> bool:
    """Vertex's FAILED_PRECONDITION (an operation on the resource still runs), which its REST API sends as
    HTTP 400 and the client raises as BadRequest; or a conflict with what exists."""
    from google.api_core import exceptions

    if isinstance(exc, exceptions.FailedPrecondition | exceptions.Conflict):
        return True
    response = getattr(exc, "response", None)
    if isinstance(exc, exceptions.BadRequest) and response is not None:
        try:
            return response.json()["error"].get("status") == "FAILED_PRECONDITION"
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
    return False


def _verb(operation) -> str:
    """DeployModel / UndeployModel, from the Operation's metadata type (…aiplatform.v1.DeployModelOperationMetadata)."""
    kind = operation.metadata.type_url.rpartition(".")[2].removesuffix("OperationMetadata")
    return kind or "operation"


def _failure(operation) -> str | None:
    """The reason a finished google.longrunning Operation failed (its google.rpc.Status), or None."""
    if not operation.HasField("error") or not operation.error.code:
        return None
    return f"Vertex {_verb(operation)} failed: {operation.error.message} (code {operation.error.code})"


def _version(model: str) -> int:
    tail = model.rpartition("-v")[2]
    return int(tail) if tail.isdigit() else 0


class VertexEndpointBackend(EndpointBackend):
    """create() and update() start long-running operations and return; describe() takes the next step
    (deploy the newest uploaded version, then undeploy older ones) when the previous one is done, so the
    service's reconcile drives a rollout to its end and the endpoint serves throughout."""

    name = "vertex"
    descriptor = VERTEX
    max_payload_bytes = 1536 * 1024  # online prediction requests are limited to 1.5 MB

    def __init__(self, settings) -> None:
        self.settings = settings
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def parent(self) -> str:
        return f"projects/{self.settings.gcp_project}/locations/{self.settings.gcp_region}"

    def client(self, kind: str):
        """The aiplatform_v1 client of one service ("model", "endpoint", "prediction"), over REST."""
        with self._lock:
            if kind not in self._clients:
                from google.cloud import aiplatform_v1

                from chalicelib.backends.gcp.base import client_kwargs

                cls = {
                    "model": aiplatform_v1.ModelServiceClient,
                    "endpoint": aiplatform_v1.EndpointServiceClient,
                    "prediction": aiplatform_v1.PredictionServiceClient,
                }[kind]
                host = f"{self.settings.gcp_region}-aiplatform.googleapis.com"
                self._clients[kind] = cls(**client_kwargs(self.settings, host))
            return self._clients[kind]

    def _call(self, kind: str, method: str, **kwargs: Any) -> Any:
        from chalicelib.backends.gcp.errors import map_gcp_errors

        with map_gcp_errors(f"vertex {method}"):
            return getattr(self.client(kind), method)(**kwargs)

    def _get(self, kind: str, method: str, name: str) -> Any | None:
        from google.api_core import exceptions

        try:
            return getattr(self.client(kind), method)(name=name)
        except exceptions.NotFound:
            return None
        except exceptions.GoogleAPICallError as exc:
            raise self._translated(exc) from exc

    @staticmethod
    def _translated(exc: Exception) -> BackendError:
        from chalicelib.backends.gcp.errors import translate

        return translate(exc, "vertex")

    def set_client(self, kind: str, client: Any) -> None:
        with self._lock:
            self._clients[kind] = client

    # --- requests (pure) -----------------------------------------------------------------------------
    def validate(self, deployment: Deployment) -> None:
        if not self.settings.gcp_project:
            raise ValidationError(
                "vertex endpoints need a Google Cloud project",
                [{"field": "backend", "message": "set JOBPLANE_GCP_PROJECT"}],
            )
        if not deployment.image:
            raise ValidationError(
                "Vertex serves a container image of yours",
                [{"field": "image", "message": "an image running chalicelib/endpoints/vertex_serve.py"}],
            )
        if not deployment.model_uri.startswith("gs://"):
            raise ValidationError(
                "Vertex reads the model from Cloud Storage", [{"field": "model.uri", "message": "a gs:// URI"}]
            )
        if deployment.code_uri and not deployment.code_uri.startswith("gs://"):
            raise ValidationError(
                "Vertex's serving container reads the workdir from Cloud Storage",
                [{"field": "workdir", "message": "packed to a gs:// URI"}],
            )
        if not 1 <= deployment.min_replicas <= deployment.max_replicas:
            raise ValidationError(
                "Vertex dedicated resources run 1 <= min_replicas <= max_replicas nodes",
                [{"field": "min_replicas", "message": f"1 to max_replicas ({deployment.max_replicas})"}],
            )
        self.machine(deployment)

    def machine(self, deployment: Deployment):
        from google.cloud import aiplatform_v1

        from chalicelib.backends.gcp.base import GPU_OFFERS, n1_machine

        r = deployment.resources
        spec = aiplatform_v1.MachineSpec()
        if r.gpus:
            offer = GPU_OFFERS.get(r.gpu_type or "T4")
            if offer is None or r.gpus not in offer.counts:
                raise ValidationError(
                    f"Vertex has no {r.gpus} x {r.gpu_type} node",
                    [{"field": "resources.gpu_type", "message": f"on Vertex: {', '.join(GPU_OFFERS)}"}],
                )
            spec.accelerator_type = aiplatform_v1.AcceleratorType[offer.vertex_accelerator]
            spec.accelerator_count = r.gpus
            spec.machine_type = r.instance_type or (
                offer.machines[r.gpus] if offer.machines else n1_machine(4, r.memory_gb or 15, minimum=4)
            )
        else:
            spec.machine_type = r.instance_type or n1_machine(2, r.memory_gb or 7.5, minimum=2)
        return spec

    def labels(self, deployment: Deployment) -> dict[str, str]:
        from chalicelib.backends.gcp.base import LABEL_MANAGED, LABEL_STAGE, label_key, label_value

        labels = {label_key(k): label_value(v) for k, v in deployment.labels.items()}
        labels.update(
            {
                LABEL_MANAGED: "true",
                LABEL_STAGE: label_value(self.settings.stage),
                LABEL_ENDPOINT_ID: deployment.endpoint_id,
            }
        )
        return labels

    def size_labels(self, deployment: Deployment) -> dict[str, str]:
        """What DeployModel needs, kept on the Model: describe() (any container, any time later) deploys it."""
        machine = self.machine(deployment)
        labels = {
            "jobplane-machine": machine.machine_type,
            "jobplane-min-replicas": str(deployment.min_replicas),
            "jobplane-max-replicas": str(deployment.max_replicas),
        }
        if machine.accelerator_count:
            labels["jobplane-accelerator"] = machine.accelerator_type.name.lower()
            labels["jobplane-accelerators"] = str(machine.accelerator_count)
        return labels

    def upload_request(self, deployment: Deployment):
        from google.cloud import aiplatform_v1

        env = {
            **deployment.env,
            "JOBPLANE_HANDLER": deployment.handler,
            **({"JOBPLANE_CODE_URI": deployment.code_uri} if deployment.code_uri else {}),
        }
        return aiplatform_v1.UploadModelRequest(
            parent=self.parent,
            model_id=model_id(deployment),
            model=aiplatform_v1.Model(
                display_name=model_id(deployment),
                artifact_uri=deployment.model_uri,
                labels={**self.labels(deployment), **self.size_labels(deployment)},
                container_spec=aiplatform_v1.ModelContainerSpec(
                    image_uri=deployment.image,
                    env=[aiplatform_v1.EnvVar(name=k, value=v) for k, v in sorted(env.items())],
                    ports=[aiplatform_v1.Port(container_port=PORT)],
                    predict_route=PREDICT_ROUTE,
                    health_route=HEALTH_ROUTE,
                ),
            ),
        )

    def endpoint_request(self, deployment: Deployment):
        from google.cloud import aiplatform_v1

        return aiplatform_v1.CreateEndpointRequest(
            parent=self.parent,
            endpoint_id=deployment.native_name,
            endpoint=aiplatform_v1.Endpoint(display_name=deployment.native_name, labels=self.labels(deployment)),
        )

    def deploy_request(self, native_id: str, model):
        """DeployModel of one uploaded version (sized by its labels) with all traffic ("0": the model deployed)."""
        from google.cloud import aiplatform_v1

        labels = dict(model.labels)
        machine = aiplatform_v1.MachineSpec(machine_type=labels.get("jobplane-machine", "n1-standard-2"))
        if labels.get("jobplane-accelerator"):
            machine.accelerator_type = aiplatform_v1.AcceleratorType[labels["jobplane-accelerator"].upper()]
            machine.accelerator_count = int(labels.get("jobplane-accelerators", "1"))
        return aiplatform_v1.DeployModelRequest(
            endpoint=native_id,
            deployed_model=aiplatform_v1.DeployedModel(
                # Ours, so a second deploy of a version still deploying is refused rather than doubled.
                id=str(_version(model.name)),
                model=model.name,
                display_name=model.name.rpartition("/")[2],
                dedicated_resources=aiplatform_v1.DedicatedResources(
                    machine_spec=machine,
                    min_replica_count=int(labels.get("jobplane-min-replicas", "1")),
                    max_replica_count=int(labels.get("jobplane-max-replicas", "1")),
                ),
            ),
            traffic_split={"0": 100},
        )

    # --- calls ------------------------------------------------------------------------------------------
    def native_id(self, deployment: Deployment) -> str:
        return f"{self.parent}/endpoints/{deployment.native_name}"

    def _upload(self, deployment: Deployment) -> None:
        from google.api_core import exceptions

        try:
            self.client("model").upload_model(request=self.upload_request(deployment))
        except exceptions.Conflict:  # HTTP 409 ALREADY_EXISTS
            pass  # a retried create or update: this version is uploaded
        except exceptions.GoogleAPICallError as exc:
            raise self._translated(exc) from exc

    def create(self, deployment: Deployment) -> str:
        from google.api_core import exceptions

        self.validate(deployment)
        self._upload(deployment)
        try:
            self.client("endpoint").create_endpoint(request=self.endpoint_request(deployment))
        except exceptions.Conflict:  # HTTP 409 ALREADY_EXISTS
            pass  # a retried create
        except exceptions.GoogleAPICallError as exc:
            raise self._translated(exc) from exc
        return self.native_id(deployment)

    def update(self, native_id: str, deployment: Deployment) -> None:
        """Upload the next version; the describe that follows (the service's, then reconcile's) deploys it."""
        self.validate(deployment)
        self._upload(deployment)

    def _latest_model(self, native_name: str) -> Any | None:
        """The newest uploaded version of this endpoint's model (models.list by the endpoint-id label)."""
        endpoint_id = native_name.removeprefix("jpe-")
        found = self._call(
            "model",
            "list_models",
            request={"parent": self.parent, "filter": f'labels.{LABEL_ENDPOINT_ID}="{endpoint_id}"'},
        )
        models = [m for m in found if m.name.rpartition("/")[2].startswith(native_name + "-v")]
        return max(models, key=lambda m: _version(m.name), default=None)

    def _operation(self, name: str):
        """google.longrunning GetOperation through the endpoint service; None once Vertex no longer has it."""
        from google.api_core import exceptions
        from google.longrunning import operations_pb2

        try:
            return self.client("endpoint").get_operation(request=operations_pb2.GetOperationRequest(name=name))
        except exceptions.NotFound:
            return None
        except exceptions.GoogleAPICallError as exc:
            raise self._translated(exc) from exc

    def _started(self, method: str, request: Any) -> tuple[str | None, str | None]:
        """Start a deploy or undeploy: (its operation name while it runs, its error if it ended in one at once)."""
        from chalicelib.backends.gcp.errors import map_gcp_errors

        with map_gcp_errors(f"vertex {method}"):
            started = getattr(self.client("endpoint"), method)(request=request)
        raw = getattr(started, "operation", started)  # google.api_core.operation.Operation wraps the proto
        if raw.done:
            return None, _failure(raw)
        return raw.name, None

    def step(self, native_id: str, operation: str | None = None) -> tuple[EndpointStatus, str, str | None]:
        """The rollout's next move from what Vertex reports now: (status, why, the operation now in flight).

        The operation the last step started (deploy or undeploy) is read first: still running, nothing new is
        started; ended in error, the endpoint is FAILED with the operation's message."""
        endpoint = self._get("endpoint", "get_endpoint", native_id)
        if endpoint is None:
            return EndpointStatus.DELETED, "no such endpoint", None
        native_name = native_id.rpartition("/")[2]
        latest = self._latest_model(native_name)
        deployed = list(endpoint.deployed_models)
        if latest is None:
            return EndpointStatus.CREATING, "the model is being uploaded", None
        version = latest.name.rpartition("/")[2]
        current = [d for d in deployed if d.model.rpartition("/")[2].partition("@")[0] == version]
        # While an operation runs: serving the newest version (an old one undeploying), serving an older one,
        # or nothing yet.
        waiting = (
            EndpointStatus.IN_SERVICE if current else EndpointStatus.UPDATING if deployed else EndpointStatus.CREATING
        )
        if operation:
            found = self._operation(operation)
            if found is not None and not found.done:
                return waiting, f"{_verb(found)} running ({operation.rpartition('/')[2]})", operation
            failure = _failure(found) if found is not None else None
            if failure:
                return EndpointStatus.FAILED, failure, None
        if not current:
            from google.api_core import exceptions

            try:
                running, failure = self._started("deploy_model", self.deploy_request(native_id, latest))
            except BackendError as exc:
                if not _refused_for_now(exc.__cause__):  # else: the deploy started earlier is still running
                    raise
                running, failure = None, None
            except exceptions.NotFound as exc:  # map_gcp_errors leaves NotFound to its caller
                raise self._translated(exc) from exc
            if failure:
                return EndpointStatus.FAILED, failure, None
            return waiting, f"deploying {version}", running
        running = None
        for old in [d for d in deployed if d.id != current[0].id]:
            # The new version has all the traffic: the old one is retired.
            request = {"endpoint": native_id, "deployed_model_id": old.id}
            running, failure = self._started("undeploy_model", request)
            if failure:
                return EndpointStatus.FAILED, failure, None
        return EndpointStatus.IN_SERVICE, f"serving {version}", running

    def describe(self, native_id: str, operation: str | None = None) -> EndpointObservation | None:
        status, why, running = self.step(native_id, operation)
        if status is EndpointStatus.DELETED:
            return None
        return EndpointObservation(
            status=status,
            native_status=why if status is not EndpointStatus.FAILED else "operation failed",
            native_id=native_id,
            url=f"https://{self.settings.gcp_region}-aiplatform.googleapis.com/v1/{native_id}:rawPredict",
            reason=why if status is EndpointStatus.FAILED else "",
            at=datetime.now(UTC),
            operation=running,
        )

    def delete(self, native_id: str) -> None:
        """Undeploy every model, then delete the endpoint (refused while an undeploy runs: the next reconcile
        asks again) and this endpoint's models."""
        from google.api_core import exceptions

        endpoint = self._get("endpoint", "get_endpoint", native_id)
        if endpoint is not None:
            for deployed in endpoint.deployed_models:
                try:
                    self.client("endpoint").undeploy_model(
                        request={"endpoint": native_id, "deployed_model_id": deployed.id}
                    )
                except exceptions.NotFound:
                    pass
                except exceptions.GoogleAPICallError as exc:
                    if not _refused_for_now(exc):  # else: its undeploy (asked for earlier) still runs
                        raise self._translated(exc) from exc
            try:
                self.client("endpoint").delete_endpoint(name=native_id)
            except exceptions.NotFound:
                pass
            except exceptions.GoogleAPICallError as exc:
                if not _refused_for_now(exc):  # else: models still undeploying; the next reconcile asks again
                    raise self._translated(exc) from exc
        native_name = native_id.rpartition("/")[2]
        endpoint_id = native_name.removeprefix("jpe-")
        for model in self._call(
            "model",
            "list_models",
            request={"parent": self.parent, "filter": f'labels.{LABEL_ENDPOINT_ID}="{endpoint_id}"'},
        ):
            try:
                self.client("model").delete_model(name=model.name)
            except exceptions.NotFound:
                pass
            except exceptions.GoogleAPICallError as exc:
                if not _refused_for_now(exc):  # else: still deployed until its undeploy ends
                    raise self._translated(exc) from exc

    def describe_deleting(self, native_id: str) -> EndpointObservation | None:
        """A DELETING endpoint: ask again for what delete() could not do yet (the endpoint and its models are
        refused while an undeploy runs), then report DELETING, or None once the endpoint is gone. Never a
        rollout step: describe() would deploy the model again once its undeploy ended."""
        self.delete(native_id)
        endpoint = self._get("endpoint", "get_endpoint", native_id)
        if endpoint is None:
            return None
        left = len(endpoint.deployed_models)
        return EndpointObservation(
            status=EndpointStatus.DELETING,
            native_status=f"deleting ({left} model(s) undeploying)" if left else "deleting",
            native_id=native_id,
            at=datetime.now(UTC),
        )

    def invoke(self, native_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """rawPredict with {"instances": [body]}: the serving entry point answers {"predictions": [answer]}."""
        from google.api import httpbody_pb2
        from google.api_core import exceptions

        request = {
            "endpoint": native_id,
            "http_body": httpbody_pb2.HttpBody(
                content_type="application/json", data=json.dumps({"instances": [body]}).encode()
            ),
        }
        try:
            answer = self.client("prediction").raw_predict(request=request)
        except exceptions.NotFound as exc:
            raise self._translated(exc) from exc
        except exceptions.GoogleAPICallError as exc:
            raise BackendError(f"the model answered an error {exc.code}: {exc.message}") from exc
        try:
            return json.loads(answer.data)["predictions"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendError(f"the model answered no prediction: {bytes(answer.data)[:200]!r}") from None

    def invocations_since(self, native_id: str, since: datetime) -> int:
        """Cloud Monitoring's prediction_count of this endpoint (timeSeries.list, summed over every point)."""
        from chalicelib.backends.gcp import rest
        from chalicelib.backends.gcp.errors import map_gcp_errors

        base = self.settings.gcp_api_endpoint or MONITORING
        endpoint_id = native_id.rpartition("/")[2]
        params = {
            "filter": f'metric.type="{PREDICTION_COUNT}" AND resource.labels.endpoint_id="{endpoint_id}"',
            "interval.startTime": since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "interval.endTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        total = 0
        while True:
            with map_gcp_errors("monitoring timeSeries.list"):
                page = rest.request(
                    self.settings, "GET", f"{base}/v3/projects/{self.settings.gcp_project}/timeSeries", params=params
                )
            for series in page.get("timeSeries", []):
                for point in series.get("points", []):
                    value = point.get("value", {})
                    total += int(value.get("int64Value", 0) or value.get("doubleValue", 0) or 0)
            token = page.get("nextPageToken")
            if not token:
                return total
            params["pageToken"] = token
