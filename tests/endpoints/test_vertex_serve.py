"""The Vertex serving entry point over real HTTP: the AIP_* contract, the handler's steps, its errors."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from chalicelib.endpoints import vertex_serve
from tests.factories import endpoint_model_dir, free_port, wait_for


def call(url: str, body: bytes | None = None, method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def served(tmp_path):
    """main() as Vertex starts the container: the routes and port from AIP_*, the model from AIP_STORAGE_URI."""
    model = endpoint_model_dir(tmp_path / "model", scale=2.0)
    port = free_port()
    env = {
        "AIP_HTTP_PORT": str(port),
        "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
        "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict",
        "AIP_STORAGE_URI": str(model),
        "JOBPLANE_HANDLER": "serve.py",
        "JOBPLANE_CODE_DIR": str(tmp_path / "no-code-folder"),
    }
    servers = []
    original = vertex_serve.make_server

    def capture(*args, **kwargs):
        server = original(*args, **{**kwargs, "host": "127.0.0.1"})
        servers.append(server)
        return server

    vertex_serve.make_server = capture
    thread = threading.Thread(target=vertex_serve.main, args=(env,), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return call(base + env["AIP_HEALTH_ROUTE"], method="GET")[0] == 200
        except OSError:
            return False

    wait_for(healthy, what="the serving entry point")
    yield base + env["AIP_PREDICT_ROUTE"]
    vertex_serve.make_server = original
    servers[0].shutdown()
    servers[0].server_close()


def test_answers_instances_with_predictions_through_pre_and_postprocess(served):
    status, body = call(served, json.dumps({"instances": [{"x": [1, 2]}, {"x": [5]}]}).encode())
    assert status == 200
    assert body == {"predictions": [{"y": [2.0, 4.0], "postprocessed": True}, {"y": [10.0], "postprocessed": True}]}


def test_a_handler_that_raises_is_a_clear_500_and_the_server_keeps_serving(served):
    status, body = call(served, json.dumps({"instances": [{"boom": 1}]}).encode())
    assert status == 500
    assert body == {"error": "the handler raised ValueError: boom requested"}
    assert call(served, json.dumps({"instances": [{"x": [1]}]}).encode())[0] == 200


@pytest.mark.parametrize(
    "raw, words", [(b"{not json", "not JSON"), (b'{"x": [1]}', '{"instances": [...]}'), (b"[1]", "instances")]
)
def test_refuses_a_body_that_is_not_an_instances_request(served, raw, words):
    status, body = call(served, raw)
    assert status == 400 and words in body["error"]


def test_other_routes_are_404_naming_the_routes_it_serves(served):
    status, body = call(served.rpartition("/")[0] + "/other", b"{}")
    assert status == 404 and ":predict" in body["error"]


def test_a_request_over_vertexs_payload_limit_is_413_before_its_body_is_read(served):
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(served)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.putrequest("POST", url.path)
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(vertex_serve.MAX_BODY + 1))
    connection.endheaders()  # the body is never sent: the answer comes from the headers alone
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 413 and str(vertex_serve.MAX_BODY) in body["error"]


def test_the_handler_is_found_in_the_code_folder_before_the_models_files(tmp_path):
    model = endpoint_model_dir(tmp_path / "model", scale=3.0)
    code = tmp_path / "code"
    code.mkdir()
    (code / "serve.py").write_text("def load(d):\n    return 'code'\n\ndef predict(m, x):\n    return m\n")
    assert vertex_serve.find_handler("serve.py", code, model) == code / "serve.py"
    assert vertex_serve.find_handler("serve.py", tmp_path / "none", model) == model / "serve.py"
    with pytest.raises(SystemExit, match="other.py is in neither"):
        vertex_serve.find_handler("other.py", code, model)
    loaded = vertex_serve.Model(code / "serve.py", model)
    assert loaded.predict([{}]) == ["code"]


def test_the_packed_workdir_is_unpacked_and_its_handler_wins(tmp_path):
    import tarfile

    model = endpoint_model_dir(tmp_path / "model", scale=3.0)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "serve.py").write_text(
        "def load(d):\n    return 'workdir'\n\ndef predict(m, x):\n    return m\n"
    )
    with tarfile.open(tmp_path / "code.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "serve.py", arcname="serve.py")
    code = vertex_serve.unpacked_code(str(tmp_path / "code.tar.gz"))
    found = vertex_serve.find_handler("serve.py", code, model)
    assert vertex_serve.Model(found, model).predict([{}]) == ["workdir"]
