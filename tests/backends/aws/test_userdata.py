"""The EC2 user data script: shellcheck-clean, and hostile job values stay data when it really runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.backends.aws.userdata import VmJob, user_data
from tests.vmharness import Vm, prepare, run

HOSTILE = [
    "$(touch PWNED_subst)",
    "`touch PWNED_backtick`",
    'it\'s "quoted"',
    "line one\nline two\n",
    "; touch PWNED_semicolon",
    "${HOME} $PATH *",
    "'$(touch PWNED_in_quotes)'",
    "\\n\\$(x)",
]
DUMP = (
    "import json, os, sys; "
    "json.dump({'argv': sys.argv[1:], 'env': {k: os.environ.get(k) for k in ('HOSTILE_A', 'HOSTILE_B')}}, "
    "open(os.environ['DUMP_TO'], 'w'))"
)


def _run(tmp_path: Path, job: VmJob) -> Path:
    """Run the script with aws/shutdown/docker stand-ins on PATH; returns the folder of uploaded status objects."""
    vm, env = prepare(tmp_path)
    run(vm, user_data(job), env)
    return vm.obj(job.status_uri)


# A VmJob, not a Job: values no spec would pass (a hostile name), to show the script keeps them data.
def _vm_job(tmp_path: Path, **extra) -> VmJob:
    return VmJob(
        job_id="a" * 32,
        native_id="jp-" + "a" * 32,
        name="it's $(touch PWNED_name) `x`\nname",
        command=(sys.executable, "-c", DUMP, *HOSTILE),
        env=(
            ("DUMP_TO", str(tmp_path / "dump.json")),
            ("HOSTILE_A", "$(touch PWNED_env) `touch PWNED_env2` 'q' \"dq\""),
            ("HOSTILE_B", "a\nb=c\n"),
        ),
        max_runtime_seconds=60,
        status_uri="s3://artifacts/jobplane/test/jobs/x/jp-x/",
        region="us-east-1",
        workdir=str(tmp_path / "vm"),
        **extra,
    )


def test_the_script_passes_shellcheck(tmp_path):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    for job in (_vm_job(tmp_path), _vm_job(tmp_path, image="train:1", gpus=4, checkpoint_uri="s3://b/ckpt/")):
        path = tmp_path / "user-data.sh"
        path.write_text(user_data(job))
        result = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_hostile_command_env_and_name_stay_data_when_the_script_runs(tmp_path):
    uploads = _run(tmp_path, _vm_job(tmp_path))
    dump = json.loads((tmp_path / "dump.json").read_text())
    assert dump["argv"] == HOSTILE
    assert dump["env"] == {
        "HOSTILE_A": "$(touch PWNED_env) `touch PWNED_env2` 'q' \"dq\"",
        "HOSTILE_B": "a\nb=c\n",
    }
    assert list(tmp_path.rglob("PWNED*")) == []
    status = json.loads((uploads / "status.json").read_text())
    assert (status["exit_code"], status["state"]) == (0, "SUCCEEDED")
    assert (uploads / "log.txt").exists()
    assert (tmp_path / "shutdown.called").exists()
    assert uploads == tmp_path / "store/s3/artifacts/jobplane/test/jobs/x/jp-x"


def test_with_an_image_the_container_gets_the_exact_arguments(tmp_path):
    _run(tmp_path, _vm_job(tmp_path, image="repo/train:1 $(touch PWNED_image)", gpus=2))
    argv = next(c["argv"] for c in Vm(tmp_path, tmp_path / "vm").calls("docker") if c["argv"][0] == "run")
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert envs[1:3] == ["HOSTILE_A=$(touch PWNED_env) `touch PWNED_env2` 'q' \"dq\"", "HOSTILE_B=a\nb=c\n"]
    assert argv[:6] == ["run", "--rm", "--name", "jp-" + "a" * 32, "--network", "host"]
    assert "--gpus" in argv and argv[argv.index("--gpus") + 1] == "all"
    entry = argv.index("--entrypoint")
    assert argv[entry + 1 :] == [sys.executable, "repo/train:1 $(touch PWNED_image)", "-c", DUMP, *HOSTILE]
    assert list(tmp_path.rglob("PWNED*")) == []


def test_the_script_enforces_max_runtime_itself(tmp_path):
    job = _vm_job(tmp_path)
    slow = VmJob(
        **{**job.__dict__, "command": (sys.executable, "-c", "import time; time.sleep(30)"), "max_runtime_seconds": 1}
    )
    uploads = _run(tmp_path, slow)
    status = json.loads((uploads / "status.json").read_text())
    assert (status["exit_code"], status["state"]) == (124, "TIMEOUT")
    assert (tmp_path / "shutdown.called").exists()


# The busiest GPU of each sample (a second GPU reads 1), one sample per heartbeat.
_GPU = r"""#!/bin/bash
n=$(cat "$HOME/gpu.n" 2>/dev/null || echo 0)
echo $((n + 1)) >"$HOME/gpu.n"
values=(10 40 20 5)
echo " ${values[$n]:-5}"
echo " 1"
"""


def _heartbeats(vm: Vm) -> list[dict]:
    return [
        json.loads(c["uploaded"])
        for c in vm.calls("aws")
        if c["argv"][:2] == ["s3", "cp"] and c["argv"][-1].endswith("/heartbeat.json")
    ]


def test_the_agent_beats_with_the_busiest_gpu_sample_of_the_window_and_stops_with_the_job(tmp_path):
    from chalicelib.backends.agent import parse_heartbeat

    vm, env = prepare(tmp_path)
    (tmp_path / "bin" / "nvidia-smi").write_text(_GPU)
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    job = _vm_job(tmp_path, heartbeat_interval_seconds=1, idle_samples=2)
    slow = VmJob(**{**job.__dict__, "command": (sys.executable, "-c", "import time; time.sleep(4.5)")})
    run(vm, user_data(slow), env)
    beats = _heartbeats(vm)
    assert len(beats) >= 4, beats
    # The window is two samples: each beat carries the busiest of the last two.
    assert [(b["gpu_percent"], b["gpu_samples"]) for b in beats[:4]] == [(10, 1), (40, 2), (40, 2), (20, 2)]
    assert {(b["v"], b["job_id"], b["attempt"], b["interval_seconds"]) for b in beats} == {(1, "a" * 32, 1, 1)}
    # What the reaper makes of the third beat over a window of two one-second samples, and of three.
    seen = parse_heartbeat(json.dumps(beats[2]), job_id="a" * 32, attempt=1, received_at="t", window_minutes=2 / 60)
    assert (seen.gpu_percent, seen.last_heartbeat) == (40.0, "t")
    short = parse_heartbeat(json.dumps(beats[2]), job_id="a" * 32, attempt=1, received_at="t", window_minutes=3 / 60)
    assert short.gpu_percent is None  # the samples do not cover the window yet
    # No beat once the job has ended: the last one goes up before the exit report.
    report_at = next(c["t"] for c in vm.calls("aws") if c["argv"][-1].endswith("/status.json"))
    assert max(c["t"] for c in vm.calls("aws") if c["argv"][-1].endswith("/heartbeat.json")) < report_at


def test_without_nvidia_smi_the_heartbeat_has_no_gpu_reading(tmp_path):
    vm, env = prepare(tmp_path)
    run(vm, user_data(_vm_job(tmp_path, heartbeat_interval_seconds=1)), env)
    beats = _heartbeats(vm)
    assert beats and {(b["gpu_percent"], b["gpu_samples"]) for b in beats} == {(None, 0)}
