"""The local stack's HTTP server: a deep backlog, 413 before the body, slow headers cut off."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from jobplane.local import server as server_module
from jobplane.local.server import Server

# Every request says Connection: close, so a reply ends when the server closes.
POST = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"


def _echo(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def served(monkeypatch):
    monkeypatch.setattr(server_module._Channel, "header_timeout", 0.5)
    server = Server(_echo, "127.0.0.1", 0, threads=4, max_body=1000, name="test")
    server.start()
    yield server.server_address
    server.shutdown()


def _exchange(address, data: bytes, pause: float = 0.0, rest: bytes = b"") -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        if pause:
            time.sleep(pause)
            try:
                sock.sendall(rest)
            except OSError:
                return b""
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_can_take_a_body_at_the_limit_and_refuses_one_past_it_before_reading(served):
    at_limit = b"x" * 1000
    ok = _exchange(served, POST + b"Content-Length: 1000\r\n\r\n" + at_limit)
    assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(at_limit)
    refused = _exchange(served, POST + b"Content-Length: 1001\r\n\r\n")  # no body sent
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_a_client_that_trickles_its_headers_is_cut_off(served):
    answer = _exchange(served, GET, pause=1.0, rest=b"X-Slow: 1\r\n\r\n")
    assert not answer.startswith(b"HTTP/1.1 200")
    quick = _exchange(served, POST + b"Content-Length: 5\r\n\r\nhello")
    assert quick.startswith(b"HTTP/1.1 200")


def test_a_burst_of_connections_waits_in_the_backlog_instead_of_being_reset(served):
    outcomes: list[bytes] = []

    def one():
        outcomes.append(_exchange(served, POST + b"Content-Length: 5\r\n\r\nhello")[:12])

    threads = [threading.Thread(target=one) for _ in range(300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [b"HTTP/1.1 200"] * 300


def test_concurrent_requests_each_see_their_own_body():
    """Chalice keeps the request in one attribute of the app; two requests handled at once by two threads
    must each read their own (a POST once read a concurrent GET's empty body)."""
    import io
    import json as json_module
    import threading

    from chalice import Chalice
    from chalice.config import Config

    from jobplane.local.server import ChaliceWSGI

    app = Chalice(app_name="per-thread")
    both_in = threading.Barrier(2, timeout=10)

    @app.route("/echo", methods=["POST"])
    def echo():
        app.current_request  # noqa: B018 - each request is set before its handler runs
        both_in.wait()  # the other thread's request has been set too by now
        return {"seen": app.current_request.json_body}

    wsgi = ChaliceWSGI(app, Config.create(chalice_stage="local", app_name="per-thread"))
    answers: dict[str, object] = {}

    def call(name: str) -> None:
        body = json_module.dumps({"from": name}).encode()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/echo",
            "REQUEST_URI": "/echo",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }
        answers[name] = json_module.loads(b"".join(wsgi(environ, lambda status, headers: None)))

    threads = [threading.Thread(target=call, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert answers == {"a": {"seen": {"from": "a"}}, "b": {"seen": {"from": "b"}}}
