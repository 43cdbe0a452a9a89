"""The GCE startup script: shellcheck-clean, hostile values stay data, and it does what the contract says."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from chalicelib.backends.gcp.gce_script import startup_script
from chalicelib.backends.shell import array, assign, quote
from tests.vmharness import Vm, prepare, run

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


def _script(tmp_path, image="us-docker.pkg.dev/p/r/img:1", command=None, env=None, runtime=60, gpus=1):
    return startup_script(
        root=str(tmp_path / "vm"),
        gpus=gpus,
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


def _run(tmp_path, script: str, docker_exit: int = 0) -> Vm:
    """The script under bash with gcloud/docker/curl/shutdown stand-ins (tests/vmharness.py)."""
    vm, env = prepare(tmp_path)
    (tmp_path / "docker.exit").write_text(str(docker_exit))
    run(vm, script, env)
    return vm


def test_the_script_runs_the_container_with_values_as_data_and_reports_the_exit(tmp_path):
    vm = _run(tmp_path, _script(tmp_path), docker_exit=3)
    args = next(c["argv"] for c in vm.calls("docker") if c["argv"][0] == "run")
    root = tmp_path / "vm"
    assert args == [
        "run", "--rm", "--name", NATIVE, "--network", "host",
        "-v", f"{root}/inputs:/opt/jobplane/inputs:ro", "-v", f"{root}/outputs:/opt/jobplane/outputs",
        "-v", f"{root}/checkpoints:/opt/jobplane/checkpoints", "--gpus", "all",
        "--env", "HOSTILE=" + "\n".join(HOSTILE), "--env", "LR=0.1",
        "--env", "JOBPLANE_INPUT_DIR=/opt/jobplane/inputs", "--env", "JOBPLANE_OUTPUT_DIR=/opt/jobplane/outputs",
        "--env", "JOBPLANE_CHECKPOINT_DIR=/opt/jobplane/checkpoints",
        "--entrypoint", "python", "us-docker.pkg.dev/p/r/img:1", "train.py", *HOSTILE,
    ]  # fmt: skip
    status = vm.report(f"gs://jp-status/test/{NATIVE}/exit.json")
    assert (status["state"], status["exit_code"], status["native_name"]) == ("FAILED", 3, NATIVE)
    published = next(c["argv"] for c in vm.calls("gcloud") if c["argv"][:2] == ["pubsub", "topics"])
    assert published[:4] == ["pubsub", "topics", "publish", "projects/my-project/topics/jobplane-test-events"]
    assert "jobplane-source=jobplane.gce,jobplane-native-id=" + NATIVE in published
    assert json.loads(published[published.index("--message") + 1]) == status
    login = next(c["argv"] for c in vm.calls("gcloud") if c["argv"][:2] == ["auth", "configure-docker"])
    assert login[2] == "us-docker.pkg.dev"
    assert (tmp_path / "shutdown.called").exists()
    assert not list(tmp_path.rglob("PWNED"))


def test_a_bare_command_past_max_runtime_is_reported_as_timeout(tmp_path):
    script = _script(tmp_path, image=None, command=["sleep", "30"], env={"A": "1"}, runtime=1)
    vm = _run(tmp_path, script)
    status = vm.report(f"gs://jp-status/test/{NATIVE}/exit.json")
    assert (status["state"], status["exit_code"]) == ("TIMEOUT", 124)
    assert (tmp_path / "shutdown.called").exists()


def test_a_machine_whose_job_already_ended_only_powers_off_again(tmp_path):
    vm, env = prepare(tmp_path)
    vm.put(f"gs://jp-status/test/{NATIVE}/exit.json", "{}")
    run(vm, _script(tmp_path), env)
    assert [c["argv"][:2] for c in vm.calls()] == [["storage", "ls"]]
    assert (tmp_path / "shutdown.called").exists()
