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
