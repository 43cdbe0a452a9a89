"""Supervises one local job: its own process group, log capture, max runtime, exit status, events."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from chalicelib.backends.agent import (
    SIGKILL_EXIT,
    TIMEOUT_EXIT,
    ExitState,
    StopCause,
    exit_reason,
    make_report,
    shell_exit_code,
)

KILL_GRACE_SECONDS = float(os.environ.get("JOBPLANE_KILL_GRACE_SECONDS", "10"))
NODE_RANK = "JOBPLANE_NODE_RANK"  # chalicelib.jobs.contract's name (the runner imports nothing it need not)


def node_log_name(rank: int) -> str:
    """The file one node's output of a multi-node job is in (output.log has every node's, each line marked)."""
    return f"node-{rank}.log"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    with os.fdopen(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(json.dumps(data))
    os.replace(tmp, path)  # atomic: a reader never sees half a status


def _report(spec: dict, exit_code: int | None, stopped_by: StopCause | None, started_at: str | None, reason: str = ""):
    """The exit report (chalicelib/backends/agent.py) and `at`, the time the final event's detail needs."""
    report = make_report(
        job_id=spec["job_id"],
        attempt=spec["attempt"],
        exit_code=exit_code,
        stopped_by=stopped_by,
        started_at=started_at,
        finished_at=_now(),
        max_runtime_seconds=spec["max_runtime_seconds"],
        reason=reason,
    )
    return {**report, "at": report["finished_at"]}


def sign_detail(key: bytes, detail: dict) -> str:
    """HMAC-SHA256 of the detail's canonical JSON (every member but the signature itself)."""
    unsigned = {k: v for k, v in detail.items() if k != "signature"}
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()
    return "v1=" + hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _current_url(url: str | None, url_file: str | None) -> str | None:
    # A restarted stack serves its functions on a new port and writes it here: reports reach it.
    if url_file:
        try:
            return Path(url_file).read_text().strip() or url
        except OSError:
            pass
    return url


def post_event(
    url: str | None, region: str, detail: dict, attempts: int = 8, key: bytes | None = None, url_file: str | None = None
) -> bool:
    """Deliver a state change as an EventBridge-shaped event to the function endpoint, signed with the job's key."""
    import urllib.request

    if key is not None:
        detail = {**detail, "signature": sign_detail(key, detail)}

    event = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "jobplane Local Job State Change",
        "source": "jobplane.local",
        "account": "000000000000",
        "time": detail["at"][:19] + "Z",
        "region": region,
        "resources": [],
        "detail": detail,
    }
    body = json.dumps(event).encode()
    delay = 0.2
    for _ in range(attempts):
        target = _current_url(url, url_file)
        if not target or not target.startswith(("http://", "https://")):
            return False
        try:
            req = urllib.request.Request(target, data=body, headers={"Content-Type": "application/json"})  # noqa: S310
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - http(s) checked above
                if resp.status < 300:
                    return True
        except OSError:
            pass
        time.sleep(delay)
        delay = min(delay * 2, 5)
    return False  # reconcile reads status.json and heals the missed event


def _stop_group(pgid: int, proc: subprocess.Popen) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop_groups(procs: list[subprocess.Popen]) -> None:
    """Stop every node's process group together: TERM to all, one grace period, then KILL to all."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left in each group goes too
        except ProcessLookupError:
            pass
        proc.wait()


def _read_handover() -> tuple[bytes | None, dict]:
    """What the stack hands over a pipe, so it is in no file and no environment the job can see: the job's
    event key and the object store's credentials (JSON), or the key alone (hex, as older stacks send it)."""
    if sys.stdin is None or sys.stdin.isatty():
        return None, {}
    raw = sys.stdin.buffer.read().strip()
    if raw.startswith(b"{"):
        data = json.loads(raw)
        key = data.get("key")
        return (bytes.fromhex(key) if key else None), data.get("storage") or {}
    return (bytes.fromhex(raw.decode()) if raw else None), {}


