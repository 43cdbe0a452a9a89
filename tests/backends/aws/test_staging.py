"""The job wrapper and the ECS helpers' scripts, run for real under sh and bash with stub folders and a stub `aws`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from chalicelib.backends.aws import staging
from chalicelib.backends.aws.staging import Layout
from tests.factories import make_job, make_spec

SHELLS = [shutil.which(s) for s in ("sh", "bash") if shutil.which(s)]
HOSTILE = "$(touch pwned) `touch pwned2` ; rm -rf / * ' \" \n $HOME"
# What a spec's env may hold (nothing JOBPLANE_*, which the API refuses): none of it changes the wrapper.
SPEC_ENV = {
    "PATH": "/nonexistent",
    "MAX_RUNTIME_SECONDS": "99999",
    "WORKDIR": "/tmp",
    "LOG": "/dev/full",
    "COMMAND": "touch pwned-env",
    "IMAGE": "x",
    "GPUS": "all",
    "IFS": "0123456789/",
    "code": "/etc",
    "status": "99",
}
STUB_AWS = """#!{python}
# A stub `aws s3 sync|cp SRC DST ...`: s3://bucket/key is $STUB_S3/bucket/key; each call logged.
import os, shutil, sys
root = os.environ["STUB_S3"]
with open(os.path.join(root, "calls.log"), "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
_, verb, src, dst = sys.argv[1:5]
if os.environ.get("STUB_FAIL") and os.environ["STUB_FAIL"] in dst:
    sys.exit(1)
local = lambda p: os.path.join(root, p[len("s3://"):]) if p.startswith("s3://") else p
src, dst = local(src), local(dst)
if verb == "sync":
    if os.path.isdir(src):
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        os.makedirs(dst, exist_ok=True)
else:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
"""


def _layout(tmp_path: Path, exit_file: bool = True) -> Layout:
    return Layout(
        code_dir=str(tmp_path / "code"),
        work_dir=str(tmp_path / "work"),
        input_dir=str(tmp_path / "in"),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ck"),
        exit_file=str(tmp_path / "status" / "exit") if exit_file else "",
    )


def _pack(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.sh").write_text('pwd > where.txt; printf %s "$1" > arg.txt; exit "${2:-0}"\n')
    with tarfile.open(tmp_path / "code" / ("c" * 64 + ".tar.gz"), "w:gz") as tar:
        tar.add(src / "train.sh", arcname="train.sh")


# An ecs spec's code: the tarball _pack writes.
CODE = {"backend": "ecs", "code_uri": "s3://jobplane-artifacts/code/" + "c" * 64 + ".tar.gz", "code_sha256": "c" * 64}


def _wrap(shell: str, tmp_path: Path, spec, env=None, layout=None, **kwargs):
    layout = layout or _layout(tmp_path)
    argv = [shell, "-c", staging.WRAPPER, "jobplane", *staging.wrapper_args(spec, layout)]
    full = {**os.environ, **layout.variables("a" * 32, 1), **(env or {})}
    return subprocess.run(argv, cwd=tmp_path, env=full, capture_output=True, text=True, timeout=30, **kwargs)


def test_the_scripts_pass_shellcheck(tmp_path):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    for name in ("WRAPPER", "STAGE_IN", "STAGE_OUT"):
        path = tmp_path / f"{name}.sh"
        path.write_text(getattr(staging, name))
        result = subprocess.run(["shellcheck", "--shell=sh", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stdout}"


@pytest.mark.parametrize("shell", SHELLS)
def test_the_wrapper_runs_setup_then_the_command_in_the_code_folder_with_hostile_values_as_data(shell, tmp_path):
    _pack(tmp_path)
    # PATH=/nonexistent is the job's own: its programs are named by path, the wrapper's tools still run.
    setup = [("/bin/sh", "-c", 'printf "%s" "$0" > setup.txt; [ ! -f arg.txt ]', HOSTILE)]
    done = _wrap(
        shell,
        tmp_path,
        make_spec(command=["/bin/sh", "train.sh", HOSTILE, "3"], setup=[list(s) for s in setup], **CODE),
        env=SPEC_ENV,
    )
    work = tmp_path / "work"
    assert done.returncode == 3, done.stderr  # the command's own status
    assert (work / "setup.txt").read_text() == HOSTILE  # setup ran first (arg.txt did not exist yet), in the folder
    assert (work / "where.txt").read_text().strip() == str(work)
    assert (work / "arg.txt").read_text() == HOSTILE
    assert (tmp_path / "status" / "exit").read_text() == "3\n"  # what the sidecar reads
    assert (tmp_path / "out").is_dir() and (tmp_path / "ck").is_dir()
    assert not list(tmp_path.rglob("pwned*"))


@pytest.mark.parametrize("shell", SHELLS)
def test_a_failed_setup_step_stops_before_the_command_and_is_the_status(shell, tmp_path):
    _pack(tmp_path)
    setup = [("sh", "-c", "exit 0"), ("sh", "-c", "exit 7"), ("sh", "-c", "touch never.txt")]
    done = _wrap(
        shell, tmp_path, make_spec(command=["/bin/sh", "train.sh", "x"], setup=[list(s) for s in setup], **CODE)
    )
    assert done.returncode == 7
    assert (tmp_path / "status" / "exit").read_text() == "7\n"
    assert not (tmp_path / "work" / "never.txt").exists() and not (tmp_path / "work" / "arg.txt").exists()
    # Without an exit file (SageMaker) it execs the command, or exits with the failed step's status.
    direct = _wrap(
        shell, tmp_path, make_spec(command=["/bin/sh", "train.sh", "y", "4"], **CODE), layout=_layout(tmp_path, False)
    )
    assert direct.returncode == 4 and (tmp_path / "work" / "arg.txt").read_text() == "y"


def test_the_wrapper_passes_sigterm_to_the_command_and_reports_its_status(tmp_path):
    _pack(tmp_path)
    command = ["/bin/sh", "-c", 'trap "touch termed; exit 5" TERM; touch started; while :; do sleep 0.1; done']
    layout = _layout(tmp_path)
    argv = ["sh", "-c", staging.WRAPPER, "jobplane", *staging.wrapper_args(make_spec(command=command, **CODE), layout)]
    proc = subprocess.Popen(argv, cwd=tmp_path, env={**os.environ, **layout.variables("a" * 32, 1)})
    deadline = time.monotonic() + 10
    while not (tmp_path / "work" / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 5
    assert (tmp_path / "work" / "termed").exists()
    assert (tmp_path / "status" / "exit").read_text() == "5\n"


def _stub_aws(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "aws"
    stub.write_text(STUB_AWS.format(python=sys.executable))
    stub.chmod(0o755)
    (tmp_path / "s3").mkdir()
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_S3": str(tmp_path / "s3")}


def _put(tmp_path: Path, key: str, text: str) -> None:
    path = tmp_path / "s3" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_stage_in_restores_the_checkpoint_and_downloads_code_and_inputs(tmp_path):
    env = _stub_aws(tmp_path)
    odd = "data/$(touch pwned) x.csv"
    for key, text in [
        ("bkt/ckpt/step-1.pt", "ckpt"),
        ("bkt/code/" + "c" * 64 + ".tar.gz", "tar"),
        ("bkt/cifar/a.bin", "a"),
        ("bkt/cifar/sub/b.bin", "b"),
        (f"bkt/{odd}", "odd"),
    ]:
        _put(tmp_path, key, text)
    root, inputs = tmp_path / "vol", tmp_path / "vol-in"
    spec = make_job(
        "ecs",
        {
            "code_uri": "s3://bkt/code/" + "c" * 64 + ".tar.gz",
            "code_sha256": "c" * 64,
            "inputs": {"train": "s3://bkt/cifar/", "odd": f"s3://bkt/{odd}"},
        },
    ).spec
    args = staging.stage_in_args(spec, "s3://bkt/ckpt/")
    args[:2] = [str(root), str(inputs)]
    done = subprocess.run(["sh", "-c", staging.STAGE_IN, "stage-in", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (root / "checkpoints" / "step-1.pt").read_text() == "ckpt"
    assert (root / "code" / "code.tar.gz").read_text() == "tar"
    assert (inputs / "train" / "a.bin").read_text() == "a" and (inputs / "train" / "sub" / "b.bin").read_text() == "b"
    assert (inputs / "odd" / "$(touch pwned) x.csv").read_text() == "odd"  # an object: a folder with that file
    assert {p.name for p in root.iterdir()} == {"checkpoints", "code", "output", "status", "work"}
    assert not list(tmp_path.rglob("pwned")) and os.stat(root / "output").st_mode & 0o777 == 0o777


def _stage_out(tmp_path: Path, env: dict[str, str], interval: int = 1, grace: int = 0) -> subprocess.Popen:
    args = staging.stage_out_args("s3://bkt/outputs/job/", "s3://bkt/ckpt/", interval, grace)
    args[0] = str(tmp_path / "vol")
    for folder in ("output", "checkpoints", "status"):
        (tmp_path / "vol" / folder).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["sh", "-c", staging.STAGE_OUT, "stage-out", *args], env=env)


def _wait_for(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), path


def test_the_sidecar_syncs_checkpoints_then_uploads_outputs_after_the_exit_file_with_the_jobs_code(tmp_path):
    env = _stub_aws(tmp_path)
    proc = _stage_out(tmp_path, env)
    vol = tmp_path / "vol"
    (vol / "checkpoints" / "epoch-1.pt").write_text("1")
    _wait_for(tmp_path / "s3" / "bkt" / "ckpt" / "epoch-1.pt")  # synced while the job runs
    assert not (tmp_path / "s3" / "bkt" / "outputs").exists()
    (vol / "output" / "model.bin").write_text("model")
    (vol / "checkpoints" / "epoch-2.pt").write_text("2")
    (vol / "status" / "exit").write_text("3\n")
    assert proc.wait(timeout=10) == 3
    assert (tmp_path / "s3" / "bkt" / "outputs" / "job" / "model.bin").read_text() == "model"
    assert (tmp_path / "s3" / "bkt" / "ckpt" / "epoch-2.pt").read_text() == "2"


def test_the_sidecar_uploads_on_sigterm_and_a_failed_upload_fails_a_successful_job(tmp_path):
    env = _stub_aws(tmp_path)
    proc = _stage_out(tmp_path, env, interval=60)
    (tmp_path / "vol" / "output" / "partial.bin").write_text("p")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 143  # stopped before the job wrote its status
    assert (tmp_path / "s3" / "bkt" / "outputs" / "job" / "partial.bin").read_text() == "p"

    failing = _stage_out(tmp_path, {**env, "STUB_FAIL": "outputs"})
    (tmp_path / "vol" / "status" / "exit").write_text("0\n")
    assert failing.wait(timeout=10) == 1
    calls = (tmp_path / "s3" / "calls.log").read_text().splitlines()
    assert calls[-1].startswith("s3 sync ") and "ckpt" in calls[-1]  # the checkpoint still went up


def test_the_job_role_may_touch_only_the_stages_code_outputs_and_checkpoints():
    policy = staging.job_role_policy("jp-artifacts")
    resources = sorted(r for s in policy["Statement"] for r in s["Resource"])
    assert resources == [
        "arn:aws:s3:::jp-artifacts",
        "arn:aws:s3:::jp-artifacts/checkpoints/*",
        "arn:aws:s3:::jp-artifacts/code/*",
        "arn:aws:s3:::jp-artifacts/outputs/*",
    ]
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["ReadCode"]["Action"] == ["s3:GetObject"]  # code is read, never written, by a job
    assert by_sid["ListOutputsAndCheckpoints"]["Condition"] == {
        "StringLike": {"s3:prefix": ["outputs/*", "checkpoints/*"]}
    }
    json.dumps(policy)


def test_the_policy_module_prints_a_backends_job_role_policy():
    done = subprocess.run(
        [sys.executable, "-m", "chalicelib.backends.policy", "dev", "--job-role", "ecs"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    statements = json.loads(done.stdout)["Statement"]
    assert {s["Sid"] for s in statements} == {"ReadCode", "WriteOutputs", "Checkpoints", "ListOutputsAndCheckpoints"}


# --- AWS Batch: the same scripts as AWS CLI aliases, run by the real `aws` against the moto server --------
# The job: a checkpoint at once, then on SIGTERM (Batch stopping it) a last checkpoint and an output, exit 143.
STOPPABLE = (
    "import os, signal, sys, time\n"
    "ck, out = os.environ['JOBPLANE_CHECKPOINT_DIR'], os.environ['JOBPLANE_OUTPUT_DIR']\n"
    "def stop(*_):\n"
    "    open(os.path.join(ck, 'final.pt'), 'w').write(open('train.txt').read())\n"
    "    open(os.path.join(out, 'partial.bin'), 'w').write('p')\n"
    "    sys.exit(143)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "open(os.path.join(ck, 'epoch-1.pt'), 'w').write('1')\n"
    "for _ in range(600): time.sleep(0.1)\n"
)


def _here(arg: str, vol: Path, inputs: Path) -> str:
    """A container path of the Batch layout, moved under the test's folders."""
    if arg.startswith(staging.INPUT_ROOT):
        return str(inputs) + arg[len(staging.INPUT_ROOT) :]
    if arg.startswith(staging.ROOT):
        return str(vol) + arg[len(staging.ROOT) :]
    return arg


@pytest.mark.slow  # about 20 AWS CLI runs, each a few seconds of start-up under load
@pytest.mark.skipif(shutil.which("aws") is None, reason="needs the AWS CLI")
def test_batch_helpers_sync_while_the_job_runs_and_upload_when_batch_stops_it(tmp_path, moto_endpoint):
    import uuid

    from chalicelib.backends.aws.batch import BatchBackend
    from chalicelib.backends.base import Handle
    from tests.factories import boto, make_settings

    settings = make_settings(tmp_path, moto_endpoint, JOBPLANE_STAGE=f"t{uuid.uuid4().hex[:8]}")
    s3, bucket = boto(settings, "s3"), settings.artifacts_bucket
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="data/train/a.csv", Body=b"a")
    s3.put_object(Bucket=bucket, Key="data/labels.csv", Body=b"l")
    s3.put_object(Bucket=bucket, Key="ckpt/run1/epoch-0.pt", Body=b"0")
    code = tmp_path / "code.tar.gz"
    with tarfile.open(code, "w:gz") as tar:
        (tmp_path / "train.txt").write_text("from the code")
        tar.add(tmp_path / "train.txt", arcname="train.txt")
    s3.put_object(Bucket=bucket, Key="code/" + "c" * 64 + ".tar.gz", Body=code.read_bytes())
    spec = {
        "backend": "aws-batch",
        "image": "train:1",
        "command": [sys.executable, "-c", STOPPABLE],
        "code_uri": f"s3://{bucket}/code/{'c' * 64}.tar.gz",
        "code_sha256": "c" * 64,
        "inputs": {f"i{n}": f"s3://{bucket}/data/train/" for n in range(7)}
        | {"labels": f"s3://{bucket}/data/labels.csv"},
        "checkpoint_uri": f"s3://{bucket}/ckpt/run1/",
    }
    job = make_job("aws-batch", spec)
    backend = BatchBackend(settings)
    backend.validate(job.spec)  # 6 inputs with code: more than Batch's 10 containers could once hold
    backend.put_cli_aliases()
    containers = {
        c["name"]: c
        for c in backend.submit_request(job, Handle.of(job), "arn:def")["ecsPropertiesOverride"]["taskProperties"][0][
            "containers"
        ]
    }
    vol, inputs = tmp_path / "vol", tmp_path / "in"
    env = {**os.environ, "HOME": _here(staging.CLI_HOME, vol, inputs), "AWS_ENDPOINT_URL": moto_endpoint}

    def helper(name: str, **kwargs):
        argv = ["aws", *(_here(a, vol, inputs) for a in containers[name]["command"])]
        return subprocess.Popen(argv, env=env, cwd=tmp_path, **kwargs)

    assert helper("stage-tools").wait(timeout=240) == 0
    assert helper("stage-in").wait(timeout=240) == 0
    assert (inputs / "i4" / "a.csv").read_text() == "a" and (inputs / "labels" / "labels.csv").read_text() == "l"
    assert (vol / "checkpoints" / "epoch-0.pt").read_text() == "0"
    # stage-out as submitted, syncing every second instead of every minute.
    out_cmd = containers["stage-out"]["command"]
    assert out_cmd[-2:] == [str(staging.SYNC_SECONDS), str(staging.STOP_WAIT_SECONDS)]
    containers["stage-out"]["command"] = [*out_cmd[:-2], "1", str(staging.STOP_WAIT_SECONDS)]
    sidecar = helper("stage-out")
    job_env = {**os.environ, **{k["name"]: _here(k["value"], vol, inputs) for k in containers["job"]["environment"]}}
    wrapper = subprocess.Popen([_here(a, vol, inputs) for a in containers["job"]["command"]], env=job_env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        keys: set[str] = set()
        while "ckpt/run1/epoch-1.pt" not in keys and time.monotonic() < deadline:
            time.sleep(0.2)
            keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="ckpt/").get("Contents", [])}
        assert "ckpt/run1/epoch-1.pt" in keys  # synced while the job runs
        assert sidecar.poll() is None
        # Batch stops the job: the job container's wrapper gets SIGTERM (the sidecar's PID 1, the AWS CLI, has
        # no TERM handler, so the kernel drops the one sent to it).
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(timeout=30) == 143
        assert sidecar.wait(timeout=60) == 143
    finally:
        for proc in (wrapper, sidecar):
            if proc.poll() is None:
                proc.kill()
    final = s3.get_object(Bucket=bucket, Key="ckpt/run1/final.pt")["Body"].read()
    assert final == b"from the code"  # the checkpoint the job wrote when stopped, from its unpacked code folder
    artifacts = f"outputs/{job.job_id}/partial.bin"
    assert s3.get_object(Bucket=bucket, Key=artifacts)["Body"].read() == b"p"
