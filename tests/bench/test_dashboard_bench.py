"""bench/dashboard.py: the old refresh reads every page, the new one one request of what changed (counts only)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.factories import ROOT


@pytest.mark.slow
def test_a_refresh_is_one_request_and_two_dynamodb_requests_whatever_the_history():
    # In its own process: the bench runs a local stack in-process and counts at the embedded DynamoDB.
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dashboard.py"), "--jobs", "250", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    old = rows["old"]
    assert old["requests"] == 3 and old["dynamodb"] == 6  # a page of 100 each: its token check and Query
    for n in (0, 10, 35, 60):
        row = rows[f"changed {n}"]
        assert row["jobs"] == n and row["requests"] == 1, (n, row)
        assert row["dynamodb"] == 2, (n, row)  # the token, then one Query of the changed index
    assert rows["changed 0"]["bytes"] < 200
    assert rows["changed 10"]["bytes"] < old["bytes"] / 10
