"""Small HTTP servers of the local stack: the Slack webhook sink and the function-invoke endpoint."""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

INVOKE_PREFIX = "/2015-03-31/functions/"


class UnknownFunction(LookupError):
    """The stack has no function of that name (a KeyError inside a handler is the handler's own error)."""


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(handler_cls, host: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, 0), handler_cls)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=handler_cls.__name__, daemon=True).start()
    return server


def start_slack_sink(host: str, on_message: Callable[[dict[str, Any]], None]) -> ThreadingHTTPServer:
    """Stands in for a Slack incoming webhook: accepts the JSON, answers 'ok' as Slack does."""

    class SlackSink(_Quiet):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            try:
                message = json.loads(self._body() or b"{}")
            except ValueError:
                self._reply(400, b"invalid_payload", "text/plain")
                return
            on_message(message)
            self._reply(200, b"ok", "text/plain")

    return _serve(SlackSink, host)


def start_invoke_server(
    host: str, invoke: Callable[[str, Any], Any], authorize: Callable[[str, str, Any], str | None] | None = None
) -> ThreadingHTTPServer:
    """Lambda's Invoke API shape: POST /2015-03-31/functions/NAME/invocations with the raw event.

    `authorize(authorization header, name, payload)` answers None to let the call through, else why not.
    """

    class InvokeServer(_Quiet):
        def do_POST(self):  # noqa: N802
            if not (self.path.startswith(INVOKE_PREFIX) and self.path.endswith("/invocations")):
                self._reply(404, json.dumps({"message": f"no route {self.path}"}).encode())
                return
            name = self.path[len(INVOKE_PREFIX) : -len("/invocations")]
            try:
                payload = json.loads(self._body() or b"{}")
            except ValueError as exc:
                self._reply(
                    400, json.dumps({"errorType": "InvalidRequestContentException", "errorMessage": str(exc)}).encode()
                )
                return
            refused = authorize(self.headers.get("Authorization") or "", name, payload) if authorize else None
            if refused:
                self._reply(403, json.dumps({"errorType": "AccessDeniedException", "errorMessage": refused}).encode())
                return
            try:
                result = invoke(name, payload)
            except UnknownFunction as exc:
                self._reply(
                    404,
                    json.dumps({"errorType": "ResourceNotFoundException", "errorMessage": str(exc)}).encode(),
                )
                return
            except Exception as exc:  # a failed invocation answers like Lambda's Unhandled error
                # The handler's own exception (a KeyError too), with the frames Lambda's stackTrace lists.
                trace = [line.strip() for line in traceback.format_tb(exc.__traceback__)]
                error = {"errorType": type(exc).__name__, "errorMessage": str(exc), "stackTrace": trace}
                self._reply(200, json.dumps(error).encode())
                return
            self._reply(200, json.dumps(result, default=str).encode())

    return _serve(InvokeServer, host)
