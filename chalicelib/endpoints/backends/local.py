"""The `local` endpoint backend: one real model-server process per endpoint version on a free loopback port.

Each endpoint has a folder (`<state>/endpoints/jpe-<id>/`); each version a subfolder `v<N>/` with the model's
files, the code, the server's state file (READY with its port, or FAILED with the reason) and its log. An
update starts the new version beside the old one, which keeps serving until the new one is READY."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from chalicelib.backends import Cloud
from chalicelib.endpoints.backends import EndpointBackendDescriptor
from chalicelib.endpoints.backends.base import Deployment, EndpointBackend, EndpointObservation, EndpointStatus
from chalicelib.errors import BackendError, BackendValidationError, UnsupportedError

DELETED_MARK = "deleted"
TIMEOUT_SECONDS = 60

LOCAL = EndpointBackendDescriptor(
    name="local",
    cloud=Cloud.LOCAL,
    enabled_with="local",
    implementation="chalicelib.endpoints.backends.local:LocalEndpointBackend",
    rank=90,
    role="a model-server process on this machine",
    gpus=False,
    model_schemes=("file://",),
    price_table="local",
)


class ModelError(BackendError):
    """The model server answered an error: the handler raised, or refused the request."""

    CODE = "model_error"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process is not alive
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


class LocalEndpointBackend(EndpointBackend):
    name = "local"
    descriptor = LOCAL
    max_payload_bytes = 6 * 1024 * 1024

    def __init__(self, settings) -> None:
        self.settings = settings
        self.root = Path(settings.local_state_dir).resolve().parent / "endpoints"

    # --- folders -------------------------------------------------------------------------
    def _folder(self, native_id: str) -> Path:
        if not native_id.startswith("jpe-") or "/" in native_id or ".." in native_id:
            raise BackendError(f"{native_id!r} is not a local endpoint")
        return self.root / native_id

    def _versions(self, folder: Path) -> list[tuple[int, Path]]:
        found = []
        for child in folder.glob("v*"):
            if child.is_dir() and child.name[1:].isdigit():
                found.append((int(child.name[1:]), child))
        return sorted(found)

    @staticmethod
    def _state(version: Path) -> dict[str, Any] | None:
        try:
            return json.loads((version / "state.json").read_text())
        except (OSError, ValueError):
            return None

    # --- staging -------------------------------------------------------------------------
    def _s3(self):
        from chalicelib import aws_session

        return aws_session.client("s3", self.settings.region, self.settings.aws_endpoint_url)

    def _fetch_folder(self, uri: str, dest: Path) -> Path:
        """A model's files: a file:// folder is used where it is; s3:// is downloaded into `dest`."""
        if uri.startswith("file://"):
            path = Path(uri[len("file://") :])
            if not path.is_dir():
                raise BackendValidationError(f"model folder {path} does not exist")
            return path
        if not uri.startswith("s3://"):
            raise UnsupportedError(f"the local backend reads s3:// and file:// models, not {uri}")
        from chalicelib.backends.local.staging import StagingError, download_prefix

        prefix = uri if uri.endswith("/") else uri + "/"
        dest.mkdir(parents=True, exist_ok=True)
        try:
            count = download_prefix(self._s3(), prefix, dest)
        except StagingError as exc:
            raise BackendValidationError(str(exc)) from None
        if count == 0:
            raise BackendValidationError(f"no model files under {prefix}")
        return dest

    def _fetch_code(self, uri: str, dest: Path) -> Path:
        """A packed workdir (.tar.gz on s3:// or file://) unpacked into `dest`."""
        from chalicelib.backends.local.staging import StagingError, split_uri, unpack

        dest.mkdir(parents=True, exist_ok=True)
        archive = dest.with_suffix(".tar.gz")
        try:
            if uri.startswith("file://"):
                archive = Path(uri[len("file://") :])
            else:
                bucket, key = split_uri(uri)
                archive.write_bytes(self._s3().get_object(Bucket=bucket, Key=key)["Body"].read())
            unpack(archive, dest)
        except (StagingError, OSError) as exc:
            raise BackendValidationError(f"code {uri}: {exc}") from None
        return dest

    def _find_handler(self, deployment: Deployment, version: Path, model_dir: Path) -> Path:
        """The handler in the endpoint's code, else among the model's files, else in the training job's code."""
        places: list[tuple[str, Path]] = []
        if deployment.code_uri:
            places.append((deployment.code_uri, self._fetch_code(deployment.code_uri, version / "code")))
        places.append((deployment.model_uri, model_dir))
        if deployment.fallback_code_uri and not deployment.code_uri:
            places.append(
                (deployment.fallback_code_uri, self._fetch_code(deployment.fallback_code_uri, version / "job-code"))
            )
        for _, folder in places:
            candidate = (folder / deployment.handler).resolve()
            if candidate.is_file() and candidate.is_relative_to(folder.resolve()):
                return candidate
        where = ", ".join(uri for uri, _ in places)
        raise BackendValidationError(
            f"handler {deployment.handler} is in none of: {where}",
            details=[{"field": "handler", "message": f"not found in {where}"}],
        )

    # --- the interface -------------------------------------------------------------------
    def validate(self, deployment: Deployment) -> None:
        if deployment.resources.gpus:
            raise UnsupportedError(
                "the local model server runs on this machine's CPU; use sagemaker or vertex for GPUs",
                [{"field": "resources.gpus", "message": "0 on the local backend"}],
            )

    def create(self, deployment: Deployment) -> str:
        native_id = deployment.native_name
        self._start(native_id, deployment)
        return native_id

    def update(self, native_id: str, deployment: Deployment) -> None:
        self._start(native_id, deployment)

    def _start(self, native_id: str, deployment: Deployment) -> None:
        folder = self._folder(native_id)
        version = folder / f"v{deployment.version}"
        if self._state(version) is not None or (version / "pid").exists():
            return  # this version was started already: a retried call starts no second server
        version.mkdir(parents=True, exist_ok=True)
        model_dir = self._fetch_folder(deployment.model_uri, version / "model")
        handler = self._find_handler(deployment, version, model_dir)
        log = open(version / "server.log", "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            proc = subprocess.Popen(  # noqa: S603 - a fixed argument list, nothing passes through a shell
                [
                    sys.executable,
                    "-m",
                    "chalicelib.endpoints.server",
                    *("--handler", str(handler), "--model-dir", str(model_dir)),
                    *("--state", str(version / "state.json")),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=str(handler.parent),
                env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
            )
        finally:
            log.close()
        (version / "pid").write_text(str(proc.pid))

    def _pid(self, version: Path) -> int | None:
        try:
            return int((version / "pid").read_text())
        except (OSError, ValueError):
            return None

    def _stop(self, version: Path) -> None:
        pid = self._pid(version)
        if pid is not None and pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def describe(self, native_id: str, operation: str | None = None) -> EndpointObservation | None:  # noqa: ARG002
        folder = self._folder(native_id)
        if not folder.is_dir():
            return None
        if (folder / DELETED_MARK).exists():
            return EndpointObservation(EndpointStatus.DELETED, "Deleted", native_id, reason="model server stopped")
        versions = self._versions(folder)
        if not versions:
            return None
        number, latest = versions[-1]
        serving = self._serving(folder)
        state = self._state(latest)
        if state is None:
            pid = self._pid(latest)
            if pid is not None and not pid_alive(pid):
                return self._failed(native_id, latest, "the model server exited before it was ready")
            if serving is not None:
                return EndpointObservation(EndpointStatus.UPDATING, "Starting", native_id, url=serving[1]["url"])
            return EndpointObservation(EndpointStatus.CREATING, "Starting", native_id)
        if state["state"] == "FAILED":
            return self._failed(native_id, latest, state.get("reason") or "the model server failed")
        if not pid_alive(int(state["pid"])):
            return self._failed(native_id, latest, "the model server process is gone")
        for older, path in versions[:-1]:  # the new version serves: the old ones stop now
            if older < number:
                self._stop(path)
        return EndpointObservation(
            EndpointStatus.IN_SERVICE, f"InService v{number}", native_id, url=state["url"], reason=f"serving v{number}"
        )

    def _failed(self, native_id: str, version: Path, reason: str) -> EndpointObservation:
        tail = ""
        try:
            lines = (version / "server.log").read_text(errors="replace").strip().splitlines()
            tail = lines[-1] if lines else ""
        except OSError:
            pass
        if tail and tail not in reason:
            reason = f"{reason} ({tail})"
        return EndpointObservation(EndpointStatus.FAILED, "Failed", native_id, reason=reason)

    def _serving(self, folder: Path) -> tuple[int, dict[str, Any]] | None:
        """The newest version whose server is READY and alive."""
        for number, path in reversed(self._versions(folder)):
            state = self._state(path)
            if state and state.get("state") == "READY" and pid_alive(int(state["pid"])):
                return number, state
        return None

    def delete(self, native_id: str) -> None:
        folder = self._folder(native_id)
        if not folder.is_dir():
            return
        for _, path in self._versions(folder):
            self._stop(path)
        (folder / DELETED_MARK).write_text("")

    def _url(self, native_id: str) -> str:
        serving = self._serving(self._folder(native_id))
        if serving is None:
            raise BackendError(f"endpoint {native_id} has no model server running", retryable=True)
        return serving[1]["url"]

    def invoke(self, native_id: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - a loopback http:// URL this backend wrote
            self._url(native_id) + "/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:  # noqa: S310
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
                message, details = error["message"], error.get("details") or []
            except (ValueError, KeyError, TypeError):
                message, details = f"the model server answered HTTP {exc.code}", []
            raise ModelError(f"the model answered an error: {message}", details=details) from None
        except (urllib.error.URLError, OSError) as exc:
            raise BackendError(f"the model server of {native_id} did not answer: {exc}", retryable=True) from None

    def invocations_since(self, native_id: str, since: datetime) -> int:
        url = f"{self._url(native_id)}/stats?since={urllib.request.quote(since.isoformat())}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - a loopback URL this backend wrote
                return int(json.loads(answer.read())["invocations"])
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            raise BackendError(f"the model server of {native_id} did not report its count: {exc}") from None
