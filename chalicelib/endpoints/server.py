"""The local model server: one process per endpoint version, serving a user's handler file over loopback HTTP.

`python -m chalicelib.endpoints.server --handler FILE --model-dir DIR --state FILE` imports the handler, calls
`load(model_dir)` once, then answers `POST /invocations` with `postprocess(predict(model, preprocess(request)))`
(preprocess and postprocess optional). A handler that raises answers 500 with a JSON error naming the function
and the exception; the server goes on. `GET /health` and `GET /stats?since=ISO` report its invocation count.
The state file says READY (with the port) or FAILED (with the reason) once the handler is loaded or refused.
"""

from __future__ import annotations

import argparse
import bisect
import importlib.util
import json
import os
import sys
import threading
import traceback
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 6 * 1024 * 1024  # what the API lets through (the local backend's max_payload_bytes)
REQUIRED = ("load", "predict")


class HandlerError(Exception):
    """The handler file cannot serve: missing, not importable, or lacking load/predict."""


def load_handler(path: Path) -> ModuleType:
    if not path.is_file():
        raise HandlerError(f"handler {path} does not exist")
    spec = importlib.util.spec_from_file_location("jobplane_endpoint_handler", path)
    if spec is None or spec.loader is None:
        raise HandlerError(f"handler {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # the handler may import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: whatever it raises is the reason it cannot serve
        raise HandlerError(f"importing {path.name} failed: {type(exc).__name__}: {exc}") from exc
    missing = [name for name in REQUIRED if not callable(getattr(module, name, None))]
    if missing:
        raise HandlerError(f"{path.name} defines no {' or '.join(missing)}(); a handler needs load and predict")
    return module


class ModelServer:
    """The handler's model and the invocation counter (timestamps, so reconcile can ask 'since when')."""

    def __init__(self, handler: ModuleType, model_dir: Path) -> None:
        self.handler = handler
        try:
            self.model = handler.load(str(model_dir))
        except Exception as exc:  # the user's code
            raise HandlerError(f"load({model_dir}) raised {type(exc).__name__}: {exc}") from exc
        self._lock = threading.Lock()
        self._times: list[datetime] = []

    def count(self) -> None:
        with self._lock:
            self._times.append(datetime.now(UTC))

    def since(self, since: datetime | None) -> tuple[int, datetime | None]:
        with self._lock:
            last = self._times[-1] if self._times else None
            if since is None:
                return len(self._times), last
            return len(self._times) - bisect.bisect_left(self._times, since), last

    def predict(self, request: Any) -> tuple[int, Any]:
        """(HTTP status, JSON body): the handler's answer, or a 500 naming the step that raised."""
        self.count()
        step = "preprocess"
        try:
            pre = getattr(self.handler, "preprocess", None)
            inputs = pre(request) if callable(pre) else request
            step = "predict"
            outputs = self.handler.predict(self.model, inputs)
            step = "postprocess"
            post = getattr(self.handler, "postprocess", None)
            answer = post(outputs) if callable(post) else outputs
            step = "the answer"
            json.dumps(answer)
        except Exception as exc:  # the user's code: reported to the caller, the server goes on
            traceback.print_exc()
            message = f"{step} raised {type(exc).__name__}: {exc}"
            if step == "the answer":
                message = f"the handler's answer is not JSON: {exc}"
            details = [{"field": "handler", "message": message, "type": step}]
            return 500, {"error": {"code": "model_error", "message": message, "details": details}}
        return 200, answer


def _handler_class(server: ModelServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, {"error": {"code": code, "message": message, "details": []}})

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlsplit(self.path)
            if url.path == "/health":
                self._send(200, {"status": "ok", "invocations": server.since(None)[0]})
            elif url.path == "/stats":
                raw = parse_qs(url.query).get("since", [None])[0]
                try:
                    since = datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None
                except ValueError:
                    self._error(400, "invalid_request", "since: an ISO 8601 time")
                    return
                count, last = server.since(since)
                self._send(200, {"invocations": count, "last_invoked_at": last.isoformat() if last else None})
            else:
                self._error(404, "not_found", f"no route {url.path}")

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            if urlsplit(self.path).path != "/invocations":
                self._error(404, "not_found", "POST /invocations")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._error(413, "payload_too_large", f"at most {MAX_BODY} bytes")
                self.close_connection = True
                return
            try:
                request = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                self._error(400, "invalid_request", "the body is not valid JSON")
                return
            self._send(*server.predict(request))

    return Handler


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve one endpoint's handler on a free loopback port")
    parser.add_argument("--handler", required=True, type=Path)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--state", required=True, type=Path, help="where READY/FAILED and the port are written")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        model = ModelServer(load_handler(args.handler), args.model_dir)
    except HandlerError as exc:
        print(exc, file=sys.stderr)
        _write_state(args.state, {"state": "FAILED", "reason": str(exc), "pid": os.getpid()})
        return 1
    httpd = ThreadingHTTPServer((args.host, 0), _handler_class(model))
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    _write_state(args.state, {"state": "READY", "port": port, "pid": os.getpid(), "url": f"http://{args.host}:{port}"})
    print(f"serving {args.handler} on http://{args.host}:{port}", file=sys.stderr, flush=True)
    httpd.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
