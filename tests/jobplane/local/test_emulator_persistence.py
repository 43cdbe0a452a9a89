"""The embedded emulator keeps DynamoDB and S3 across process deaths (each life a fresh process: moto is global)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import ROOT

PHASE = Path(__file__).with_name("_emulator_phase.py")


def _phase(state: Path, mode: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(PHASE), str(state), mode, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    state = tmp_path_factory.mktemp("emulator") / "aws"
    return state, _phase(state, "write-then-kill")


def test_acknowledged_writes_survive_the_process_dying_without_a_goodbye(written):
    state, before = written
    after = _phase(state, "read")
    assert after == before
    assert len(before["items"]["any-table"]) == 59 and before["objects"].keys() == {
        "a b/c%2Fd.txt",
        "model.bin",
        "checkpoint",
        "code/abc.tar.gz",
    }
    assert before["objects"]["code/abc.tar.gz"] == len(b"packed code") * 1000
    assert before["ttl"]["TimeToLiveStatus"] == "ENABLED" and before["stream"]["StreamEnabled"] is True
    assert before["meta"] == [{"who": "me"}, "text/plain", "hello"]
    assert after["replayed"] == 0  # every journaled request applied again


def test_a_compacted_snapshot_rebuilds_the_same_state(written):
    state, before = written
    assert _phase(state, "compact") == before
    assert (state / "snapshot.jsonl").exists()
    assert _phase(state, "read") == before
