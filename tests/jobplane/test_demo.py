"""`make demo PORT=N` runs the demo's stack on port N."""

from __future__ import annotations

import subprocess

import pytest

from tests.factories import ROOT


def test_make_demo_passes_port_to_the_demo():
    dry = subprocess.run(["make", "-n", "demo", "PORT=8123"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "-m jobplane.demo --port 8123" in dry.stdout


def test_the_demo_takes_its_port_from_the_command_line_or_port(monkeypatch):
    from jobplane import demo

    seen = {}
    monkeypatch.setattr(demo, "read_state", lambda directory: seen.setdefault("dir", directory) and None)

    def refuse(cmd, **kw):
        seen["cmd"] = cmd
        raise RuntimeError("stop here")

    monkeypatch.setattr(demo.subprocess, "Popen", refuse)
    monkeypatch.setattr(demo.shutil, "rmtree", lambda *a, **k: None)
    monkeypatch.setenv("PORT", "8124")
    for argv, port in (([], "8124"), (["--port", "8125"], "8125")):
        try:
            demo.main(argv)
        except RuntimeError:
            pass
        assert seen["cmd"][seen["cmd"].index("--port") + 1] == port
    assert seen["dir"].name == "demo"


def test_the_demo_prints_the_final_metrics_from_the_job_record():
    from jobplane.demo import final_metrics

    job = {"metrics": {"val_accuracy": 0.8731, "epoch": 15.0}}
    assert final_metrics(job) == ["epoch            15", "val_accuracy     0.8731"]
    assert final_metrics({"metrics": {}}) == ["(the job reported no metrics)"]


@pytest.mark.e2e
@pytest.mark.slow
def test_make_demo_runs_the_workdir_job_and_prints_its_artifacts():
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = subprocess.run(
        [sys.executable, "-m", "jobplane.demo", "--port", str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "submitting examples/train-workdir-local.yaml" in run.stdout
    lines = run.stdout.split("its artifacts (`jobplane artifacts ", 1)[1].splitlines()[1:3]
    assert [line.split()[0] for line in lines] == ["model.json", "report/summary.txt"]
    assert all(line.split()[1].isdigit() and line.endswith("bytes") for line in lines)
    # the trained model served from the finished job: preprocess cleaned "  DOG!! ", postprocess wrote the answer
    assert '"label": "dog"' in run.stdout and "seen 3 of 9 times in training" in run.stdout
    assert "demo-model: IN_SERVICE on local" in run.stdout and "demo-model: DELETED" in run.stdout
    assert "demo succeeded" in run.stdout
