"""The endpoint routes through Chalice's test client: DynamoDB on moto, real local model-server processes."""

from __future__ import annotations

import json
import shutil

import pytest

from chalicelib import deps
from tests.factories import ROOT, endpoint_body, wait_for


@pytest.fixture
def model_uri(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"label_counts": {"cat": 1, "dog": 3}}))
    shutil.copy(ROOT / "examples" / "workdir-demo" / "serve.py", folder / "serve.py")
    return f"file://{folder}"


@pytest.fixture
def alice(api):
    return api.token("alice")


@pytest.fixture
def cleanup(api):
    yield
    service = deps.get_endpoint_service()
    for endpoint in service.store.list_endpoints(None):
        if endpoint.native_id:
            service.backend(endpoint.backend).delete(endpoint.native_id)


def error_of(response, status) -> dict:
    assert response.status_code == status, response.body
    assert set(response.json_body) == {"error"}
    return response.json_body["error"]


def deploy(api, token, model_uri, **overrides) -> dict:
    response = api.request("POST", "/endpoints", token=token, body=endpoint_body(model={"uri": model_uri}, **overrides))
    assert response.status_code == 201, response.body
    endpoint_id = response.json_body["endpoint_id"]

    def live():
        got = api.request("GET", f"/endpoints/{endpoint_id}", token=token).json_body
        return got if got["status"] != "CREATING" else None

    return wait_for(live, what="the endpoint to leave CREATING")


def test_can_deploy_invoke_list_and_delete_an_endpoint(api, alice, model_uri, cleanup):
    endpoint = deploy(api, alice, model_uri)
    assert endpoint["status"] == "IN_SERVICE" and endpoint["url"].startswith("http://127.0.0.1:")
    assert endpoint["owner"] == "alice" and endpoint["backend"] == "local" and endpoint["cost_per_hour_usd"] == 0.0
    path = f"/endpoints/{endpoint['endpoint_id']}"
    answer = api.request("POST", f"{path}/invocations", token=alice, body={"text": "Dog?"})
    assert answer.status_code == 200, answer.body
    assert answer.json_body == {"label": "dog", "share": 0.75, "answer": "dog: seen 3 of 4 times in training"}
    listed = api.request("GET", "/endpoints", token=alice).json_body["endpoints"]
    assert [(e["endpoint_id"], e["invocations"]) for e in listed] == [(endpoint["endpoint_id"], 1)]
    gone = api.request("DELETE", path, token=alice)
    assert gone.status_code == 202 and gone.json_body["status"] == "DELETED"
    events = api.request("GET", f"{path}/events", token=alice).json_body["events"]
    assert [e["to"] for e in events] == ["CREATING", "IN_SERVICE", "DELETING", "DELETED"]
    late = error_of(api.request("POST", f"{path}/invocations", token=alice, body={"text": "dog"}), 409)
    assert late["code"] == "conflict" and "DELETED" in late["message"]


def test_a_raising_handler_is_a_clear_502_and_the_endpoint_keeps_serving(api, alice, model_uri, cleanup):
    path = f"/endpoints/{deploy(api, alice, model_uri)['endpoint_id']}"
    bad = error_of(api.request("POST", f"{path}/invocations", token=alice, body={"text": "zebra"}), 502)
    assert bad["code"] == "model_error" and "predict raised KeyError" in bad["message"]
    assert api.request("POST", f"{path}/invocations", token=alice, body={"text": "cat"}).status_code == 200


def test_another_users_endpoint_is_a_404_and_no_token_a_401(api, alice, model_uri, cleanup):
    path = f"/endpoints/{deploy(api, alice, model_uri)['endpoint_id']}"
    bob = api.token("bob")
    for method, suffix in (("GET", ""), ("GET", "/events"), ("POST", "/invocations"), ("DELETE", ""), ("PUT", "")):
        body = {"handler": "serve.py"} if method in ("POST", "PUT") else None
        assert error_of(api.request(method, path + suffix, token=bob, body=body), 404)["code"] == "not_found"
    assert api.request("GET", "/endpoints", token=bob).json_body == {"endpoints": []}
    assert error_of(api.request("GET", "/endpoints"), 401)["code"] == "unauthenticated"
    admin = api.token("root", admin=True)
    assert api.request("GET", path, token=admin).json_body["owner"] == "alice"


def test_a_body_above_the_backends_limit_is_a_413(api, alice, model_uri, cleanup):
    from chalicelib.endpoints.backends.local import LocalEndpointBackend

    path = f"/endpoints/{deploy(api, alice, model_uri)['endpoint_id']}"
    big = json.dumps({"text": "x" * LocalEndpointBackend.max_payload_bytes})
    error = error_of(api.request("POST", f"{path}/invocations", token=alice, body=big), 413)
    assert error["code"] == "payload_too_large" and str(LocalEndpointBackend.max_payload_bytes) in error["message"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (endpoint_body(replicas=2), "replicas", "unknown field; valid fields here: backend, code_uri"),
        (endpoint_body(model={"uri": "s3://m/", "from_job": "a" * 32}), "model", "exactly one of from_job"),
        (endpoint_body(model={"uri": "http://m/"}), "model.uri", "must start with one of s3://, gs://, file://"),
        (endpoint_body(handler="../etc/x.py"), "handler", "no .."),
        (
            endpoint_body(backend="lambda"),
            "backend",
            "'local', 'sagemaker', 'sagemaker-serverless', 'vertex' or 'auto'",
        ),
        (endpoint_body(min_replicas=3, max_replicas=2), "(body)", "max_replicas (2) must be at least min_replicas (3)"),
        (endpoint_body(resources={"gpus": 1}), "resources.gpus", "0 on the local backend"),
        (endpoint_body(idle_minutes=-1), "idle_minutes", "greater than or equal to 0"),
        (endpoint_body(workdir="."), "workdir", "packs and uploads it"),
    ],
)
def test_a_bad_endpoint_spec_is_a_400_naming_the_field(api, alice, body, field, message):
    error = error_of(api.request("POST", "/endpoints", token=alice, body=body), 400)
    assert error["details"][0]["field"] == field, error
    assert message in error["details"][0]["message"], error


def test_a_yaml_spec_is_accepted_and_reconcile_reports_the_endpoints(api, alice, model_uri, cleanup):
    text = f"name: yaml-clf\nmodel: {{uri: '{model_uri}'}}\nhandler: serve.py\nbackend: local\nidle_minutes: 0\n"
    response = api.request("POST", "/endpoints", token=alice, body=text, headers={"Content-Type": "application/x-yaml"})
    assert response.status_code == 201, response.body
    endpoint_id = response.json_body["endpoint_id"]

    def reconciled():
        event = api.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=["arn:aws:events:rule/reconcile"]
        )
        results = api.lambda_.invoke("reconcile", event).payload
        mine = [r for r in results if r.get("endpoint_id") == endpoint_id]
        return mine if mine and mine[0]["reason"] == "IN_SERVICE" else None

    assert wait_for(reconciled, what="reconcile to see the endpoint in service")[0]["action"] == "refreshed"
