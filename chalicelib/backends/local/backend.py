"""The `local` backend: each job runs as a real process on this machine (the local stack's compute)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pwd
import secrets
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from chalicelib.backends.agent import ExitState, parse_report
from chalicelib.backends.base import (
    ComputeBackend,
    Handle,
    LaunchResult,
    LogChunk,
    ManagedResource,
    Observation,
    Offset,
    PowerState,
    ResourceKind,
    bad_offset,
    job_env,
    last_lines,
    parse_native_name,
)
from chalicelib.backends.local.descriptors import EVENT_SOURCE, LOCAL
from chalicelib.backends.local.runner import node_log_name, sign_detail
from chalicelib.errors import BackendError, ConfigError, UnsupportedError, ValidationError
from chalicelib.jobs.contract import artifacts_uri, checkpoint_location, input_items, job_variables, node_variables
from chalicelib.jobs.model import FailureKind, JobStatus, parse_iso
from chalicelib.jobs.spec_types import JobSpec

EVENT_DETAIL_TYPE = "jobplane Local Job State Change"
# runner states before any exit report -> (status, failure kind); the report is the agent contract's
_STATES = {
    "RUNNING": (JobStatus.RUNNING, None),
    "LOST": (JobStatus.FAILED, FailureKind.BACKEND_ERROR),
}


MASTER_ADDR = "127.0.0.1"  # a multi-node job's nodes share this machine


log = logging.getLogger("jobplane.local")
# What the runner needs of the stack's environment; the rest (AWS keys, endpoints, JOBPLANE_*) stays behind.
_RUNNER_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "JOBPLANE_KILL_GRACE_SECONDS")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class LocalBackend(ComputeBackend):
    descriptor = LOCAL
    named_by_us = True  # a job's folder is named after it

    def _validate_impl(self, spec: JobSpec) -> None:
        # The runner reads and writes the stage's object store, which is S3 (the local stack's embedded one).
        locations = [("code_uri", spec.code_uri), ("outputs", spec.outputs), ("checkpoint_uri", spec.checkpoint_uri)]
        locations += [(f"inputs.{name}", uri) for name, uri in spec.inputs.items()]
        for name, uri in locations:
            if uri is not None and not self.settings.aws_endpoint_url:
                raise UnsupportedError(
                    f"{name}: this local backend has no object store to stage from (AWS_ENDPOINT_URL is not set; "
                    "`jobplane local up` sets it to its embedded S3)",
                    [{"field": name, "message": "only where the local stack's embedded S3 runs"}],
                )
            if uri is not None and not uri.startswith("s3://"):
                raise UnsupportedError(
                    f"{name}: the local backend stages s3:// locations only, got {uri!r}",
                    [{"field": name, "message": "an s3:// URI (the local stack's embedded S3)"}],
                )
        allowed = self.settings.local_allowed_programs
        program = Path(spec.command[0]).name
        if allowed and program not in allowed:
            raise UnsupportedError(
                f"the local backend here runs only {', '.join(allowed)}",
                [{"field": "command[0]", "message": f"one of {', '.join(allowed)} (JOBPLANE_LOCAL_ALLOWED_PROGRAMS)"}],
            )

    def job_dir(self, native_name: str) -> Path:
        if parse_native_name(native_name) is None:
            raise BackendError(f"not a jobplane native name: {native_name!r}")
        return Path(self.settings.local_state_dir).resolve() / native_name

    def hourly_quote(self, spec, region, usage=None):
        # One machine, priced by the deployment (JOBPLANE_LOCAL_PRICE_PER_HOUR, default 0: free).
        return "local machine", self.catalog.price("local", "local", "local")

    def _launch_request_impl(self, job, handle: Handle) -> dict[str, Any]:
        # What the runner is told (its spec.json), without making the job's folder or starting it.
        spec = job.spec
        folder = self.job_dir(handle.native_name)
        request = {
            "folder": str(folder),
            "command": list(spec.command),
            "setup": [list(step) for step in spec.setup],
            "env": {**job_env(spec, handle)},
            "code": {"uri": spec.code_uri, "sha256": spec.code_sha256} if spec.code_uri else None,
            "inputs": [[name, uri] for name, uri, _ in input_items(spec)],
            "max_runtime_seconds": spec.max_runtime_minutes * 60,
        }
        return {"service": "local", "calls": [{"operation": "start runner", "request": request}]}

    def _launch_impl(self, job, handle: Handle) -> LaunchResult:
        folder = self.job_dir(handle.native_name)
        user = self._run_as()
        folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if user:
            # The job's user passes through to its own folders (the stack's files here are all 0600).
            os.chmod(folder.parent, 0o711)  # noqa: S103 - search only
        folder.mkdir(exist_ok=True, mode=0o700)
        try:
            # Exclusive create: a retried or concurrent launch of the same attempt starts nothing new.
            fd = os.open(folder / "launch.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return LaunchResult(handle.native_name, "AlreadyLaunched")
        os.close(fd)
        spec = job.spec
        # The job sees the stack's Python first on PATH, its own env, and nothing of the control plane's.
        base_env = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "TZ") if k in os.environ}
        path = os.environ.get("PATH", "/usr/bin:/bin")
        base_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"
        # Jobs run in their own folder: the project's modules (`python -m examples.x`) are found by import.
        base_env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])
        work = folder / "work"  # the job's current folder: never the repository
        outputs, checkpoints, inputs = folder / "outputs", folder / "checkpoints", folder / "inputs"
        for own in (work, outputs, checkpoints):
            own.mkdir(exist_ok=True, mode=0o700)
            if user:
                os.chown(own, user.pw_uid, user.pw_gid)
        if user:
            base_env.update(HOME=str(work), USER=user.pw_name, LOGNAME=user.pw_name)
            # The job's user may pass through its folder to its own (every file of the stack's there is 0600).
            os.chmod(folder, 0o711)  # noqa: S103 - search only: nothing in it can be listed or read
        bucket = self.settings.artifacts_bucket
        variables = job_variables(
            handle.job_id,
            handle.attempt,
            input_dir=str(inputs),
            output_dir=str(outputs),
            checkpoint_dir=str(checkpoints),
        )
        staging = {
            "code": {"uri": spec.code_uri, "sha256": spec.code_sha256} if spec.code_uri else None,
            "inputs": [[name, uri] for name, uri, _ in input_items(spec)],
            "checkpoint_uri": checkpoint_location(spec, handle.job_id, bucket),
            "artifacts_uri": artifacts_uri(spec, handle.job_id, bucket),
            "checkpoint_seconds": self.settings.local_checkpoint_seconds,
            "dirs": {
                "work": str(work),
                "inputs": str(inputs),
                "outputs": str(outputs),
                "checkpoints": str(checkpoints),
            },
            "endpoint_url": self.settings.aws_endpoint_url,
            "endpoint_file": str(self.storage_endpoint_file()),
        }
        runner_spec = {
            "job_id": handle.job_id,
            "native_id": handle.native_name,  # the runner's report names the folder, which is our name
            "attempt": handle.attempt,
            "command": list(spec.command),
            "setup": [list(step) for step in spec.setup],
            "env": {
                **base_env,
                "PYTHONUNBUFFERED": "1",
                **job_env(spec, handle),
                **variables,
            },
            # Without an object store (no embedded S3: tests of the runner alone) the folders stay local.
            "staging": staging if self.settings.aws_endpoint_url else None,
            "cwd": str(work),
            "user": {"uid": user.pw_uid, "gid": user.pw_gid, "name": user.pw_name} if user else None,
            "max_runtime_seconds": spec.max_runtime_minutes * 60,
            "event_url": self.settings.local_event_url,
            "event_url_file": str(self.event_url_file()),
            "region": self.settings.region,
        }
        if spec.resources.nodes > 1:
            # Each node is a process of its own; the runner adds JOBPLANE_NODE_RANK to each one's env.
            runner_spec["nodes"] = spec.resources.nodes
            runner_spec["node_env"] = node_variables(spec, None, MASTER_ADDR, free_port())
        _write_private(folder / "spec.json", json.dumps(runner_spec))
        key = self.event_key(handle.native_name)
        runner_env = {k: os.environ[k] for k in _RUNNER_ENV if k in os.environ}
        with open(os.open(folder / "runner.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chalicelib.backends.local.runner", str(folder)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=runner_env,
                cwd=str(Path(__file__).resolve().parents[3]),
            )
        # The event key and the object store's credentials go over the pipe: in no file, no environment.
        handover = {"key": key.hex(), "storage": _storage_credentials()}
        proc.stdin.write(json.dumps(handover).encode())
        proc.stdin.close()
        _write_private(folder / "runner.pid", str(proc.pid))
        return LaunchResult(handle.native_name, "Started")

    def _run_as(self) -> pwd.struct_passwd | None:
        """The user jobs run as; None for the stack's own user."""
        return run_as_user(self.settings.local_run_as)

    def storage_endpoint_file(self) -> Path:
        """Where the stack writes its embedded S3's address at each start (runners it adopts read it there)."""
        return Path(self.settings.local_state_dir).resolve() / "aws-endpoint"

    def event_url_file(self) -> Path:
        return Path(self.settings.local_state_dir).resolve() / "event-url"

    def event_key(self, native_name: str) -> bytes:
        """The key a job's runner signs its events with: derived, so the stack stores no per-job secret."""
        return hmac.new(self.stack_key(), native_name.encode(), hashlib.sha256).digest()

    def stack_key(self) -> bytes:
        path = Path(self.settings.local_event_key_file)
        try:
            return bytes.fromhex(path.read_text().strip())
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:  # another launch made it first: use that one
            return bytes.fromhex(path.read_text().strip())
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())

    def _describe_impl(self, handle: Handle) -> Observation | None:
        folder = self.job_dir(handle.native_name)
        if not (folder / "launch.lock").exists():
            return None
        seen = self._from_report(handle, read_json(folder / "status.json"))
        if seen is not None:
            return seen
        runner = read_json(folder / "runner.json") or {}
        runner_pid = _read_pid(folder / "runner.pid")
        if runner_pid is not None and pid_alive(runner_pid):
            state = "RUNNING" if runner.get("pid") else "STARTING"
            if state == "STARTING":
                return Observation(JobStatus.LAUNCHING, "STARTING", handle.native_name, handle.job_id, handle.attempt)
            return self._observation(handle, {"state": "RUNNING", **runner})
        if runner_pid is None:
            return Observation(JobStatus.LAUNCHING, "STARTING", handle.native_name, handle.job_id, handle.attempt)
        return self._observation(handle, {"state": "LOST", "reason": "the local runner exited without an exit status"})

    def _from_report(self, handle: Handle, report: dict[str, Any] | None) -> Observation | None:
        seen = parse_report(report, job_id=handle.job_id, attempt=handle.attempt)
        return None if seen is None else replace(seen, native_id=handle.native_name)

    def _observation(self, handle: Handle, status: dict[str, Any]) -> Observation:
        state = status.get("state", "LOST")
        job_status, kind = _STATES.get(state, _STATES["LOST"])
        return Observation(
            status=job_status,
            native_status=state,
            native_id=handle.native_name,
            job_id=handle.job_id,
            attempt=handle.attempt,
            reason=status.get("reason", ""),
            failure_kind=kind,
            exit_code=status.get("exit_code"),
            at=parse_iso(status.get("at")),
            started_at=parse_iso(status.get("started_at")),
        )

    def _logs_impl(self, handle: Handle, offset: Offset, limit: int) -> LogChunk:
        if not isinstance(offset, int):
            raise bad_offset("a local job's log offset is a byte count: pass the next_offset it returned, or 0")
        folder = self.job_dir(handle.native_name)
        complete = (folder / "status.json").exists()
        try:
            with open(folder / "output.log", "rb") as fh:
                fh.seek(offset)
                data = fh.read(limit)
        except FileNotFoundError:
            data = b""
        return LogChunk(data.decode("utf-8", errors="replace"), offset + len(data), complete)

    def _node_logs_impl(self, handle: Handle, node: int, offset: Offset, limit: int) -> LogChunk:
        if not isinstance(offset, int):
            raise bad_offset("a local job's log offset is a byte count: pass the next_offset it returned, or 0")
        folder = self.job_dir(handle.native_name)
        spec = read_json(folder / "spec.json") or {}
        if spec.get("nodes", 1) == 1:
            return self._logs_impl(handle, offset, limit)  # one node: its output is the job's
        complete = (folder / "status.json").exists()
        try:
            with open(folder / node_log_name(node), "rb") as fh:
                fh.seek(offset)
                data = fh.read(limit)
        except FileNotFoundError:
            data = b""
        return LogChunk(data.decode("utf-8", errors="replace"), offset + len(data), complete)

    def _tail_impl(self, handle: Handle, max_lines: int, max_bytes: int) -> list[str] | None:
        # The log is a file: its end is read directly, however long it is.
        try:
            with open(self.job_dir(handle.native_name) / "output.log", "rb") as fh:
                start = max(fh.seek(0, os.SEEK_END) - max_bytes - 1, 0)
                fh.seek(start)
                data = fh.read()
        except FileNotFoundError:
            return []
        return last_lines(data.decode("utf-8", errors="replace"), max_lines, max_bytes, cut=start > 0)

    def _cancel_impl(self, handle: Handle) -> None:
        folder = self.job_dir(handle.native_name)
        if not folder.exists():
            return
        (folder / "cancel").touch()
        runner_pid = _read_pid(folder / "runner.pid")
        if runner_pid is not None and pid_alive(runner_pid):
            _signal(runner_pid, signal.SIGTERM)  # the runner stops the job's process group, then reports
            return
        # No runner to do it: stop the job's group directly (each node's, in a multi-node job).
        for job_pid in job_pids(read_json(folder / "runner.json")):
            _signal(-job_pid, signal.SIGKILL)

    # --- the reaper's view ----------------------------------------------------------------
    def _list_managed_impl(self) -> list[ManagedResource]:
        root = Path(self.settings.local_state_dir).resolve()
        found = []
        for folder in sorted(root.glob("jp-*")) if root.exists() else []:
            parsed = parse_native_name(folder.name)
            runner_pid = _read_pid(folder / "runner.pid")
            if parsed is None or runner_pid is None:
                continue
            running = _still_running(folder, runner_pid)
            started = (read_json(folder / "runner.json") or {}).get("at")
            found.append(
                ManagedResource(
                    backend=self.name,
                    resource_id=folder.name,
                    kind=ResourceKind.VM,
                    power=PowerState.RUNNING if running else PowerState.GONE,
                    state="running" if running else "ended",
                    stage=self.settings.stage,
                    native_name=folder.name,
                    job_id=parsed[0],
                    attempt=parsed[1],
                    launched_at=parse_iso(started),
                )
            )
        return found

    def _stop_resource_impl(self, resource: ManagedResource, reason: str) -> None:
        folder = self.job_dir(resource.resource_id)
        (folder / "stopped_by.json").write_text(json.dumps({"by": "jobplane", "reason": reason}))
        self._cancel_impl(Handle(resource.job_id or "", resource.resource_id, resource.attempt or 1))

    def _release_impl(self, handle: Handle, reason: str) -> None:
        folder = self.job_dir(handle.native_name)
        runner_pid = _read_pid(folder / "runner.pid")
        if runner_pid is None or not _still_running(folder, runner_pid):
            return  # it ended by itself, as it should
        self._stop_resource_impl(
            ManagedResource(
                self.name,
                handle.native_name,
                ResourceKind.VM,
                "running",
                PowerState.RUNNING,
                self.settings.stage,
                handle.native_name,
                handle.job_id,
                handle.attempt,
            ),
            reason,
        )

    def _parse_event_impl(self, raw: dict[str, Any]) -> Observation | None:
        if raw.get("source") != EVENT_SOURCE or raw.get("detail-type") != EVENT_DETAIL_TYPE:
            return None
        detail = raw.get("detail") or {}
        if not isinstance(detail, dict):
            raise ValidationError("detail: must be a JSON object", [{"field": "detail", "message": "an object"}])
        # The running event names the folder as native_id; the exit report as native_name.
        native = detail.get("native_name") or detail.get("native_id")
        parsed = parse_native_name(native if isinstance(native, str) else None)
        if parsed is None:
            return None
        job_id, attempt = parsed
        signature = detail.get("signature")
        if not isinstance(signature, str) or not signature:
            raise ValidationError(
                f"detail.signature: missing; events for {native} must be signed with the key its runner was given",
                [{"field": "detail.signature", "message": "required"}],
            )
        if not hmac.compare_digest(signature, sign_detail(self.event_key(native), detail)):
            raise ValidationError(
                f"detail.signature: does not match {native}'s key; the event was refused and changed nothing",
                [{"field": "detail.signature", "message": "signed with this job's key"}],
            )
        state = detail.get("state")
        if not isinstance(state, str):
            raise ValidationError("detail.state: must be a string", [{"field": "detail.state", "message": "a string"}])
        if state != "RUNNING" and state not in {s.value for s in ExitState}:
            # Only the stack concludes LOST; a state the runner never sends is noted, not guessed at.
            log.warning("%s: unknown local state %r recorded and ignored", native, state)
            return None
        status = {k: v for k, v in detail.items() if k != "signature"}
        status.setdefault("at", raw.get("time"))
        for name in ("at", "started_at"):
            if status.get(name) is not None:
                try:
                    parse_iso(status[name])
                except (TypeError, ValueError):
                    raise ValidationError(
                        f"detail.{name}: not an ISO 8601 time: {status[name]!r}",
                        [{"field": f"detail.{name}", "message": "an ISO 8601 UTC time"}],
                    ) from None
        handle = Handle(job_id, native, attempt)
        if state == "RUNNING":
            return self._observation(handle, status)
        return self._from_report(handle, status)


