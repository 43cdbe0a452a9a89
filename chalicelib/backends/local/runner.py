"""Supervises one local job: its own process group, log capture, max runtime, exit status, events."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from chalicelib.backends.agent import SIGKILL_EXIT, TIMEOUT_EXIT, StopCause, make_report, shell_exit_code

KILL_GRACE_SECONDS = float(os.environ.get("JOBPLANE_KILL_GRACE_SECONDS", "10"))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    with os.fdopen(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(json.dumps(data))
    os.replace(tmp, path)  # atomic: a reader never sees half a status


def _report(spec: dict, exit_code: int, stopped_by: StopCause | None, started_at: str | None, reason: str = ""):
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


def _read_key() -> bytes | None:
    # The stack hands the job's key over a pipe: it is in no file and no environment the job can see.
    if sys.stdin is None or sys.stdin.isatty():
        return None
    key = sys.stdin.buffer.read().strip()
    return bytes.fromhex(key.decode()) if key else None


def run(folder: Path, key: bytes | None = None) -> int:
    os.umask(0o077)  # what the runner and the job create is theirs alone
    spec = json.loads((folder / "spec.json").read_text())
    stop_requested = {"flag": False}
    user = spec.get("user") or {}

    def report(detail: dict) -> bool:
        return post_event(spec.get("event_url"), spec["region"], detail, key=key, url_file=spec.get("event_url_file"))

    def _on_term(signum, frame):  # noqa: ARG001
        stop_requested["flag"] = True

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    base = {"job_id": spec["job_id"], "native_id": spec["native_id"], "attempt": spec["attempt"]}
    # The runner keeps the log's only handle worth having: the job writes to it through its stdout.
    log = os.fdopen(os.open(folder / "output.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600), "ab")
    as_user = {"user": user["uid"], "group": user["gid"], "extra_groups": []} if user else {}
    try:
        # The command is an argument list executed directly: no shell ever parses it or the env.
        # The child enters its folder before it drops to the job's user, so it runs there even
        # when the folders above it are closed to that user.
        proc = subprocess.Popen(
            spec["command"],
            cwd=spec["cwd"],
            env=spec["env"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            **as_user,
        )
    except OSError as exc:
        status = _report(spec, 127, None, None, reason=f"could not start {spec['command'][0]!r}: {exc.strerror or exc}")
        _write_json(folder / "status.json", status)
        report(status)
        return 0
    started = time.monotonic()
    running = {**base, "state": "RUNNING", "pid": proc.pid, "at": _now(), "reason": "process started"}
    _write_json(folder / "runner.json", running)
    # Delivery retries for a long while when the endpoint is down; cancel and max runtime must not wait for it.
    sender = threading.Thread(target=report, args=(running,), daemon=True)
    sender.start()

    deadline = started + spec["max_runtime_seconds"]
    outcome = None
    while True:
        try:
            code = proc.wait(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            pass
        if stop_requested["flag"] or (folder / "cancel").exists():
            outcome = StopCause.CANCEL
        elif time.monotonic() > deadline:
            outcome = StopCause.TIMEOUT
        if outcome:
            _stop_group(proc.pid, proc)
            code = proc.wait()
            break
    # Whatever the job left behind in its group goes too.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    log.close()
    exit_code = shell_exit_code(code)
    if outcome is StopCause.TIMEOUT:
        # What timeout(1) on the VMs returns: 124, or 137 when the job outlived the TERM.
        exit_code = SIGKILL_EXIT if exit_code == SIGKILL_EXIT else TIMEOUT_EXIT
    status = _report(spec, exit_code, outcome, running["at"])
    _write_json(folder / "status.json", status)
    sender.join()  # the final event follows the first one, as it happened
    report(status)
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), _read_key()))
