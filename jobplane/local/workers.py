"""API worker processes: the stack's API served from more than one Python process, so a burst of
requests uses every core instead of queueing on one GIL.

Each worker is a fresh interpreter (spawned, never forked: the stack's process runs threads) that
imports the same app with the stack's environment and serves it with waitress on the API's own
listening socket, which it inherits (the kernel hands each new connection to whichever worker
accepts it first). The stack's own process then only binds that socket and keeps everything else:
the embedded AWS, the schedule, the stream and the Slack sink, so the API and the emulator each have
a GIL of their own. A worker holds no state of its own
(the tables, the S3 bucket and the job folders are the state), dies with the stack (the kernel's
parent-death signal, and a check of its parent), and is stopped when the stack stops.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger("jobplane.local")

PROCESSES_SETTING = "JOBPLANE_LOCAL_API_PROCESSES"
PR_SET_PDEATHSIG = 1


def default_processes() -> int:
    """API worker processes: one per core (the stack's own process keeps the emulator)."""
    return os.cpu_count() or 1


def processes_from_env() -> int:
    raw = os.environ.get(PROCESSES_SETTING, "").strip()
    if not raw:
        return default_processes()
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 64:
        raise ValueError(f"{PROCESSES_SETTING} must be a whole number from 0 to 64 (got {raw!r})")
    return value


class Workers:
    """The running worker processes of one stack."""

    def __init__(self, listener: socket.socket, count: int, threads: int, max_body: int, root: Path) -> None:
        self.procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._stopping = False
        fd = self._fd = listener.fileno()
        self._command = [
            sys.executable,
            "-m",
            "jobplane.local.workers",
            "--fd",
            str(fd),
            "--parent",
            str(os.getpid()),
            "--threads",
            str(threads),
            "--max-body",
            str(max_body),
            "--root",
            str(root),
        ]
        self.procs = [self._start() for _ in range(count)]
        self.restarts = 0

    def _start(self) -> subprocess.Popen:
        # The environment is the stack's: the same settings, endpoints and credentials its own API has.
        return subprocess.Popen(self._command, pass_fds=(self._fd,), env=dict(os.environ))  # noqa: S603

    def watch(self) -> None:
        """Start again a worker that exited while the stack runs (a crash must not take the API down)."""
        with self._lock:
            if self._stopping:
                return
            for i, proc in enumerate(self.procs):
                code = proc.poll()
                if code is not None:
                    log.warning("API worker %s exited (%s); starting another", proc.pid, code)
                    self.procs[i] = self._start()
                    self.restarts += 1

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # waitress finishes the requests in flight
        for proc in self.procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _die_with_parent(parent: int) -> None:
    """Linux's parent-death signal, set before the first request; then a check, in case the parent
    died before it was set (and for kernels without it)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(0)

    def watch() -> None:
        while True:
            threading.Event().wait(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobplane.local.workers")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--max-body", type=int, required=True)
    parser.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.root not in sys.path:
        sys.path.insert(0, args.root)  # app.py, as in the stack's own process
    from chalice.config import Config

    import app as app_module
    from jobplane.local.server import ChaliceWSGI, Server

    config = Config.create(chalice_stage="local", app_name="jobplane", project_dir=os.getcwd())
    listener = socket.socket(fileno=args.fd)
    server = Server(
        ChaliceWSGI(app_module.app, config),
        threads=args.threads,
        max_body=args.max_body,
        name=f"api-worker-{os.getpid()}",
        sockets=[listener],
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    server.start()
    stopped.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
