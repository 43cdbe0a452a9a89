"""The API description: valid OpenAPI 3.1, covers every route, and real responses match it."""

from __future__ import annotations

import jsonschema
import pytest
from openapi_spec_validator import validate

from tests.factories import job_spec


def _doc(api):
    response = api.request("GET", "/openapi.json")
    assert response.status_code == 200
    return response.json_body


def test_the_description_is_valid_openapi_31(api):
    validate(_doc(api))


def test_every_route_of_the_app_is_described(api):
    import app as app_module

    doc = _doc(api)
    for path, entry in app_module.app.routes.items():
        for method in entry:
            assert path in doc["paths"], f"{path} is not in /openapi.json"
            assert method.lower() in doc["paths"][path], f"{method} {path} is not in /openapi.json"


def _check(doc, response, path, method):
    """Validate one real response against the description of its status code."""
    described = doc["paths"][path][method]["responses"][str(response.status_code)]
    schema = described["content"]["application/json"]["schema"]
    resolver_doc = {"components": doc["components"], **schema}
    jsonschema.validate(response.json_body, resolver_doc, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("admin", [False, True])
def test_real_responses_match_their_description(api, admin):
    doc = _doc(api)
    token = api.token("alice", admin=admin)
    created = api.request("POST", "/jobs", token, job_spec("described"))
    _check(doc, created, "/jobs", "post")
    job_id = created.json_body["job_id"]
    _check(doc, api.request("GET", "/jobs?limit=5", token), "/jobs", "get")
    _check(doc, api.request("GET", f"/jobs/{job_id}", token), "/jobs/{job_id}", "get")
    _check(doc, api.request("GET", f"/jobs/{job_id}/events", token), "/jobs/{job_id}/events", "get")
    _check(doc, api.request("GET", f"/jobs/{job_id}/logs", token), "/jobs/{job_id}/logs", "get")
    _check(doc, api.request("POST", f"/jobs/{job_id}/cancel", token), "/jobs/{job_id}/cancel", "post")
    _check(doc, api.request("GET", "/jobs/" + "0" * 32, token), "/jobs/{job_id}", "get")
    _check(doc, api.request("POST", "/jobs", token, {"name": "BAD"}), "/jobs", "post")
    _check(doc, api.request("GET", "/jobs"), "/jobs", "get")
    _check(doc, api.request("GET", "/health"), "/health", "get")


def test_errors_chalice_answers_itself_keep_the_contract_shape(api):
    token = api.token("alice")
    wrong_method = api.request("DELETE", "/jobs", token)
    assert wrong_method.status_code == 405
    assert wrong_method.json_body["error"]["code"] == "method_not_allowed"
    assert set(wrong_method.json_body["error"]) == {"code", "message", "details"}
    wrong_type = api.request("POST", "/jobs", token, body=b"name: x", headers={"Content-Type": "image/png"})
    assert wrong_type.status_code == 415
    assert wrong_type.json_body["error"]["code"] == "unsupported_media_type"


def test_real_endpoint_responses_match_their_description(api, tmp_path):
    import json
    import shutil

    from chalicelib import deps
    from tests.factories import ROOT, endpoint_body, wait_for

    doc = _doc(api)
    token = api.token("alice")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"label_counts": {"cat": 1}}))
    shutil.copy(ROOT / "examples" / "workdir-demo" / "serve.py", folder / "serve.py")
    created = api.request("POST", "/endpoints", token, endpoint_body(model={"uri": f"file://{folder}"}))
    _check(doc, created, "/endpoints", "post")
    path = f"/endpoints/{created.json_body['endpoint_id']}"
    try:
        wait_for(lambda: api.request("GET", path, token).json_body["status"] == "IN_SERVICE", what="in service")
        _check(doc, api.request("GET", path, token), "/endpoints/{endpoint_id}", "get")
        _check(doc, api.request("GET", "/endpoints", token), "/endpoints", "get")
        invoked = api.request("POST", f"{path}/invocations", token, {"text": "cat"})
        _check(doc, invoked, "/endpoints/{endpoint_id}/invocations", "post")
        _check(
            doc,
            api.request("POST", f"{path}/invocations", token, {"text": "emu"}),
            "/endpoints/{endpoint_id}/invocations",
            "post",
        )
        _check(doc, api.request("GET", f"{path}/events", token), "/endpoints/{endpoint_id}/events", "get")
        _check(doc, api.request("PUT", path, token, {"idle_minutes": 5}), "/endpoints/{endpoint_id}", "put")
        _check(doc, api.request("POST", "/endpoints", token, {"name": "BAD"}), "/endpoints", "post")
        _check(doc, api.request("DELETE", path, token), "/endpoints/{endpoint_id}", "delete")
    finally:
        service = deps.get_endpoint_service()
        for endpoint in service.store.list_endpoints(None):
            service.backend("local").delete(endpoint.native_id)


def test_token_responses_match_their_description(api):
    doc = _doc(api)
    mine, other = api.token("alice"), api.token("bob")
    _check(doc, api.request("GET", "/tokens", mine), "/tokens", "get")
    _check(doc, api.request("GET", "/tokens?user=bob", mine), "/tokens", "get")
    listed = api.request("GET", "/tokens", other).json_body["tokens"]
    _check(doc, api.request("DELETE", f"/tokens/{listed[0]['token_id']}", other), "/tokens/{token_id}", "delete")
    _check(doc, api.request("DELETE", "/tokens/zz", mine), "/tokens/{token_id}", "delete")