def run_as_user(setting: str | None) -> pwd.struct_passwd | None:
    """Who the stack's jobs (local processes, the fake VMs of ec2 jobs) run as; None for the stack's own user."""
    name = setting or ("nobody" if os.geteuid() == 0 else "self")
    if name == "self":
        return None
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"JOBPLANE_LOCAL_RUN_AS: no user {name!r} on this machine (or 'self')") from None
    if user.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise ConfigError(f"JOBPLANE_LOCAL_RUN_AS: only a stack run as root can run jobs as {name!r}")
    return user


def _storage_credentials() -> dict[str, str | None]:
    """The control plane's own AWS credentials, as its SDK resolves them, for the runner's staging only."""
    from chalicelib import aws_session

    found = aws_session.botocore_session().get_credentials()
    if found is None:
        return {}
    frozen = found.get_frozen_credentials()
    return {"access_key": frozen.access_key, "secret_key": frozen.secret_key, "token": frozen.token}


def _still_running(folder: Path, runner_pid: int) -> bool:
    """True while the job has no exit status and its runner or, when the runner died, its process lives."""
    if (folder / "status.json").exists():
        return False
    # One node still alive is a partial group still running (and billing): not ended.
    return pid_alive(runner_pid) or any(pid_alive(pid) for pid in job_pids(read_json(folder / "runner.json")))


def job_pids(runner: dict[str, Any] | None) -> list[int]:
    """The job's process (group) ids the runner recorded: every node's in a multi-node job, else the one."""
    runner = runner or {}
    pids = runner.get("pids") or ([runner["pid"]] if runner.get("pid") else [])
    return [int(pid) for pid in pids if isinstance(pid, int) and pid > 0]


def free_port() -> int:
    """A TCP port free on this machine now, for a multi-node job's master node to listen on."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((MASTER_ADDR, 0))
        return sock.getsockname()[1]


def _write_private(path: Path, text: str) -> None:
    with os.fdopen(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(text)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _signal(pid: int, sig: int) -> None:
    try:
        if pid < 0:
            os.killpg(-pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
