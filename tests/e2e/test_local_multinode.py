"""End to end: a 2-node job on `jobplane local up`, an all-reduce over TCP, logs per node, one node killed."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from tests.factories import stack_api as api
from tests.factories import stack_cli as cli
from tests.factories import wait_long

pytestmark = pytest.mark.e2e


def test_a_2_node_allreduce_job_succeeds_with_each_nodes_log(stack):
    result = cli(stack, "submit", "examples/allreduce-local.yaml", "--wait", "--timeout", "120")
    assert "SUCCEEDED" in result.stdout
    job = api(stack, "GET", "/jobs?limit=1").json()["jobs"][0]
    assert (job["name"], job["status"], job["spec"]["resources"]["nodes"]) == ("allreduce", "SUCCEEDED", 2)
    for rank in (0, 1):
        text = cli(stack, "logs", job["job_id"], "--node", str(rank)).stdout
        assert f"node {rank} of 2: master 127.0.0.1:" in text
        assert f"node {rank}: 5 all-reduce rounds of 8 numbers agree" in text
        assert f"node {1 - rank}:" not in text  # that node's lines only
    merged = cli(stack, "logs", job["job_id"]).stdout.splitlines()
    assert "[node 0] node 0: 5 all-reduce rounds of 8 numbers agree: sum[0]=11.0" in merged
    assert "[node 1] node 1: 5 all-reduce rounds of 8 numbers agree: sum[0]=11.0" in merged
    # The metrics lines of both nodes are read from the merged log; the last round's sum is the same on each.
    assert job["metrics"]["round"] == 5 and job["metrics"]["sum0"] == 11.0
    refused = cli(stack, "logs", job["job_id"], "--node", "2", check=False)
    assert refused.returncode != 0 and "node" in refused.stderr


def test_killing_one_node_fails_the_job_and_stops_the_other(stack):
    spec = {
        "name": "allreduce-long",
        "backend": "local",
        "command": [sys.executable, "-m", "examples.allreduce", "--rounds", "100000", "--round-seconds", "0.05"],
        "resources": {"nodes": 2},
    }
    job = api(stack, "POST", "/jobs", json=spec).json()
    job_id = job["job_id"]
    wait_long(lambda: api(stack, "GET", f"/jobs/{job_id}").json()["status"] == "RUNNING", what="RUNNING")
    runner = json.loads((stack["dir"] / "jobs" / job["native_id"] / "runner.json").read_text())
    node0, node1 = runner["pids"]
    # Both nodes are in the all-reduce: node 1's log shows rounds before it is killed.
    wait_long(
        lambda: "JOBPLANE_METRICS" in api(stack, "GET", f"/jobs/{job_id}/logs?node=1").json()["text"], what="rounds"
    )
    os.kill(node1, signal.SIGKILL)
    final = wait_long(
        lambda: (j := api(stack, "GET", f"/jobs/{job_id}").json())["status"] == "FAILED" and j, what="FAILED"
    )
    assert final["failure_reason"].startswith("node 1 of 2 failed: killed by signal SIGKILL (exit code 137)")

    def gone(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_long(lambda: gone(node0), timeout=20, what="node 0 to stop")
