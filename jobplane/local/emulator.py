"""The embedded AWS: a moto server whose requests are applied one at a time, like DynamoDB's per-item writes."""

from __future__ import annotations

import logging
import threading

from moto.moto_server.threaded_moto_server import ThreadedMotoServer


class _Serialized:
    """WSGI middleware: moto checks a condition and writes without a lock, so two concurrent
    conditional writes could both pass. DynamoDB applies each one atomically; so do we.
    Only DynamoDB calls take the lock: an SQS long poll must not stall everything else."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return self.app(environ, start_response)
        with self.lock:
            # The body is built inside the lock: moto may produce it lazily.
            return list(self.app(environ, start_response))


class SerializedMotoServer(ThreadedMotoServer):
    def _server_entry(self) -> None:
        from moto.moto_server.threaded_moto_server import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
            make_server,
        )

        app = _Serialized(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


def start_moto(host: str = "127.0.0.1", port: int = 0) -> tuple[SerializedMotoServer, str]:
    """Start the emulator on a free loopback port; returns (server, endpoint URL).

    The SDKs in this process get placeholder credentials: a process that runs the emulator never
    signs anything with a real account's keys.
    """
    import os

    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "emulator",
            "AWS_SECRET_ACCESS_KEY": "emulator",
            "AWS_SESSION_TOKEN": "emulator",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request drowns everything
    server = SerializedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    return server, f"http://{bound_host}:{bound_port}"
