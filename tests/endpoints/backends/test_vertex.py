"""Vertex endpoints: aiplatform_v1 requests over its REST transport with the session stubbed; the rollout that
describe() drives (upload, deploy, retire the old version), delete, rawPredict and the prediction count."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from google.cloud import aiplatform_v1

from chalicelib.endpoints.backends.base import EndpointStatus
from chalicelib.endpoints.backends.vertex import PREDICTION_COUNT, VertexEndpointBackend
from chalicelib.errors import BackendError, ValidationError
from tests.factories import GCP_PROJECT, gcp_env, make_deployment, make_settings
from tests.fakegcp import VertexEndpointsSession

PARENT = f"projects/{GCP_PROJECT}/locations/us-central1"
NAME = "jpe-" + "e" * 32
NATIVE = f"{PARENT}/endpoints/{NAME}"
# The REST transport sends enums as numbers ($alt=json;enum-encoding=int).
L4 = aiplatform_v1.AcceleratorType.NVIDIA_L4.value
IMAGE = "us-docker.pkg.dev/my-project/serve/scaler:1"


@pytest.fixture
def vertex(tmp_path):
    # The endpoint is never reached: the transport's session is the stub.
    backend = VertexEndpointBackend(make_settings(tmp_path, **gcp_env("http://127.0.0.1:9")))
    return backend, VertexEndpointsSession(GCP_PROJECT).install(backend)


def deployment(**changes):
    return make_deployment(**{"model_uri": "gs://models/scaler/", "image": IMAGE, **changes})


def test_create_uploads_the_serving_image_and_creates_the_endpoint_with_the_apis_json(vertex):
    backend, session = vertex
    d = deployment(resources={"gpus": 2, "gpu_type": "L4"}, min_replicas=1, max_replicas=3, env={"A": "1"})
    assert backend.create(d) == NATIVE
    upload, create = session.requests
    assert (upload["method"], upload["path"]) == ("POST", f"/v1/{PARENT}/models:upload")
    # Built as aiplatform_v1.UploadModelRequest; the body is the library's serialisation of it.
    assert isinstance(backend.upload_request(d), aiplatform_v1.UploadModelRequest)
    model = upload["body"]["model"]
    assert upload["body"]["modelId"] == f"{NAME}-v1"
    assert model["artifactUri"] == "gs://models/scaler/"
    assert model["containerSpec"] == {
        "imageUri": IMAGE,
        "env": [
            {"name": "A", "value": "1"},
            {"name": "JOBPLANE_HANDLER", "value": "serve.py"},
        ],
        "ports": [{"containerPort": 8080}],
        "predictRoute": "/predict",
        "healthRoute": "/health",
    }
    assert model["labels"]["jobplane-endpoint-id"] == "e" * 32
    assert model["labels"]["jobplane-machine"] == "g2-standard-24"
    packed = deployment(code_uri="gs://art/code/abc.tar.gz")
    packed_env = {e.name: e.value for e in backend.upload_request(packed).model.container_spec.env}
    assert packed_env["JOBPLANE_CODE_URI"] == "gs://art/code/abc.tar.gz"
    assert (create["path"], create["params"]["endpointId"]) == (f"/v1/{PARENT}/endpoints", NAME)
    assert backend.create(d) == NATIVE  # a retry: both already exist, nothing else is made
    assert len(session.models) == len(session.endpoints) == 1


def test_describe_deploys_the_uploaded_version_on_dedicated_resources_then_reports_it_in_service(vertex):
    creator, session = vertex
    creator.create(deployment(resources={"gpus": 2, "gpu_type": "L4"}, min_replicas=1, max_replicas=3))
    # Another function instance (a reconcile) takes the step: the sizes come from the model, not from memory.
    backend = VertexEndpointBackend(creator.settings)
    session.install(backend)
    first = backend.describe(NATIVE)
    assert first.status is EndpointStatus.CREATING and "deploying" in first.native_status
    deploy = [r for r in session.requests if r["path"].endswith(":deployModel")]
    assert len(deploy) == 1
    assert deploy[0]["body"] == {
        "deployedModel": {
            "id": "1",
            "model": f"{PARENT}/models/{NAME}-v1",
            "displayName": f"{NAME}-v1",
            "dedicatedResources": {
                "machineSpec": {"machineType": "g2-standard-24", "acceleratorType": L4, "acceleratorCount": 2},
                "minReplicaCount": 1,
                "maxReplicaCount": 3,
            },
        },
        "trafficSplit": {"0": 100},
    }
    second = backend.describe(NATIVE)
    assert second.status is EndpointStatus.IN_SERVICE
    assert second.url == f"https://us-central1-aiplatform.googleapis.com/v1/{NATIVE}:rawPredict"
    assert len([r for r in session.requests if r["path"].endswith(":deployModel")]) == 1


def test_a_deploy_still_running_is_not_started_twice(vertex):
    backend, session = vertex
    backend.create(deployment())
    session.refuse_deploys = True  # Vertex: FAILED_PRECONDITION (HTTP 400) while the first deploy runs
    assert backend.describe(NATIVE).status is EndpointStatus.CREATING


def test_update_deploys_the_new_version_then_retires_the_old_one_without_a_gap(vertex):
    backend, session = vertex
    backend.create(deployment())
    backend.describe(NATIVE)
    backend.update(NATIVE, deployment(version=2))  # uploads v2; the describe that follows deploys it
    endpoint = session.endpoints[NATIVE]
    assert [d["id"] for d in endpoint["deployedModels"]] == ["1"]
    assert backend.describe(NATIVE).status is EndpointStatus.UPDATING
    # The new version is deployed beside the old one (which served until now) and takes all the traffic.
    assert [d["id"] for d in endpoint["deployedModels"]] == ["1", "2"]
    assert endpoint["trafficSplit"] == {"2": 100}
    observed = backend.describe(NATIVE)
    assert observed.status is EndpointStatus.IN_SERVICE and observed.native_status == f"serving {NAME}-v2"
    assert [d["id"] for d in endpoint["deployedModels"]] == ["2"]
    undeploy = [r for r in session.requests if r["path"].endswith(":undeployModel")]
    assert [r["body"] for r in undeploy] == [{"deployedModelId": "1"}]


def test_delete_undeploys_then_deletes_the_endpoint_and_its_models_and_is_harmless_again(vertex):
    backend, session = vertex
    backend.create(deployment())
    backend.describe(NATIVE)
    backend.delete(NATIVE)
    assert session.endpoints == {} and session.models == {}
    assert backend.describe(NATIVE) is None
    backend.delete(NATIVE)


def test_invoke_sends_one_instance_and_returns_its_prediction_or_the_models_error(vertex):
    backend, session = vertex
    backend.create(deployment())
    backend.describe(NATIVE)
    session.predict = lambda instances: [{"y": [x * 2 for x in i["x"]]} for i in instances]
    assert backend.invoke(NATIVE, {"x": [1, 2]}) == {"y": [2, 4]}
    call = session.requests[-1]
    assert call["path"] == f"/v1/{NATIVE}:rawPredict"
    assert json.loads(base64.b64decode(call["body"]["httpBody"]["data"])) == {"instances": [{"x": [1, 2]}]}

    def boom(instances):
        raise ValueError("boom requested")

    session.predict = boom
    with pytest.raises(BackendError, match="the model answered an error 500.*boom requested"):
        backend.invoke(NATIVE, {"boom": 1})
    backend.delete(NATIVE)
    with pytest.raises(BackendError, match="not found") as raised:
        backend.invoke(NATIVE, {"x": [1]})
    assert "the model answered" not in raised.value.message


def test_counts_predictions_from_cloud_monitoring_over_every_page(vertex):
    backend, session = vertex
    session.time_series_pages = [
        {
            "timeSeries": [
                {
                    "metric": {"type": PREDICTION_COUNT},
                    "resource": {"type": "aiplatform.googleapis.com/Endpoint", "labels": {"endpoint_id": NAME}},
                    "metricKind": "DELTA",
                    "valueType": "INT64",
                    "points": [{"value": {"int64Value": "3"}}, {"value": {"int64Value": "4"}}],
                }
            ],
            "nextPageToken": "p2",
        },
        {"timeSeries": [{"points": [{"value": {"int64Value": "5"}}]}]},
    ]
    import chalicelib.backends.gcp.rest as rest

    rest._sessions[True] = session
    try:
        assert backend.invocations_since(NATIVE, datetime.now(UTC) - timedelta(hours=1)) == 12
    finally:
        rest._sessions.pop(True, None)
    first, second = [r for r in session.requests if r["path"].endswith("/timeSeries")]
    assert first["path"] == f"/v3/projects/{GCP_PROJECT}/timeSeries"
    assert first["params"]["filter"] == f'metric.type="{PREDICTION_COUNT}" AND resource.labels.endpoint_id="{NAME}"'
    assert second["params"]["pageToken"] == "p2"


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"image": None}, "image"),
        ({"model_uri": "s3://b/m/"}, "model.uri"),
        ({"min_replicas": 0}, "min_replicas"),
        ({"code_uri": "s3://b/code.tar.gz"}, "workdir"),
        ({"resources": {"gpus": 3, "gpu_type": "L4"}}, "resources.gpu_type"),
    ],
)
def test_refuses_what_vertex_cannot_serve_naming_the_field(vertex, changes, field):
    backend, _ = vertex
    with pytest.raises(ValidationError) as raised:
        backend.validate(deployment(**changes))
    assert raised.value.details[0]["field"] == field


def test_vertexs_payload_limit_is_one_and_a_half_megabytes(vertex):
    assert vertex[0].max_payload_bytes == 1536 * 1024


def test_a_deploy_operation_that_ends_in_error_fails_the_endpoint_with_its_message(vertex):
    """google.longrunning Operations in the published JSON shape: the deploy runs (nothing new is started
    meanwhile), then ends with a google.rpc.Status error, whose message becomes the failure reason."""
    backend, session = vertex
    backend.create(deployment())
    session.hold_operations = True
    first = backend.describe(NATIVE)
    assert first.status is EndpointStatus.CREATING and first.operation.startswith(f"{NATIVE}/operations/")
    running = backend.describe(NATIVE, first.operation)
    assert (running.status, running.operation) == (EndpointStatus.CREATING, first.operation)
    assert running.native_status.startswith("DeployModel running")
    assert len([r for r in session.requests if r["path"].endswith(":deployModel")]) == 1
    session.finish(first.operation, {"code": 8, "message": "Machine type g2-standard-24 is out of stock"})
    failed = backend.describe(NATIVE, first.operation)
    assert failed.status is EndpointStatus.FAILED and failed.operation is None
    assert failed.reason == "Vertex DeployModel failed: Machine type g2-standard-24 is out of stock (code 8)"
    polled = [r["path"] for r in session.requests if "/operations/" in r["path"]]
    assert polled == [f"/ui/{first.operation}"] * 2  # the transport's first GetOperation binding


def test_a_deploy_that_succeeds_later_and_a_failed_undeploy_of_the_old_version(vertex):
    backend, session = vertex
    backend.create(deployment())
    session.hold_operations = True
    deploying = backend.describe(NATIVE)
    session.finish(deploying.operation)
    served = backend.describe(NATIVE, deploying.operation)
    assert (served.status, served.operation) == (EndpointStatus.IN_SERVICE, None)
    backend.update(NATIVE, deployment(version=2))
    rolling = backend.describe(NATIVE)
    assert rolling.status is EndpointStatus.UPDATING
    session.finish(rolling.operation)
    retiring = backend.describe(NATIVE, rolling.operation)
    # v2 serves; v1's undeploy runs, and it is tracked too
    assert retiring.status is EndpointStatus.IN_SERVICE and retiring.native_status == f"serving {NAME}-v2"
    session.finish(retiring.operation, {"code": 13, "message": "Internal error undeploying 1"})
    failed = backend.describe(NATIVE, retiring.operation)
    assert failed.status is EndpointStatus.FAILED
    assert failed.reason == "Vertex UndeployModel failed: Internal error undeploying 1 (code 13)"


def test_the_service_keeps_the_operation_on_the_record_and_reconcile_fails_the_endpoint_with_its_error(tmp_path):
    from chalicelib.auth import Principal
    from chalicelib.endpoints.service import EndpointService
    from chalicelib.endpoints.spec import parse_endpoint_spec
    from chalicelib.store.endpoints import InMemoryEndpointStore
    from tests.factories import endpoint_body

    sent = []
    service = EndpointService(
        InMemoryEndpointStore(),
        make_settings(tmp_path, **gcp_env("http://127.0.0.1:9")),
        notify=lambda endpoint, kind: sent.append(kind),
    )
    session = VertexEndpointsSession(GCP_PROJECT).install(service.backend("vertex"))
    session.hold_operations = True
    body = endpoint_body(backend="vertex", model={"uri": "gs://models/scaler/"}, image=IMAGE)
    endpoint = service.create(Principal("alice"), parse_endpoint_spec(body))
    assert endpoint.status is EndpointStatus.CREATING and endpoint.operation.startswith(f"{endpoint.native_id}/")
    assert service.store.get_endpoint(endpoint.endpoint_id).operation == endpoint.operation
    assert [d.action for d in service.reconcile()] == ["refreshed"]  # still running: nothing new started
    assert len([r for r in session.requests if r["path"].endswith(":deployModel")]) == 1
    session.finish(endpoint.operation, {"code": 8, "message": "The machine type is out of stock in us-central1"})
    service.reconcile()
    failed = service.store.get_endpoint(endpoint.endpoint_id)
    assert failed.status is EndpointStatus.FAILED and failed.operation is None
    reason = "Vertex DeployModel failed: The machine type is out of stock in us-central1 (code 8)"
    assert failed.failure_reason == reason
    assert sent == ["failed"]
    assert [h.to_status for h in service.store.history(endpoint.endpoint_id)][-1] is EndpointStatus.FAILED


def test_a_deleting_endpoint_is_deleted_step_by_step_and_never_deployed_again(tmp_path):
    """Vertex refuses to delete an endpoint (and its models) while an undeploy runs: reconcile asks again each
    tick until it is gone, and never takes a rollout step, which would deploy the model again."""
    from chalicelib.auth import Principal
    from chalicelib.endpoints.service import EndpointService
    from chalicelib.endpoints.spec import parse_endpoint_spec
    from chalicelib.store.endpoints import InMemoryEndpointStore
    from tests.factories import endpoint_body

    service = EndpointService(InMemoryEndpointStore(), make_settings(tmp_path, **gcp_env("http://127.0.0.1:9")))
    session = VertexEndpointsSession(GCP_PROJECT).install(service.backend("vertex"))
    body = endpoint_body(backend="vertex", model={"uri": "gs://models/scaler/"}, image=IMAGE)
    endpoint = service.create(Principal("alice"), parse_endpoint_spec(body))
    endpoint = service.get(Principal("alice"), endpoint.endpoint_id)
    assert endpoint.status is EndpointStatus.IN_SERVICE
    session.hold_operations = True  # the undeploy takes a while
    deleting = service.delete(Principal("alice"), endpoint.endpoint_id)
    assert deleting.status is EndpointStatus.DELETING
    [undeploy] = [n for n, op in session.operations.items() if not op["done"]]
    deploys = len([r for r in session.requests if r["path"].endswith(":deployModel")])
    service.reconcile()
    assert service.store.get_endpoint(endpoint.endpoint_id).status is EndpointStatus.DELETING
    session.finish(undeploy)
    service.reconcile()  # undeployed: now the endpoint and its model go
    gone = service.store.get_endpoint(endpoint.endpoint_id)
    assert gone.status is EndpointStatus.DELETED and session.endpoints == {} and session.models == {}
    assert len([r for r in session.requests if r["path"].endswith(":deployModel")]) == deploys
