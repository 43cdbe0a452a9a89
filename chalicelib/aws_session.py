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

            session = botocore.session.Session()
            session.register_component("data_loader", _loader(session.get_config_variable("data_path")))
            _session.append(session)
        return _session[0]


def _loader(data_path: str | None):
    """botocore's Loader, on the same search path (AWS_DATA_PATH included), without two cold-start costs.

    - botocore parses every JSON model into OrderedDicts (`object_pairs_hook`), 2-3x slower than dicts, which
      keep insertion order as well: endpoints.json alone (1.2 MB) is ~35 ms of a first client that way.
    - `load_service_model` first lists every service directory (~450, each listed and stat'ed: ~13 ms per
      model type) only to check the name; the latest version's directory is found without that. A name
      botocore does not know goes to botocore's own method, so its UnknownServiceError is unchanged.
    """
    import gzip
    import json
    import os

    from botocore.exceptions import DataNotFoundError
    from botocore.loaders import Loader, instance_cache

    openers = ((".json", open), (".json.gz", gzip.open))

    class FileLoader:
        """botocore.loaders.JSONFileLoader's interface and files (.json, then .json.gz), decoded as dicts."""

        def exists(self, file_path: str) -> bool:
            return any(os.path.isfile(file_path + ext) for ext, _ in openers)

        def load_file(self, file_path: str):
            for ext, opener in openers:
                if os.path.isfile(file_path + ext):
                    with opener(file_path + ext, "rb") as fp:
                        return json.loads(fp.read().decode("utf-8"))
            return None

    class DirectLoader(Loader):
        FILE_LOADER_CLASS = FileLoader

        @instance_cache
        def load_service_model(self, service_name, type_name, api_version=None):
            if api_version is not None:
                return super().load_service_model(service_name, type_name, api_version)
            try:
                api_version = self.determine_latest_version(service_name, type_name)
            except DataNotFoundError:
                return super().load_service_model(service_name, type_name)
            model = self.load_data(os.path.join(service_name, api_version, type_name))
            self._extras_processor.process(model, self._find_extras(service_name, type_name, api_version))
            return model

    paths = None
    if data_path:
        paths = [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]
    return DirectLoader(extra_search_paths=paths)


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
