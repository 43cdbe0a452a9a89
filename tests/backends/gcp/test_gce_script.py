"""The GCE startup script: shellcheck-clean, hostile values stay data, and it does what the contract says."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap

import pytest

from chalicelib.backends.gcp.gce_script import startup_script
from chalicelib.backends.shell import array, assign, quote

HOSTILE = [
    "it's",
    '"double" quotes',
    "$(touch PWNED)",
    "`touch PWNED`",
    "${HOME}",
    "a\nb; touch PWNED",
    "back\\slash",
    "--entrypoint",
    "",
    "' ; touch PWNED ; '",
]
NATIVE = "jp-" + "a" * 32


def _script(tmp_path, image="us-docker.pkg.dev/p/r/img:1", command=None, env=None, runtime=60):
    return startup_script(
        job_id="a" * 32,
        native_id=NATIVE,
        image=image,
        command=command or ["python", "train.py", *HOSTILE],
        env=env or {"HOSTILE": "\n".join(HOSTILE), "LR": "0.1"},
        status_uri=f"gs://jp-status/test/{NATIVE}/exit.json",
        events_topic="projects/my-project/topics/jobplane-test-events",
        max_runtime_seconds=runtime,
        idle_samples=30,
    )


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (make system-deps)")
def test_the_script_passes_shellcheck(tmp_path):
    for image in ("us-docker.pkg.dev/p/r/img:1", None):
        path = tmp_path / "startup.sh"
        path.write_text(_script(tmp_path, image=image))
        result = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True)
        assert (result.returncode, result.stdout) == (0, "")


def test_quoting_core_round_trips_hostile_values_through_bash(tmp_path):
    lines = [assign("ONE", HOSTILE[2]), array("ARGS", HOSTILE)]
    probe = "\n".join(lines) + '\nprintf "%s\\0" "$ONE" "${ARGS[@]}"\n'
    out = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == [HOSTILE[2], *HOSTILE]
    assert not (tmp_path / "PWNED").exists()
    assert quote("it's") == "'it'\\''s'"
    with pytest.raises(ValueError):
        quote("nul\x00byte")
    with pytest.raises(ValueError):
        assign("BAD NAME", "x")


def _stubs(tmp_path, docker_exit: int) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "gcloud": f"""
            case "$1 $2" in
              "storage ls") exit 1 ;;
              "storage cp") cp "$3" "{tmp_path}/uploaded.json"; printf '%s\\n' "$4" > "{tmp_path}/uploaded.uri" ;;
              "pubsub topics") printf '%s\\0' "$@" > "{tmp_path}/published" ;;
            esac
            exit 0""",
        "docker": f"""
            if [ "$1" = run ]; then printf '%s\\0' "$@" > "{tmp_path}/docker.args"; exit {docker_exit}; fi
            exit 0""",
        "curl": "exit 0",
        "nvidia-smi": "echo 42",
        "shutdown": f'touch "{tmp_path}/shutdown"',
    }
    for name, body in stubs.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + textwrap.dedent(body).strip() + "\n")
        path.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "JOBPLANE_LOG": str(tmp_path / "job.log"),
        "JOBPLANE_EXIT_FILE": str(tmp_path / "exit.json"),
        "HOME": str(tmp_path),
    }


def _run(tmp_path, script: str, env: dict[str, str]) -> int:
    path = tmp_path / "startup.sh"
    path.write_text(script)
    proc = subprocess.Popen(["bash", str(path)], cwd=tmp_path, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=20)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the heartbeat loop outlives the script (a VM powers off)


def test_the_script_runs_the_container_with_values_as_data_and_reports_the_exit(tmp_path):
    env = _stubs(tmp_path, docker_exit=3)
    assert _run(tmp_path, _script(tmp_path), env) == 0
    args = (tmp_path / "docker.args").read_bytes().decode().split("\0")[:-1]
    assert args == [
        "run", "--rm", "--name", NATIVE, "--gpus", "all",
        "--env", "HOSTILE=" + "\n".join(HOSTILE), "--env", "LR=0.1",
        "--entrypoint", "python", "us-docker.pkg.dev/p/r/img:1", "train.py", *HOSTILE,
    ]  # fmt: skip
    status = json.loads((tmp_path / "uploaded.json").read_text())
    assert (status["state"], status["exit_code"], status["native_name"]) == ("FAILED", 3, NATIVE)
    assert (tmp_path / "uploaded.uri").read_text() == f"gs://jp-status/test/{NATIVE}/exit.json\n"
    published = (tmp_path / "published").read_bytes().decode().split("\0")[:-1]
    assert published[:4] == ["pubsub", "topics", "publish", "projects/my-project/topics/jobplane-test-events"]
    assert "jobplane-source=jobplane.gce,jobplane-native-id=" + NATIVE in published
    assert (tmp_path / "shutdown").exists()
    assert not (tmp_path / "PWNED").exists()


def test_a_bare_command_past_max_runtime_is_reported_as_timeout(tmp_path):
    env = _stubs(tmp_path, docker_exit=0)
    script = _script(tmp_path, image=None, command=["sleep", "30"], env={"A": "1"}, runtime=1)
    assert _run(tmp_path, script, env) == 0
    status = json.loads((tmp_path / "uploaded.json").read_text())
    assert (status["state"], status["exit_code"]) == ("TIMEOUT", 124)
    assert (tmp_path / "shutdown").exists()