class _Job:
    """One attempt's processes (each setup step, then the command), supervised one at a time."""

    def __init__(self, folder: Path, spec: dict, log, report) -> None:
        self.folder = folder
        self.spec = spec
        self.log = log
        self.report = report
        self.stop_requested = False
        self.running: dict | None = None
        self.sender: threading.Thread | None = None
        self.deadline: float | None = None
        # The log is written by the node readers of a multi-node job as well: one line at a time.
        self.log_lock = threading.Lock()
        user = spec.get("user") or {}
        self.as_user = {"user": user["uid"], "group": user["gid"], "extra_groups": []} if user else {}

    def say(self, line: str) -> None:
        """A line of jobplane's own in the job's log (what was staged, why it stopped)."""
        with self.log_lock:
            self.log.write(f"jobplane: {line}\n".encode())
            self.log.flush()

    def cause(self) -> StopCause | None:
        # A cancel request leaves its file before the TERM; a TERM without one is the machine going away.
        if (self.folder / "cancel").exists():
            return StopCause.CANCEL
        if self.stop_requested:
            return StopCause.INTERRUPT
        if self.deadline is not None and time.monotonic() > self.deadline:
            return StopCause.TIMEOUT
        return None

    def _mark_running(self, pids: list[int]) -> None:
        base = {"job_id": self.spec["job_id"], "native_id": self.spec["native_id"], "attempt": self.spec["attempt"]}
        if self.running is None:
            self.deadline = time.monotonic() + self.spec["max_runtime_seconds"]
            reason = "process started" if len(pids) == 1 else f"{len(pids)} node processes started"
            self.running = {**base, "state": "RUNNING", "pid": pids[0], "at": _now(), "reason": reason}
            _write_json(self.folder / "runner.json", {**self.running, "pids": pids})
            # Delivery retries for a long while when the endpoint is down; cancel and max runtime must not wait.
            self.sender = threading.Thread(target=self.report, args=(self.running,), daemon=True)
            self.sender.start()
        else:  # the next step: a stack without its runner stops these process groups
            _write_json(self.folder / "runner.json", {**self.running, "pid": pids[0], "pids": pids})

    def _copy_node_output(self, rank: int, stream, node_log) -> None:
        """One node's output to its own log and, each line marked with the node, to the merged one."""
        mark = f"[node {rank}] ".encode()
        for line in iter(stream.readline, b""):
            node_log.write(line)
            node_log.flush()
            with self.log_lock:
                self.log.write(mark + (line if line.endswith(b"\n") else line + b"\n"))
                self.log.flush()
        node_log.close()

    def supervise_nodes(self, argv: list[str], nodes: int) -> tuple[int | None, StopCause | None, str]:
        """Run the command as `nodes` processes, each with its JOBPLANE_NODE_RANK, until all succeed, one
        fails (the others are stopped then: no partial group keeps running) or the job is stopped.
        (exit code in shell terms, why it was stopped, the reason naming the node that failed)."""
        procs: list[subprocess.Popen] = []
        readers: list[threading.Thread] = []
        try:
            for rank in range(nodes):
                node_log = os.fdopen(
                    os.open(self.folder / node_log_name(rank), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600), "ab"
                )
                try:
                    proc = subprocess.Popen(
                        argv,
                        cwd=self.spec["cwd"],
                        env={**self.spec["env"], **self.spec.get("node_env", {}), NODE_RANK: str(rank)},
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        close_fds=True,
                        **self.as_user,
                    )
                except OSError:
                    node_log.close()
                    raise
                procs.append(proc)
                reader = threading.Thread(
                    target=self._copy_node_output, args=(rank, proc.stdout, node_log), daemon=True
                )
                reader.start()
                readers.append(reader)
        except OSError as exc:
            _stop_groups(procs)
            return 127, None, f"could not start {argv[0]!r} on node {len(procs)}: {exc.strerror or exc}"
        self._mark_running([p.pid for p in procs])
        # Each node's exit is recorded as it happens, so the node that failed first is the one named (the
        # others often fail a moment later, when their peer's connection drops).
        exits: list[tuple[int, int]] = []
        changed = threading.Event()

        def wait_for(rank: int, proc: subprocess.Popen) -> None:
            code = proc.wait()
            exits.append((rank, code))
            changed.set()

        for rank, proc in enumerate(procs):
            threading.Thread(target=wait_for, args=(rank, proc), daemon=True).start()
        failed: tuple[int, int] | None = None
        outcome = None
        while True:
            failed = next(((rank, code) for rank, code in list(exits) if code != 0), None)
            if failed or len(exits) == nodes:
                break
            outcome = self.cause()
            if outcome:
                break
            changed.wait(0.25)
            changed.clear()
        ended = {rank for rank, _ in list(exits)}
        running = [rank for rank in range(nodes) if rank not in ended]
        _stop_groups(procs)
        for reader in readers:
            reader.join(timeout=10)
        if failed:
            rank, code = failed
            exit_code = shell_exit_code(code)
            reason = f"node {rank} of {nodes} failed: {exit_reason(ExitState.FAILED, exit_code)}"
            if running:
                reason += f"; node{'s' if len(running) > 1 else ''} {', '.join(map(str, running))} stopped with it"
            return exit_code, None, reason
        if outcome is None:
            return 0, None, ""
        exit_code = shell_exit_code(procs[0].wait())
        if outcome is StopCause.TIMEOUT:
            exit_code = SIGKILL_EXIT if exit_code == SIGKILL_EXIT else TIMEOUT_EXIT
        return exit_code, outcome, ""

    def start(self, argv: list[str]) -> subprocess.Popen:
        # The command is an argument list executed directly: no shell ever parses it or the env.
        # The child enters its folder before it drops to the job's user, so it runs there even
        # when the folders above it are closed to that user.
        proc = subprocess.Popen(
            argv,
            cwd=self.spec["cwd"],
            env=self.spec["env"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            **self.as_user,
        )
        self._mark_running([proc.pid])
        return proc

    def supervise(self, argv: list[str]) -> tuple[int, StopCause | None]:
        """Run one process to its end or until it is stopped; (exit code in shell terms, why it was stopped)."""
        proc = self.start(argv)
        outcome = None
        while True:
            try:
                code = proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                pass
            outcome = self.cause()
            if outcome:
                _stop_group(proc.pid, proc)
                code = proc.wait()
                break
        # Whatever the process left behind in its group goes too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        exit_code = shell_exit_code(code)
        if outcome is StopCause.TIMEOUT:
            # What timeout(1) on the VMs returns: 124, or 137 when the job outlived the TERM.
            exit_code = SIGKILL_EXIT if exit_code == SIGKILL_EXIT else TIMEOUT_EXIT
        return exit_code, outcome


def _storage(spec: dict, credentials: dict):
    from chalicelib.backends.local.staging import Storage

    staging = spec["staging"]
    return Storage(
        region=spec["region"],
        endpoint_url=staging.get("endpoint_url"),
        endpoint_file=staging.get("endpoint_file"),
        credentials=credentials,
    )


def _stage_in(job: _Job, storage) -> None:
    """Before setup starts: the code unpacked in the work folder, each input read-only in its folder, the
    checkpoint folder restored from the checkpoint location. Raises StagingError (or an SDK error)."""
    from chalicelib.backends.local import staging as st

    spec, plan = job.spec, job.spec["staging"]
    client = storage.client()
    dirs = {name: Path(path) for name, path in plan["dirs"].items()}
    user = spec.get("user") or {}
    code = plan.get("code")
    if code:
        archive = job.folder / "code.tar.gz"
        st.fetch_code(client, code["uri"], code["sha256"], archive)
        count = st.unpack(archive, dirs["work"])
        archive.unlink()
        job.say(f"code: {code['uri']} (sha256 {code['sha256'][:12]}) unpacked in {dirs['work']}: {count} files")
    dirs["inputs"].mkdir(mode=0o700, exist_ok=True)
    for name, uri in plan.get("inputs", []):
        count = st.stage_input(client, name, uri, dirs["inputs"] / name)
        job.say(f"input {name}: {uri} -> {dirs['inputs'] / name} ({count} files, read-only)")
    st.make_read_only(dirs["inputs"])
    restored = st.download_prefix(client, plan["checkpoint_uri"], dirs["checkpoints"])
    if restored:  # a first attempt has none: its log says nothing of them
        job.say(f"checkpoints: {restored} files restored from {plan['checkpoint_uri']}")
    if user:
        st.give_to(dirs["work"], user["uid"], user["gid"])
        st.give_to(dirs["checkpoints"], user["uid"], user["gid"])


class _CheckpointSync:
    """Uploads the checkpoint folder's new and changed files every `seconds` while the job runs, and once at the end."""

    def __init__(self, job: _Job, storage) -> None:
        from chalicelib.backends.local import staging as st

        plan = job.spec["staging"]
        self.job = job
        self.storage = storage
        self.folder = Path(plan["dirs"]["checkpoints"])
        self.uri = plan["checkpoint_uri"]
        self.seconds = float(plan.get("checkpoint_seconds", 60))
        self.owner = (job.spec.get("user") or {}).get("uid")
        self.seen = st.remember(self.folder)  # what was just restored is there already
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="checkpoint-sync", daemon=True)

    def sync(self) -> int:
        from chalicelib.backends.local import staging as st

        with self.lock:
            return st.upload_folder(self.storage.client(), self.folder, self.uri, self.seen, self.owner)

    def _loop(self) -> None:
        while not self.stopped.wait(self.seconds):
            try:
                self.sync()
            except Exception as exc:  # best effort while it runs: the final sync tries again and says so
                print(f"checkpoint sync to {self.uri} failed: {exc}", file=sys.stderr, flush=True)

    def finish(self) -> str:
        self.stopped.set()
        self.thread.join(timeout=30)
        try:
            count = self.sync()
            return f"checkpoints: {count} changed files synced to {self.uri}" if count else ""
        except Exception as exc:  # reported in the log; the job's own outcome stands
            from chalicelib.backends.local.staging import describe

            return f"checkpoints: the final sync to {self.uri} failed: {describe(exc)}"


