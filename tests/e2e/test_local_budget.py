"""End to end: `jobplane local up` with JOBPLANE_LOCAL_PRICE_PER_HOUR set prices a local job live, sums its
attempts, and stops it when they reach its max_cost_usd (failure_kind budget), with the figures everywhere."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.factories import stack_api as api
from tests.factories import stack_cli as cli
from tests.factories import start_stack, stop_stack, wait_long

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# $90 an hour is 2.5 cents a second: a minute's attempt costs $1.50, under the cap, so submit accepts the job;
# the two attempts together pass it.
PRICE = 90.0
CAP = 1.6


def spec(**overrides):
    return {
        "name": "budget",
        "backend": "local",
        "command": [sys.executable, "-c", "import time; print('start', flush=True); time.sleep(600)"],
        "max_runtime_minutes": 1,
        "max_cost_usd": CAP,
        "retries": {"max_attempts": 2, "on": ["interruption"]},
        **overrides,
    }


def test_a_local_job_is_stopped_when_its_attempts_reach_max_cost_usd(tmp_path):
    folder = tmp_path / "stack"
    folder.mkdir()
    stack = start_stack(folder, JOBPLANE_LOCAL_PRICE_PER_HOUR=str(PRICE))
    try:
        refused = api(stack, "POST", "/jobs", json=spec(max_cost_usd=1.0))
        assert refused.status_code == 400, refused.text
        detail = refused.json()["error"]["details"][0]
        assert detail["field"] == "max_cost_usd"
        assert "costs $1.50 over max_runtime_minutes 1, more than max_cost_usd $1.00" in detail["message"]

        created = api(stack, "POST", "/jobs", json=spec())
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]

        def get():
            return api(stack, "GET", f"/jobs/{job_id}").json()

        # live: reconcile writes the running attempt's figure as it grows (a cent or more at a time)
        live = wait_long(lambda: (j := get())["cost"]["usd"] and j["cost"]["usd"] >= 0.75 and j, timeout=60)
        assert live["status"] == "RUNNING" and live["cost"]["final"] is False
        [attempt] = live["cost"]["attempts"]
        assert (attempt["usd_per_hour"], attempt["priced"]) == (PRICE, "local machine")
        assert "so far" in cli(stack, "status", job_id).stdout

        # the machine goes away under attempt 1 (as a spot reclaim would): attempt 2 runs, and adds to the bill
        runner = stack["dir"] / "jobs" / f"jp-{job_id}" / "runner.pid"
        os.kill(int(runner.read_text()), signal.SIGTERM)
        ended = wait_long(lambda: (j := get())["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") and j, timeout=90)
        assert (ended["status"], ended["failure_kind"], ended["attempt"]) == ("FAILED", "budget", 2), ended
        assert f"reached max_cost_usd ${CAP:,.4f}" in ended["failure_reason"]
        first, second = ended["cost"]["attempts"]
        assert first["final"] and second["final"] and first["usd"] >= 0.75 and second["usd"] > 0
        assert ended["cost"]["usd"] >= CAP and ended["cost"]["usd"] == pytest.approx(
            first["usd"] + second["usd"], abs=1e-3
        )
        assert ended["cost"]["usd"] < first["usd"] + 1.5  # stopped well before attempt 2's own minute was up
        assert ended["cost_estimate_usd"] == pytest.approx(ended["cost"]["usd"], abs=1e-3)
        history = [(e["from"], e["to"]) for e in api(stack, "GET", f"/jobs/{job_id}/events").json()["events"]]
        assert ("RUNNING", "QUEUED") in history and history[-1] == ("RUNNING", "FAILED")

        status = cli(stack, "status", job_id).stdout
        assert "cost by attempt:" in status and "attempt 2  local machine  $90.0000/h" in status

        def final_message():
            lines = Path(stack["state"]["slack_log"]).read_text().splitlines()
            found = [m for m in map(json.loads, lines) if job_id in m["text"] and "failed (budget)" in m["text"]]
            return found[0] if found else None

        message = wait_long(final_message, timeout=20, what="the Slack message of the budget stop")
        assert f"est. ${ended['cost']['usd']:,.2f} (prices of " in message["text"]
    finally:
        stop_stack(stack)
