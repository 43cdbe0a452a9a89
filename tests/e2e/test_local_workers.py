"""The local stack's API served by worker processes: they answer on the API's port, share the stack's
state, come back when one dies, and never outlive the stack (even one killed with SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.factories import ROOT, stack_api, start_stack, stop_stack, wait_for

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _cpu(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> set[int]:
    """The stack's worker processes (its other children, such as job runners, left out)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    found = set()
    for child in (int(p) for p in out.stdout.split()):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                if b"jobplane.local.workers" in fh.read() and _alive(child):
                    found.add(child)
        except FileNotFoundError:
            pass
    return found


def test_workers_serve_the_api_and_come_back_when_one_dies(tmp_path):
    stack = start_stack(tmp_path / "state", JOBPLANE_LOCAL_API_PROCESSES="2")
    try:
        pids = stack["state"]["api_processes"]
        assert pids[0] == stack["proc"].pid and len(pids) == 3
        workers = pids[1:]
        assert all(_alive(p) for p in workers) and set(workers) == _children(stack["proc"].pid)
        before = {p: _cpu(p) for p in workers}
        made = stack_api(stack, "POST", "/jobs", json={"name": "w", "backend": "local", "command": ["true"]})
        assert made.status_code == 201, made.text
        job_id = made.json()["job_id"]
        for _ in range(40):  # each on a new connection: the kernel hands them to the workers
            assert stack_api(stack, "GET", f"/jobs/{job_id}").status_code == 200
        assert all(_cpu(p) > before[p] for p in workers), "a worker served nothing"
        # A worker that dies is replaced, and the API keeps answering meanwhile.
        os.kill(workers[0], signal.SIGKILL)
        assert stack_api(stack, "GET", f"/jobs/{job_id}").status_code == 200
        replaced = wait_for(
            lambda: (_children(stack["proc"].pid) - set(workers)) or None, timeout=30, what="a new worker"
        )
        assert len(replaced) == 1 and _children(stack["proc"].pid) == {workers[1], *replaced}
        assert stack_api(stack, "GET", "/jobs").status_code == 200
        assert stop_stack(stack) == 0
        assert not any(_alive(p) for p in [*workers[1:], *replaced])
    finally:
        stop_stack(stack)


def test_workers_die_with_a_stack_killed_without_a_goodbye(tmp_path):
    stack = start_stack(tmp_path / "state", JOBPLANE_LOCAL_API_PROCESSES="2")
    try:
        workers = stack["state"]["api_processes"][1:]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        stop_stack(stack, signal.SIGKILL)
        wait_for(lambda: not any(_alive(p) for p in workers) or None, timeout=15, what="the workers to exit")
    finally:
        stop_stack(stack)


def test_a_bad_process_count_is_refused_naming_the_setting(tmp_path):
    env = {**os.environ, "JOBPLANE_LOCAL_DIR": str(tmp_path / "state"), "JOBPLANE_LOCAL_API_PROCESSES": "many"}
    env.pop("AWS_ENDPOINT_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "jobplane.cli", "local", "up", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "JOBPLANE_LOCAL_API_PROCESSES must be a whole number from 0 to 64" in text
    assert "Traceback" not in text
