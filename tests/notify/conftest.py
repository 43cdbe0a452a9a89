"""A real local HTTP server standing in for Slack (webhooks, response_url, the Web API); the jobs its messages
describe are tests/factories.py's running_job, finished_job and failed_job."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest


class FakeSlack:
    """Records every request (path, headers, parsed body) and answers from a per-path script."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.scripts: dict[str, deque] = {}
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if "json" in (self.headers.get("Content-Type") or ""):
                    body = json.loads(raw or b"null")
                else:
                    body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    script = fake.scripts.get(self.path)
                    answer = script.popleft() if script else fake.default(self.path)
                    fake.arrived.notify_all()
                status, payload, headers = answer[:3]
                if len(answer) > 3:
                    time.sleep(answer[3])  # a slow Slack
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(payload, bytes) else "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @staticmethod
    def default(path: str):
        if path.startswith("/api/"):
            return 200, {"ok": True, "channel": "C1", "ts": "1715000000.000100"}, {}
        return 200, b"ok", {}

    def script(self, path: str, *answers) -> None:
        """Answer the next requests to `path` with (status, body, headers[, delay]) in order, then the default."""
        self.scripts[path] = deque(answers)

    def bodies(self, path: str) -> list:
        with self.lock:
            return [r["body"] for r in self.requests if r["path"] == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 5.0) -> list:
        with self.arrived:
            self.arrived.wait_for(lambda: len([r for r in self.requests if r["path"] == path]) >= count, timeout)
        return self.bodies(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slack():
    fake = FakeSlack()
    yield fake
    fake.close()


@pytest.fixture
def slack_store():
    """The in-memory Slack store (user mappings and notification markers)."""
    from chalicelib.store.slack import InMemorySlackStore

    return InMemorySlackStore()
