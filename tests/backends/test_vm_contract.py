"""The job contract on both VM scripts (EC2 user data, GCE startup script), run for real under bash.

Code, inputs and the checkpoint are staged before setup; setup runs before the command in the code folder;
outputs and checkpoints go up when the job ends (failed too) and checkpoints while it runs; the spec's env
reaches only the job; hostile values stay data; both scripts are shellcheck clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chalicelib.backends.agent import parse_report
from chalicelib.backends.aws.userdata import MAX_USER_DATA, VmJob, user_data
from chalicelib.backends.gcp.gce_script import startup_script
from chalicelib.jobs.model import FailureKind, JobStatus
from tests.vmharness import HOSTILE, TRAIN, Vm, archive, prepare, run

PY = sys.executable
JOB_ID = "e" * 32
NATIVE = f"jp-{JOB_ID}"
KINDS = ("ec2", "gce")
SCHEME = {"ec2": "s3", "gce": "gs"}
REPORT = {"ec2": f"s3://status/jobs/{NATIVE}/status.json", "gce": f"gs://status/{NATIVE}/exit.json"}


def script_for(kind: str, vm: Vm, **job) -> str:
    """The kind's script for one attempt; `job` holds the contract's values (command, env, inputs, ...)."""
    job.setdefault("env", {})
    job.setdefault("max_runtime_seconds", 60)
    common = {k: job[k] for k in ("command", "max_runtime_seconds") if k in job}
    extra = {
        k: job[k]
        for k in (
            "image",
            "gpus",
            "setup",
            "code_uri",
            "code_sha256",
            "artifacts_uri",
            "checkpoint_uri",
            "checkpoint_interval_seconds",
        )
        if k in job
    }
    if kind == "ec2":
        return user_data(
            VmJob(
                job_id=JOB_ID,
                native_id=NATIVE,
                name="train",
                env=tuple(job["env"].items()),
                status_uri=REPORT["ec2"].rsplit("/", 1)[0] + "/",
                region="us-east-1",
                workdir=str(vm.root),
                inputs=tuple(job.get("inputs", {}).items()),
                **common,
                **{k: tuple(tuple(s) for s in v) if k == "setup" else v for k, v in extra.items()},
            )
        )
    return startup_script(
        job_id=JOB_ID,
        native_id=NATIVE,
        env=job["env"],
        status_uri=REPORT["gce"],
        events_topic=None,
        idle_samples=30,
        image=job.get("image"),
        inputs=job.get("inputs", {}),
        root=str(vm.root),
        **common,
        **{k: v for k, v in extra.items() if k != "image"},
    )


def staged(kind: str, vm: Vm) -> dict:
    """Code, two inputs (a prefix and an object) and a previous attempt's checkpoint in the VM's store."""
    s = SCHEME[kind]
    code = archive({"train.py": TRAIN, "pkg/data.txt": "packed with the code"})
    sha = hashlib.sha256(code).hexdigest()
    vm.put(f"{s}://art/code/{sha}.tar.gz", code)
    vm.put(f"{s}://data/cifar/a.bin", "A")
    vm.put(f"{s}://data/cifar/sub/b.bin", "B")
    vm.put(f"{s}://data/labels.csv", "cat,dog")
    vm.put(f"{s}://art/checkpoints/{JOB_ID}/step-1.pt", "one")
    return {
        "code_uri": f"{s}://art/code/{sha}.tar.gz",
        "code_sha256": sha,
        "inputs": {"cifar": f"{s}://data/cifar/", "labels": f"{s}://data/labels.csv"},
        "artifacts_uri": f"{s}://art/outputs/{JOB_ID}/",
        "checkpoint_uri": f"{s}://art/checkpoints/{JOB_ID}/",
    }


SETUP = [
    [PY, "-c", "import os; open('setup-ran', 'w').write(os.getcwd()); open('order', 'w').write('1')"],
    ["/bin/sh", "-c", 'printf 2 >> order && test -e "$JOBPLANE_INPUT_DIR/labels/labels.csv"'],
]


@pytest.mark.parametrize("kind", KINDS)
def test_the_job_finds_its_code_inputs_and_checkpoint_and_a_failed_job_still_uploads(tmp_path, kind):
    vm, env = prepare(tmp_path)
    where = staged(kind, vm)
    script = script_for(kind, vm, command=[PY, "train.py", *HOSTILE], setup=SETUP, env={"LR": "0.1"}, **where)
    run(vm, script, env)

    report = vm.report(REPORT[kind])
    assert (report["state"], report["exit_code"]) == ("FAILED", 3)
    seen = json.loads(vm.obj(where["artifacts_uri"] + "report.json").read_text())
    code_dir = str(vm.root / "code")
    assert seen["argv"] == HOSTILE
    assert seen["cwd"] == code_dir and seen["setup"] == code_dir  # setup ran first, in the code folder
    assert seen["setup_order"] == "12" and seen["code_file"] == "packed with the code"
    assert seen["inputs"] == ["cifar/a.bin", "cifar/sub/b.bin", "labels/labels.csv"]
    assert seen["labels"] == "cat,dog" and seen["input_modes"] == [0]  # read-only
    assert seen["restored"] == ["step-1.pt"]
    assert seen["vars"] == {
        "JOBPLANE_INPUT_DIR": str(vm.root / "inputs"),
        "JOBPLANE_OUTPUT_DIR": str(vm.root / "outputs"),
        "JOBPLANE_CHECKPOINT_DIR": str(vm.root / "checkpoints"),
    }
    assert seen["lr"] == "0.1"
    # The failed job's outputs and its new checkpoint went up, before the report.
    assert vm.obj(where["artifacts_uri"] + "model/weights.bin").read_text() == "w"
    assert vm.obj(where["checkpoint_uri"] + "step-2.pt").read_text() == "two"
    uploads = [c["argv"] for c in vm.calls() if c["tool"] in ("aws", "gcloud")]
    last = [i for i, a in enumerate(uploads) if REPORT[kind] in a and "ls" not in a][-1]
    assert any(where["artifacts_uri"] in a for a in uploads[:last])
    assert list(tmp_path.rglob("PWNED*")) == []
    assert (tmp_path / "shutdown.called").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoints_go_up_while_the_job_runs(tmp_path, kind):
    vm, env = prepare(tmp_path)
    where = staged(kind, vm)
    landed = vm.obj(where["checkpoint_uri"] + "live.pt")
    wait = (
        "import os, sys, time\n"
        "open(os.path.join(os.environ['JOBPLANE_CHECKPOINT_DIR'], 'live.pt'), 'w').write('x')\n"
        "deadline = time.time() + 10\n"
        "while not os.path.exists(sys.argv[1]) and time.time() < deadline: time.sleep(0.1)\n"
        "open(os.path.join(os.environ['JOBPLANE_OUTPUT_DIR'], 'seen'), 'w').write(str(os.path.exists(sys.argv[1])))\n"
    )
    script = script_for(kind, vm, command=[PY, "-c", wait, str(landed)], checkpoint_interval_seconds=1, **where)
    run(vm, script, env)
    assert vm.obj(where["artifacts_uri"] + "seen").read_text() == "True"
    assert vm.report(REPORT[kind])["state"] == "SUCCEEDED"


@pytest.mark.parametrize("kind", KINDS)
def test_a_machine_shutting_down_under_the_job_reports_it_interrupted_after_the_uploads(tmp_path, kind):
    # A spot reclaim or a preemption shuts the OS down: every process of the script gets TERM.
    vm, env = prepare(tmp_path)
    where = staged(kind, vm)
    landed = vm.obj(where["checkpoint_uri"] + "epoch")
    work = (
        "import os, time\n"
        "open(os.path.join(os.environ['JOBPLANE_CHECKPOINT_DIR'], 'epoch'), 'w').write('2')\n"
        "open(os.path.join(os.environ['JOBPLANE_OUTPUT_DIR'], 'partial'), 'w').write('p')\n"
        "time.sleep(60)\n"
    )
    script = script_for(kind, vm, command=[PY, "-c", work], checkpoint_interval_seconds=1, **where)
    (vm.here / "script.sh").write_text(script)
    proc = subprocess.Popen(["bash", str(vm.here / "script.sh")], cwd=vm.here, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not landed.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert landed.read_text() == "2"
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    report = vm.report(REPORT[kind])
    assert report["state"] == "INTERRUPTED", report
    seen = parse_report(report, job_id=JOB_ID, attempt=1)
    assert (seen.status, seen.failure_kind) == (JobStatus.FAILED, FailureKind.INTERRUPTED)
    assert vm.obj(where["artifacts_uri"] + "partial").read_text() == "p"  # outputs went up all the same
    assert "the machine is shutting down under the job" in vm.log()
    assert (tmp_path / "shutdown.called").exists()


def _header_names(script: str) -> list[str]:
    return sorted(set(re.findall(r"^([A-Z][A-Z0-9_]*)=", script, re.M)))


@pytest.mark.parametrize("kind", KINDS)
def test_the_specs_env_changes_nothing_the_script_does(tmp_path, kind):
    vm, env = prepare(tmp_path)
    where = staged(kind, vm)
    dump = tmp_path / "job-env.json"
    command = [
        PY,
        "-c",
        "import json, os, sys, time; json.dump(dict(os.environ), open(sys.argv[1], 'w')); time.sleep(30)",
    ]
    probe = script_for(kind, vm, command=[*command, str(dump)], **where)
    names = [n for n in _header_names(probe) if not n.startswith(("JOBPLANE_", "AWS_"))]
    assert {"MAX_RUNTIME_SECONDS", "ROOT", "LOG", "JOB_ARGV", "IMAGE", "GPUS", "REPORT_URI"} <= set(names)
    hostile = {name: f"{SCHEME[kind]}://evil/{name}/" for name in names}
    hostile.update(
        MAX_RUNTIME_SECONDS="99999",
        GPUS="8",
        IMAGE="evil/image:1",
        PATH="/nonexistent-bin",
        WORKDIR=str(tmp_path / "elsewhere"),
        ROOT=str(tmp_path / "elsewhere"),
        LOG=str(tmp_path / "elsewhere.log"),
        COMMAND="touch PWNED_command",
        STATUS_URI=f"{SCHEME[kind]}://evil/status/",
        LOG_INTERVAL="0",
        CHECKPOINT_INTERVAL="0",
    )
    script = script_for(kind, vm, command=[*command, str(dump)], env=hostile, max_runtime_seconds=2, **where)
    took = run(vm, script, env)

    assert took < 20  # the script's own limit (2 s), not the job's MAX_RUNTIME_SECONDS
    assert (vm.report(REPORT[kind])["state"], vm.report(REPORT[kind])["max_runtime_seconds"]) == ("TIMEOUT", 2)
    seen = json.loads(dump.read_text())
    assert {k: seen.get(k) for k in hostile} == hostile  # the job got every value as it was written
    assert seen["JOBPLANE_INPUT_DIR"] == str(vm.root / "inputs")
    assert [c for c in vm.calls() if c["tool"] == "docker"] == []
    assert not any("evil" in word for c in vm.calls() for word in c["argv"])
    assert (vm.root / "output.log").exists() and not (tmp_path / "elsewhere").exists()
    assert not (tmp_path / "elsewhere.log").exists() and list(tmp_path.rglob("PWNED*")) == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("members", "digest"),
    [
        ({"ok.txt": "x", "../escaped.txt": "x"}, None),
        ({"ok.txt": "x", "/tmp/escaped-abs.txt": "x"}, None),
        ({"ok.txt": "x", "sub/../../escaped.txt": "x"}, None),
        ({"ok.txt": "x"}, "0" * 64),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "wrong-digest"],
)
def test_code_that_is_not_the_digest_or_escapes_its_folder_is_refused_and_nothing_runs(tmp_path, kind, members, digest):
    vm, env = prepare(tmp_path)
    s = SCHEME[kind]
    code = archive(members)
    vm.put(f"{s}://art/code/x.tar.gz", code)
    marker = tmp_path / "ran"
    script = script_for(
        kind,
        vm,
        command=[PY, "-c", f"open({str(marker)!r}, 'w')"],
        code_uri=f"{s}://art/code/x.tar.gz",
        code_sha256=digest or hashlib.sha256(code).hexdigest(),
        artifacts_uri=f"{s}://art/outputs/{JOB_ID}/",
    )
    run(vm, script, env)
    report = vm.report(REPORT[kind])
    assert (report["state"], report["exit_code"]) == ("FAILED", None)
    assert report["reason"] == "staging failed: code_uri could not be unpacked"
    assert not marker.exists()
    assert not (vm.root / "code" / "ok.txt").exists()
    assert list(tmp_path.rglob("escaped*")) == [] and not Path("/tmp/escaped-abs.txt").exists()
    from chalicelib.backends.agent import parse_report

    seen = parse_report(json.dumps(report), job_id=JOB_ID, attempt=1)
    assert (seen.status.value, seen.exit_code, seen.reason) == ("FAILED", None, report["reason"])


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_input_fails_the_job_naming_it_before_anything_runs(tmp_path, kind):
    vm, env = prepare(tmp_path)
    marker = tmp_path / "ran"
    script = script_for(
        kind, vm, command=[PY, "-c", f"open({str(marker)!r}, 'w')"], inputs={"gone": f"{SCHEME[kind]}://data/gone.csv"}
    )
    run(vm, script, env)
    assert vm.report(REPORT[kind])["reason"] == "staging failed: inputs.gone could not be downloaded"
    assert not marker.exists()


LOGIN = {
    "ec2": ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/train:1", "123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
    "gce": ("europe-docker.pkg.dev/p/r/train:1", "europe-docker.pkg.dev"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_with_an_image_the_container_gets_the_folders_the_env_and_the_steps_after_a_registry_login(tmp_path, kind):
    vm, env = prepare(tmp_path)
    where = staged(kind, vm)
    (tmp_path / "docker.exit").write_text("3")
    image, registry = LOGIN[kind]
    script = script_for(
        kind, vm, command=["python", "train.py", *HOSTILE], setup=[["pip", "install", "-r", "req.txt"]],
        env={"LR": "0.1", "IMAGE": "evil"}, image=image, gpus=1, **where,
    )  # fmt: skip
    run(vm, script, env)

    docker = vm.calls("docker")
    argv = next(c["argv"] for c in docker if c["argv"][0] == "run")
    root = vm.root
    assert argv[:5] == ["run", "--rm", "--name", NATIVE, "--network"]
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert mounts == [
        f"{root}/inputs:/opt/jobplane/inputs:ro",
        f"{root}/outputs:/opt/jobplane/outputs",
        f"{root}/checkpoints:/opt/jobplane/checkpoints",
        f"{root}/code:/opt/jobplane/code",
    ]
    assert argv[argv.index("--workdir") + 1] == "/opt/jobplane/code"
    assert argv[argv.index("--gpus") + 1] == "all"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--env"] == [
        "LR=0.1",
        "IMAGE=evil",
        "JOBPLANE_INPUT_DIR=/opt/jobplane/inputs",
        "JOBPLANE_OUTPUT_DIR=/opt/jobplane/outputs",
        "JOBPLANE_CHECKPOINT_DIR=/opt/jobplane/checkpoints",
    ]
    entry = argv.index("--entrypoint")
    assert argv[entry + 1 : entry + 3] == ["/bin/sh", image]
    assert argv[entry + 3] == "-c" and argv[entry + 5] == "jobplane"  # the fixed runner, then the steps as data
    assert argv[entry + 6 :] == [
        "4",
        "pip",
        "install",
        "-r",
        "req.txt",
        str(2 + len(HOSTILE)),
        "python",
        "train.py",
        *HOSTILE,
    ]
    # Staged on the host before the container started; read-only inside it.
    assert sorted(p.name for p in (root / "inputs" / "cifar").rglob("*.bin")) == ["a.bin", "b.bin"]
    assert (root / "checkpoints" / "step-1.pt").read_text() == "one"
    # The registry login came first, with the machine's role.
    if kind == "ec2":
        login = next(c for c in vm.calls("aws") if c["argv"][:2] == ["ecr", "get-login-password"])
        assert login["argv"][login["argv"].index("--region") + 1] == "eu-west-1"
        docker_login = next(c for c in docker if c["argv"][0] == "login")
        assert docker_login["argv"][-1] == registry and "--password-stdin" in docker_login["argv"]
        assert (tmp_path / "docker-login.txt").read_text() == "ecr-token\n"
    else:
        login = next(c for c in vm.calls("gcloud") if c["argv"][:2] == ["auth", "configure-docker"])
        assert login["argv"][2] == registry
        docker_login = login
    run_call = next(c for c in docker if c["argv"][0] == "run")
    assert docker_login["t"] <= run_call["t"]
    # What the container wrote went up although it failed.
    report = vm.report(REPORT[kind])
    assert (report["state"], report["exit_code"]) == ("FAILED", 3)
    assert vm.obj(where["artifacts_uri"] + "from-container.txt").read_text() == "written in the container"
    assert list(tmp_path.rglob("PWNED*")) == []


@pytest.mark.parametrize("kind", KINDS)
def test_the_setup_runner_stops_at_the_first_failing_step_with_its_status(tmp_path, kind):
    vm, env = prepare(tmp_path)
    marker = tmp_path / "command-ran"
    script = script_for(
        kind, vm, command=[PY, "-c", f"open({str(marker)!r}, 'w')"], setup=[["/bin/sh", "-c", "exit 7"]]
    )
    run(vm, script, env)
    report = vm.report(REPORT[kind])
    assert (report["state"], report["exit_code"]) == ("FAILED", 7)
    assert "setup step 1 failed with exit status 7" in vm.log()
    assert not marker.exists()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (make system-deps)")
@pytest.mark.parametrize("kind", KINDS)
def test_the_full_scripts_pass_shellcheck(tmp_path, kind):
    vm, _ = prepare(tmp_path)
    where = staged(kind, vm)
    for image in (None, LOGIN[kind][0]):
        path = tmp_path / "script.sh"
        path.write_text(script_for(kind, vm, command=["python", "t.py"], setup=SETUP, image=image, **where))
        result = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True)
        assert (result.returncode, result.stdout) == (0, "")


def test_the_runner_is_posix_sh(tmp_path):
    """The same runner runs inside images whose /bin/sh is dash or busybox: it must not rely on bash."""
    from chalicelib.backends.agent import RUN_STEPS_SH, step_words

    dash = shutil.which("dash")
    if dash is None:
        pytest.skip("dash is not installed")
    steps = step_words(
        [["/bin/sh", "-c", "printf 1 > out"]], ["/bin/sh", "-c", 'printf "%s" "$1" >> out', "x", *HOSTILE]
    )
    subprocess.run([dash, "-c", RUN_STEPS_SH, "jobplane", *steps], cwd=tmp_path, check=True)
    assert (tmp_path / "out").read_text() == "1" + HOSTILE[0]
    assert list(tmp_path.rglob("PWNED*")) == []
    if shutil.which("shellcheck"):
        path = tmp_path / "runner.sh"
        path.write_text("#!/bin/sh\n" + RUN_STEPS_SH)
        result = subprocess.run(["shellcheck", "--shell=sh", str(path)], capture_output=True, text=True)
        assert (result.returncode, result.stdout) == (0, "")


def test_a_realistic_ec2_script_keeps_well_under_the_user_data_limit(tmp_path):
    vm, _ = prepare(tmp_path)
    where = staged("ec2", vm)
    script = script_for(
        "ec2", vm, command=["python", "train.py", "--epochs", "10"], setup=SETUP, env={"LR": "0.1"},
        image=LOGIN["ec2"][0], gpus=4, **where,
    )  # fmt: skip
    size = len(script.encode())
    assert size < MAX_USER_DATA - 5 * 1024, size  # at least 5 KiB left for the job's own values


def _header(script: str, *names: str) -> dict[str, list[str]]:
    """Arrays and values of the script's header, as bash reads them."""
    head = script.split("\nreport_state()")[0]
    found = {}
    for name in names:
        out = subprocess.run(
            ["bash", "-c", f'{head}\nprintf "%s\\0" "${{{name}[@]}}"'], capture_output=True, check=True
        )
        found[name] = out.stdout.decode().split("\0")[:-1]
    return found


