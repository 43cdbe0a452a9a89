"""The serving entry point for a Vertex AI custom container: a jobplane handler behind AIP_* routes.

Copy it into the serving image (or `pip install` jobplane there) and run `python vertex_serve.py`. Vertex sets
AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE and AIP_STORAGE_URI (a gs:// copy of the model's files);
JOBPLANE_HANDLER names the handler file, found in the endpoint's packed workdir (JOBPLANE_CODE_URI, a .tar.gz)
or JOBPLANE_CODE_DIR (default: the current folder), else among the model's files. A request
{"instances": [...]} is answered {"predictions": [...]}: each instance through preprocess, predict and
postprocess. Reading gs:// needs google-cloud-storage in the image; everything else is the standard library."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY = 1536 * 1024  # Vertex's online prediction payload limit


def load_handler(path: Path):
    spec = importlib.util.spec_from_file_location("jobplane_handler", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the handler {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("load", "predict"):
        if not callable(getattr(module, name, None)):
            raise RuntimeError(
                f"{path.name} defines no {name}(): a handler needs load(model_dir) and predict(model, inputs)"
            )
    return module


def local_model_dir(storage_uri: str) -> Path:
    """AIP_STORAGE_URI as a local folder: a path is used as is; gs:// is downloaded (google-cloud-storage)."""
    if not storage_uri.startswith("gs://"):
        return Path(storage_uri)
    from google.cloud import storage  # in the serving image, which reads from Cloud Storage anyway

    bucket_name, _, prefix = storage_uri[5:].partition("/")
    target = Path(tempfile.mkdtemp(prefix="model-"))
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    for blob in storage.Client().list_blobs(bucket_name, prefix=prefix):
        relative = blob.name[len(prefix) :]
        destination = (target / relative).resolve()
        if relative and not relative.endswith("/") and target.resolve() in destination.parents:
            destination.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(destination))
    return target


def find_handler(handler: str, code_dir: Path, model_dir: Path) -> Path:
    """The handler file: in the code folder when it is there, else among the model's files."""
    for folder in (code_dir, model_dir):
        if (folder / handler).is_file():
            return folder / handler
    raise SystemExit(f"vertex_serve: {handler} is in neither {code_dir} nor the model's files ({model_dir})")


def unpacked_code(code_uri: str) -> Path:
    """JOBPLANE_CODE_URI (the endpoint's packed workdir, .tar.gz) unpacked into a new folder: gs:// is
    downloaded (google-cloud-storage), anything else is a local file."""
    import tarfile

    target = Path(tempfile.mkdtemp(prefix="code-"))
    archive = Path(code_uri)
    if code_uri.startswith("gs://"):
        from google.cloud import storage

        bucket_name, _, name = code_uri[5:].partition("/")
        archive = target.with_suffix(".tar.gz")
        storage.Client().bucket(bucket_name).blob(name).download_to_filename(str(archive))
    with tarfile.open(archive, mode="r:gz") as tar:
        tar.extractall(target, filter="data")  # no absolute paths, links or `..` out of the folder
    return target


class Model:
    """The handler and its loaded model; predict() runs one batch of instances."""

    def __init__(self, handler_file: Path, model_dir: Path) -> None:
        self.handler = load_handler(handler_file)
        self.model = self.handler.load(str(model_dir))
        self.count = 0
        self._lock = threading.Lock()

    def predict(self, instances: list[Any]) -> list[Any]:
        with self._lock:
            self.count += 1
        preprocess = getattr(self.handler, "preprocess", None)
        postprocess = getattr(self.handler, "postprocess", None)
        answers = []
        for instance in instances:
            inputs = preprocess(instance) if callable(preprocess) else instance
            outputs = self.handler.predict(self.model, inputs)
            answers.append(postprocess(outputs) if callable(postprocess) else outputs)
        return answers


# Vertex routes to the container's port from outside it: the server listens on every interface there.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def make_server(model: Model, port: int, health_route: str, predict_route: str, host: str = ALL_INTERFACES):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.split("?")[0] == health_route:
                self._answer(200, {"status": "ok"})
            else:
                self._answer(404, {"error": f"no route {self.path}; GET {health_route} or POST {predict_route}"})

        def do_POST(self) -> None:
            if self.path.split("?")[0] != predict_route:
                self._answer(404, {"error": f"no route {self.path}; POST {predict_route}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._answer(413, {"error": f"the request is {length} bytes; at most {MAX_BODY}"})
                return
            try:
                request = json.loads(self.rfile.read(length) or b"null")
            except ValueError as exc:
                self._answer(400, {"error": f"the body is not JSON: {exc}"})
                return
            if not isinstance(request, dict) or not isinstance(request.get("instances"), list):
                self._answer(400, {"error": 'send {"instances": [...]}'})
                return
            try:
                predictions = model.predict(request["instances"])
            except Exception as exc:  # the handler's own failure: a clear 500, and the server keeps serving
                self._answer(500, {"error": f"the handler raised {type(exc).__name__}: {exc}"})
                return
            self._answer(200, {"predictions": predictions})

        def log_message(self, *args) -> None:
            sys.stderr.write("vertex_serve: " + (args[0] % args[1:]) + "\n")

    return ThreadingHTTPServer((host, port), Handler)


def main(environ: dict[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    model_dir = local_model_dir(env.get("AIP_STORAGE_URI", "."))
    handler = env.get("JOBPLANE_HANDLER", "serve.py")
    code_dir = Path(env.get("JOBPLANE_CODE_DIR", "."))
    if env.get("JOBPLANE_CODE_URI"):
        code_dir = unpacked_code(env["JOBPLANE_CODE_URI"])
    model = Model(find_handler(handler, code_dir, model_dir), model_dir)
    server = make_server(
        model,
        int(env.get("AIP_HTTP_PORT", "8080")),
        env.get("AIP_HEALTH_ROUTE", "/health"),
        env.get("AIP_PREDICT_ROUTE", "/predict"),
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
