"""End to end: local jobs outlive the stack and are adopted; the runner's event path is signed per job."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import time

import pytest
import requests

from chalicelib.backends.local.runner import sign_detail
from tests.factories import kill_runners, sleeper_spec, stack_api, start_stack, stop_stack, wait_long

pytestmark = pytest.mark.e2e


def _status(stack, job_id: str) -> dict:
    return stack_api(stack, "GET", f"/jobs/{job_id}").json()


def _history(stack, job_id: str) -> list[dict]:
    return stack_api(stack, "GET", f"/jobs/{job_id}/events").json()["events"]


@pytest.fixture
def state_dir(tmp_path):
    directory = tmp_path / "state"
    yield directory
    kill_runners(directory)


@pytest.mark.slow
def test_kill_9_during_a_running_job_then_restart_the_job_succeeds_and_was_never_lost(state_dir):
    first = start_stack(state_dir)
    try:
        job = stack_api(first, "POST", "/jobs", json=sleeper_spec(25)).json()
        # Killed once RUNNING is in the history too (the job row and its history are two writes).
        wait_long(lambda: "RUNNING" in [e["to"] for e in _history(first, job["job_id"])], what="RUNNING")
        first["proc"].send_signal(signal.SIGKILL)
    finally:
        stop_stack(first)
    second = start_stack(state_dir)
    try:
        assert _status(second, job["job_id"])["status"] == "RUNNING"
        time.sleep(3)  # three reconcile sweeps while the job still runs: none may take it for an orphan
        assert _status(second, job["job_id"])["status"] == "RUNNING"
        done = wait_long(
            lambda: (j := _status(second, job["job_id"]))["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") and j,
            what="the adopted job to end",
        )
        assert done["status"] == "SUCCEEDED", done
        assert [e["to"] for e in _history(second, job["job_id"])] == ["QUEUED", "LAUNCHING", "RUNNING", "SUCCEEDED"]
        logs = stack_api(second, "GET", f"/jobs/{job['job_id']}/logs").text
        assert "start" in logs and "end" in logs  # the log went on while the stack was down
    finally:
        assert stop_stack(second) == 0


@pytest.mark.slow
def test_ctrl_c_leaves_a_job_running_and_one_that_finished_meanwhile_is_settled_on_restart(state_dir):
    first = start_stack(state_dir)
    try:
        job = stack_api(first, "POST", "/jobs", json=sleeper_spec(3)).json()
        wait_long(lambda: _status(first, job["job_id"])["status"] == "RUNNING", what="RUNNING")
    finally:
        assert stop_stack(first) == 0
    folder = state_dir / "jobs" / job["native_id"]
    wait_long(lambda: (folder / "status.json").exists(), what="the job to finish while the stack is down")
    assert json.loads((folder / "status.json").read_text())["state"] == "SUCCEEDED"
    second = start_stack(state_dir)
    try:
        done = wait_long(lambda: (j := _status(second, job["job_id"]))["status"] == "SUCCEEDED" and j, what="settled")
        assert done["finished_at"] >= done["started_at"]
    finally:
        assert stop_stack(second) == 0


def _event(detail: dict) -> dict:
    return {
        "version": "0",
        "id": "forged",
        "detail-type": "jobplane Local Job State Change",
        "source": "jobplane.local",
        "account": "000000000000",
        "time": "2020-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


def _job_key(stack, native_id: str) -> bytes:
    stack_key = bytes.fromhex((stack["dir"] / "jobs" / "event-key").read_text().strip())
    return hmac.new(stack_key, native_id.encode(), hashlib.sha256).digest()


@pytest.mark.slow
def test_forged_events_from_another_job_or_unsigned_change_nothing(state_dir):
    stack = start_stack(state_dir)
    try:
        victim = stack_api(stack, "POST", "/jobs", json=sleeper_spec(60)).json()
        other = stack_api(stack, "POST", "/jobs", json=sleeper_spec(60)).json()
        for job in (victim, other):
            wait_long(lambda j=job: _status(stack, j["job_id"])["status"] == "RUNNING", what="RUNNING")
        url = stack["state"]["functions"] + "/2015-03-31/functions/on_job_state_change/invocations"
        forged = {"native_id": victim["native_id"], "state": "SUCCEEDED", "exit_code": 0, "at": "2020-01-01T00:00:00Z"}
        with_other_key = {**forged, "signature": sign_detail(_job_key(stack, other["native_id"]), forged)}
        unknown_state = {"native_id": victim["native_id"], "state": "EXPLODED", "at": "2020-01-01T00:00:00Z"}
        unknown_state["signature"] = sign_detail(_job_key(stack, victim["native_id"]), unknown_state)
        answers = [requests.post(url, json=_event(d), timeout=30).json() for d in (forged, with_other_key)]
        assert [a.get("errorType") for a in answers] == ["ValidationError", "ValidationError"], answers
        assert "detail.signature" in answers[0]["errorMessage"] and "detail.signature" in answers[1]["errorMessage"]
        ignored = requests.post(url, json=_event(unknown_state), timeout=30).json()
        assert ignored.get("outcome") == "ignored", ignored
        # Functions other than the runner's report need an admin token.
        denied = requests.post(stack["state"]["functions"] + "/2015-03-31/functions/reconcile/invocations", json={})
        assert denied.status_code == 403 and "admin token" in denied.json()["errorMessage"]
        time.sleep(2)
        after = _status(stack, victim["job_id"])
        assert after["status"] == "RUNNING" and after["finished_at"] is None
        assert [e["to"] for e in _history(stack, victim["job_id"])] == ["QUEUED", "LAUNCHING", "RUNNING"]
        runner = json.loads((state_dir / "jobs" / victim["native_id"] / "runner.json").read_text())
        assert runner["pid"]
        stack_api(stack, "POST", f"/jobs/{victim['job_id']}/cancel")
        stack_api(stack, "POST", f"/jobs/{other['job_id']}/cancel")
        wait_long(lambda: _status(stack, victim["job_id"])["status"] == "CANCELLED", what="CANCELLED")
    finally:
        assert stop_stack(stack) == 0