def test_the_backends_give_their_scripts_the_contracts_locations(tmp_path):
    from chalicelib.backends.aws.ec2 import Ec2Backend
    from chalicelib.backends.base import Handle
    from chalicelib.backends.gcp.gce import GceBackend
    from tests.factories import gcp_env, make_job, make_settings

    settings = make_settings(
        tmp_path, **gcp_env("http://127.0.0.1:9"), JOBPLANE_EC2_AMI="ami-1", JOBPLANE_ARTIFACTS_BUCKET="aws-art"
    )
    names = (
        "ARTIFACTS_URI",
        "CHECKPOINT_URI",
        "CHECKPOINT_INTERVAL",
        "CODE_URI",
        "INPUT_NAMES",
        "INPUT_URIS",
        "JOB_ARGV",
    )
    sha = "a" * 64
    for backend, s, bucket in (
        (Ec2Backend(settings), "s3", "aws-art"),
        (GceBackend(settings, client=object()), "gs", "jobplane-test-artifacts"),
    ):
        spec = {
            "command": "python train.py",
            "setup": "pip install -r requirements.txt",
            "code_uri": f"{s}://code-bucket/code/{sha}.tar.gz",
            "code_sha256": sha,
            "inputs": [f"{s}://data/cifar/"],
        }
        job = make_job(backend.name, spec, job_id=JOB_ID)
        if s == "s3":
            script = user_data(backend.vm_job(job, Handle.of(job)))
        else:
            script = backend.instance(job, Handle.of(job)).metadata.items[0].value
        seen = _header(script, *names)
        assert seen["ARTIFACTS_URI"] == [f"{s}://{bucket}/outputs/{JOB_ID}/"]
        assert seen["CHECKPOINT_URI"] == [f"{s}://{bucket}/checkpoints/{JOB_ID}/"]
        assert seen["CHECKPOINT_INTERVAL"] == ["60"]
        assert seen["CODE_URI"] == [spec["code_uri"]]
        assert (seen["INPUT_NAMES"], seen["INPUT_URIS"]) == (["0"], [f"{s}://data/cifar/"])
        runner = seen["JOB_ARGV"]
        assert runner[:2] == ["/bin/sh", "-c"] and runner[3:] == [
            "jobplane", "3", "/bin/sh", "-c", spec["setup"], "3", "/bin/sh", "-c", spec["command"],
        ]  # fmt: skip