def _stage_out(job: _Job, storage) -> str:
    """At the end, whatever the outcome: everything in the output folder to artifacts_uri."""
    from chalicelib.backends.local import staging as st

    plan = job.spec["staging"]
    owner = (job.spec.get("user") or {}).get("uid")
    try:
        count = st.upload_folder(storage.client(), Path(plan["dirs"]["outputs"]), plan["artifacts_uri"], owner=owner)
    except Exception as exc:  # reported in the log and the exit reason; the job's own outcome stands
        return f"outputs: the upload to {plan['artifacts_uri']} failed: {st.describe(exc)}"
    return f"outputs: {count} files uploaded to {plan['artifacts_uri']}" if count else ""


def run(folder: Path, key: bytes | None = None, credentials: dict | None = None) -> int:
    os.umask(0o077)  # what the runner and the job create is theirs alone
    spec = json.loads((folder / "spec.json").read_text())

    def report(detail: dict) -> bool:
        return post_event(spec.get("event_url"), spec["region"], detail, key=key, url_file=spec.get("event_url_file"))

    # The runner keeps the log's only handle worth having: the job writes to it through its stdout.
    log = os.fdopen(os.open(folder / "output.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600), "ab")
    job = _Job(folder, spec, log, report)

    def _on_term(signum, frame):  # noqa: ARG001
        job.stop_requested = True

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    storage = _storage(spec, credentials or {}) if spec.get("staging") else None
    exit_code: int | None = None
    outcome: StopCause | None = None
    reason = ""
    sync = None
    staged = True
    try:
        if storage is not None:
            _stage_in(job, storage)
            sync = _CheckpointSync(job, storage)
            sync.thread.start()
    except Exception as exc:  # the job cannot start: the report says why, in words rather than a traceback
        from chalicelib.backends.local.staging import describe

        staged = False
        reason = f"staging failed before setup: {describe(exc)}"
        job.say(reason)
    outcome = job.cause()
    steps = [(f"setup step {i + 1}", step) for i, step in enumerate(spec.get("setup", []))]
    for label, argv in [*steps, ("command", spec["command"])] if staged else []:
        if outcome:
            break
        if label != "command":
            job.say(f"{label}: {shlex.join(argv)[:500]}")
        try:
            if label == "command" and spec.get("nodes", 1) > 1:
                exit_code, outcome, reason = job.supervise_nodes(argv, spec["nodes"])
                if reason:
                    job.say(reason)
                break
            exit_code, outcome = job.supervise(argv)
        except OSError as exc:
            exit_code, reason = 127, f"could not start {argv[0]!r}: {exc.strerror or exc}"
            if label != "command":
                reason = f"{label} {reason}"
            break
        if exit_code != 0 and not outcome and label != "command":
            reason = f"{label} failed ({exit_reason(ExitState.FAILED, exit_code)}): the command did not run"
            job.say(reason)
            break
    endings = []
    if sync is not None:
        endings.append(sync.finish())
    if storage is not None and spec.get("staging"):
        endings.append(_stage_out(job, storage))
    for line in filter(None, endings):
        job.say(line)
        if "failed" in line:
            reason = f"{reason}; {line}" if reason else line
    log.close()
    started_at = job.running["at"] if job.running else None
    status = _report(spec, exit_code, outcome, started_at, reason=reason)
    _write_json(folder / "status.json", status)
    if job.sender is not None:
        job.sender.join()  # the final event follows the first one, as it happened
    report(status)
    return 0


if __name__ == "__main__":
    _key, _credentials = _read_handover()
    sys.exit(run(Path(sys.argv[1]), _key, _credentials))
