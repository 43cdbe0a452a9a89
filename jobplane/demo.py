"""`make demo`: start the local stack, run the example job to the end, show its metrics and Slack messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from jobplane.local.state import read_state

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _wait_for_stack(directory: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the local stack exited early with code {proc.returncode}")
        state = read_state(directory)
        if state:
            try:
                if requests.get(state["api"] + "/health", timeout=2).ok:
                    return state
            except requests.RequestException:
                pass
        time.sleep(0.2)
    raise SystemExit("the local stack did not come up within 60 s")


def _say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def main() -> int:
    directory = ROOT / ".jobplane"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    _say("starting the local stack (moto, API on http://127.0.0.1:8000, local backend, event sources)")
    stack = subprocess.Popen(
        [str(BIN / "jobplane"), "--local-dir", str(directory), "local", "up", "--reconcile-seconds", "5"],
        cwd=ROOT,
        env=env,
    )
    ok = False
    try:
        state = _wait_for_stack(directory, stack)
        jp = [str(BIN / "jobplane"), "--local-dir", str(directory)]
        _say("submitting examples/train-local.yaml and following it")
        submit = subprocess.run(
            [*jp, "submit", "examples/train-local.yaml", "--wait", "--timeout", "300"], cwd=ROOT, env=env
        )
        ok = submit.returncode == 0
        jobs = requests.get(
            state["api"] + "/jobs?limit=1", headers={"Authorization": f"Bearer {state['admin_token']}"}, timeout=10
        ).json()["jobs"]
        if jobs:
            job_id = jobs[0]["job_id"]
            _say(f"the job's metrics (from `jobplane logs {job_id}`)")
            logs = subprocess.run([*jp, "logs", job_id], cwd=ROOT, env=env, capture_output=True, text=True).stdout
            for line in logs.splitlines():
                if line.startswith("METRICS") or line.startswith("model written"):
                    print("   ", line)
        time.sleep(1.5)  # the stream reader polls twice a second
        _say("messages the Slack webhook sink received")
        for line in Path(state["slack_log"]).read_text().splitlines():
            print("   ", json.loads(line)["text"])
    finally:
        _say("stopping the local stack (Ctrl-C)")
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.kill()
    _say("demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