def test_ec2_checkpoint_seconds_sets_the_user_datas_checkpoint_interval(tmp_path):
    from chalicelib.backends.aws.ec2 import Ec2Backend
    from chalicelib.backends.base import Handle
    from tests.factories import make_job, make_settings

    backend = Ec2Backend(make_settings(tmp_path, JOBPLANE_EC2_AMI="ami-1", JOBPLANE_EC2_CHECKPOINT_SECONDS="2"))
    job = make_job(backend.name, {"command": "python train.py"}, job_id=JOB_ID)
    assert _header(user_data(backend.vm_job(job, Handle.of(job))), "CHECKPOINT_INTERVAL") == {
        "CHECKPOINT_INTERVAL": ["2"]
    }


def test_ec2_refuses_a_spec_whose_user_data_would_pass_the_limit(tmp_path):
    from chalicelib.backends.aws.ec2 import Ec2Backend
    from chalicelib.errors import UnsupportedError
    from tests.factories import make_settings, make_spec

    backend = Ec2Backend(make_settings(tmp_path, JOBPLANE_EC2_AMI="ami-1"))
    backend.validate(make_spec(backend="ec2", env={"BIG": "x" * 5000}))
    with pytest.raises(UnsupportedError) as refused:
        backend.validate(make_spec(backend="ec2", env={"BIG": "x" * 10_000}))
    assert refused.value.details[0]["field"] == "env" and str(MAX_USER_DATA) in refused.value.message
