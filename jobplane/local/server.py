"""The local stack's HTTP servers: waitress (bounded workers, deep backlog, body cap before reading, time-outs)."""

from __future__ import annotations

import json
import logging
import threading
import time

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

log = logging.getLogger("jobplane.local")

BACKLOG = 1024  # a burst of hundreds of clients waits in the kernel's queue instead of being reset
CONNECTION_LIMIT = 1000  # open connections; past it waitress stops accepting and the backlog holds the rest
HEADER_TIMEOUT = 10.0  # a request line and headers must arrive within this, counted from their first byte
READ_TIMEOUT = 30.0  # a connection silent for this long (mid-body or idle keep-alive) is closed


class _JsonErrorTask(ErrorTask):
    """waitress's own errors (413 before the body is read, 400 for bad framing) in the API's error shape."""

    def execute(self):
        error = self.request.error
        code = {413: "payload_too_large", 431: "headers_too_large"}.get(error.code, "bad_request")
        body = json.dumps(
            {"error": {"code": code, "message": f"{error.reason}: {error.body}", "details": [{"field": "(body)"}]}}
        ).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    """One client connection; closes a client that trickles its headers past HEADER_TIMEOUT."""

    error_task_class = _JsonErrorTask
    header_timeout = HEADER_TIMEOUT

    def received(self, data):
        if self.request is None:
            self.request_started = time.monotonic()
        elif not self.request.headers_finished and time.monotonic() - self.request_started > self.header_timeout:
            log.debug("closing %s: headers took longer than %ss", self.addr, self.header_timeout)
            self.will_close = True
            return False
        return super().received(data)


class Server:
    """A WSGI app on a bound socket; `start()` serves it from a thread, `stop()` closes everything."""

    def __init__(
        self,
        app,
        host: str | None = None,
        port: int | None = None,
        *,
        threads: int,
        max_body: int,
        name: str,
        sockets=None,
    ) -> None:
        self.name = name
        # Binding happens here, so a busy port fails before anything else has started; or it serves
        # `sockets` already bound (an API worker process on the stack's listening socket).
        where = {"sockets": sockets} if sockets is not None else {"host": host, "port": port}
        self._server = create_server(
            app,
            **where,
            threads=threads,
            backlog=BACKLOG,
            connection_limit=CONNECTION_LIMIT,
            channel_timeout=READ_TIMEOUT,
            cleanup_interval=5,
            # waitress refuses a Content-Length >= this with 413 before reading a byte of the body.
            max_request_body_size=max_body + 1,
            max_request_header_size=64 * 1024,
            ident="jobplane",
            expose_tracebacks=False,
            clear_untrusted_proxy_headers=True,
        )
        self._server.channel_class = _Channel
        self.server_address = (self._server.effective_host, self._server.effective_port)
        self.socket = self._server.socket
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, name=self.name, daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        server = self._server
        server.task_dispatcher.shutdown(timeout=5)  # requests in flight finish first

        def close_all():
            # Run in the I/O thread: closing a socket under a poll() in another thread is a race.
            for channel in list(server._map.values()):
                channel.close()

        if self._thread and self._thread.is_alive():
            server.trigger.pull_trigger(close_all)
            self._thread.join(timeout=5)
        else:
            close_all()


class ChaliceWSGI:
    """Chalice's LocalGateway (the same event API Gateway sends Lambda) as a WSGI app."""

    METHODS = frozenset({"GET", "PUT", "POST", "HEAD", "DELETE", "PATCH", "OPTIONS"})

    def __init__(self, app_object, config) -> None:
        from chalice.local import LocalGateway, RouteMatcher

        _requests_per_thread(app_object)
        self.app = app_object
        self.gateway = LocalGateway(app_object, config)
        self.matcher = RouteMatcher(list(app_object.routes))

    def __call__(self, environ, start_response):
        from chalice.local import LocalGatewayException

        method = environ["REQUEST_METHOD"]
        # The request target as sent (still percent-encoded, with its query), as Chalice's own server passes it.
        path = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        if method not in self.METHODS:
            return self._not_allowed(method, path, start_response)
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        for key, name in (("CONTENT_TYPE", "Content-Type"), ("CONTENT_LENGTH", "Content-Length")):
            if environ.get(key):
                headers[name] = environ[key]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else None
        try:
            response = self.gateway.handle_request(method=method, path=path, headers=headers, body=body)
            status, out_headers = response["statusCode"], {**response["headers"], **response["multiValueHeaders"]}
            payload = response["body"]
            if response.get("isBase64Encoded"):
                import base64

                payload = base64.b64decode(payload)
        except LocalGatewayException as exc:
            status, out_headers, payload = exc.CODE, dict(exc.headers), exc.body
        if payload is None:
            payload = b""
        elif not isinstance(payload, bytes):
            payload = payload.encode("utf-8")
        out_headers.setdefault("Content-Type", "application/json")
        header_list = []
        for name, value in out_headers.items():
            if name.lower() in ("content-length", "connection", "transfer-encoding"):
                continue
            for item in value if isinstance(value, list) else [value]:
                header_list.append((name, str(item)))
        header_list.append(("Content-Length", str(len(payload))))
        start_response(_status_line(status), header_list)
        return [] if method == "HEAD" else [payload]

    def _not_allowed(self, method: str, path: str, start_response):
        # API Gateway answers methods a route lacks; a bare HTTP server would say 501.
        try:
            allowed = sorted(self.app.routes[self.matcher.match_route(path.split("?")[0]).route])
        except ValueError:
            allowed = []
        error = {"code": "method_not_allowed", "message": f"{method} is not allowed here", "details": []}
        body = json.dumps({"error": error}).encode()
        start_response(
            "405 Method Not Allowed",
            [("Allow", ", ".join(allowed)), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]


def _requests_per_thread(app_object) -> None:
    """Chalice keeps the request being handled in one attribute of the app (`app.current_request`): right for
    Lambda, which runs one request at a time per container, wrong for a server whose threads run several. A
    request read by a handler while another thread's request arrived would be the other one (a POST saw a
    concurrent GET's empty body). Here the app's current request and Lambda context are per thread."""
    cls = type(app_object)
    if getattr(cls, "jobplane_per_thread", False):
        return
    state = threading.local()

    def attribute(name):
        return property(lambda _app: getattr(state, name, None), lambda _app, value: setattr(state, name, value))

    per_thread = type(
        cls.__name__,
        (cls,),
        {
            "jobplane_per_thread": True,
            "current_request": attribute("current_request"),
            "lambda_context": attribute("lambda_context"),
        },
    )
    for name in ("current_request", "lambda_context"):
        app_object.__dict__.pop(name, None)
    app_object.__class__ = per_thread


def _status_line(code: int) -> str:
    from http import HTTPStatus

    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


def port_in_use(exc: BaseException) -> bool:
    import errno

    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE
