"""One botocore session per container, shared by the stores, the AWS backends and the secrets reader."""

from __future__ import annotations

import threading
from typing import Any

# botocore clients are thread-safe, sessions are not: every client is created under this lock.
_lock = threading.RLock()
_session: list[Any] = []
_clients: dict[tuple, Any] = {}


def botocore_session():
    """This container's botocore session (its service descriptions are parsed once, whoever asks first)."""
    with _lock:
        if not _session:
            import botocore.session

            _session.append(botocore.session.Session())
        return _session[0]


def _config_key(config) -> tuple:
    if config is None:
        return ()
    return tuple(sorted((k, repr(v)) for k, v in config._user_provided_options.items()))


def client(service: str, region: str | None, endpoint_url: str | None = None, config=None):
    """A client of the shared session, made on first use and cached by its arguments."""
    key = (service, region, endpoint_url, _config_key(config))
    with _lock:
        if key not in _clients:
            _clients[key] = botocore_session().create_client(
                service, region_name=region, endpoint_url=endpoint_url, config=config
            )
        return _clients[key]


def standard_retries():
    """botocore's "standard" retry mode (throttling and transient errors retried with backoff)."""
    from botocore.config import Config

    return Config(retries={"mode": "standard"})


class SharedSession:
    """What pynamodb asks of a session (`create_client`), answered from the shared session.

    Each pynamodb connection (one per table) keeps a client of its own: a client's pool is sized for one
    table's threads, and one client for every table made 16 threads queue on 10 connections.
    """

    def create_client(self, *args, **kwargs):
        with _lock:
            return botocore_session().create_client(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(botocore_session(), name)


def reset() -> None:
    """Forget the session and its clients (tests that change credentials or endpoints in one process)."""
    with _lock:
        _session.clear()
        _clients.clear()
