"""The VM agent contract: one exit table through the three real writers, one parser, one set of job variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.backends.agent import ExitState, StopCause, exit_state, make_report, parse_report
from chalicelib.backends.aws.userdata import VmJob, user_data
from chalicelib.backends.base import Handle
from chalicelib.backends.gcp.gce_script import startup_script
from chalicelib.jobs.model import FailureKind, JobStatus
from tests import vmharness
from tests.factories import ROOT, make_job, make_settings, wait_for

PY = sys.executable
JOB_ID = "c" * 32
NATIVE = f"jp-{JOB_ID}"

# One table: the same command ends the same way whichever agent ran it.
CASES = {
    "exits 0": (
        [PY, "-c", "pass"],
        60,
        (JobStatus.SUCCEEDED, None, 0, "SUCCEEDED", "exit code 0"),
    ),
    "exits 3": (
        [PY, "-c", "import sys; sys.exit(3)"],
        60,
        (JobStatus.FAILED, FailureKind.USER_ERROR, 3, "FAILED", "exit code 3"),
    ),
    "killed by a signal": (
        [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
        60,
        (JobStatus.FAILED, FailureKind.USER_ERROR, 137, "FAILED", "killed by signal SIGKILL (exit code 137)"),
    ),
    "past max runtime": (
        [PY, "-c", "import time; time.sleep(30)"],
        1,
        (JobStatus.FAILED, FailureKind.TIMEOUT, 124, "TIMEOUT", "exceeded max_runtime_minutes (0)"),
    ),
}


def run_ec2(tmp_path: Path, command: list[str], max_runtime: int, log_interval: int = 60) -> Path:
    """The EC2 user data under bash with aws/shutdown stand-ins; returns the folder of uploaded objects."""
    vm, env = vmharness.prepare(tmp_path)
    job = VmJob(
        job_id=JOB_ID,
        native_id=NATIVE,
        name="agent",
        command=tuple(command),
        env=(("A", "1"),),
        max_runtime_seconds=max_runtime,
        status_uri="s3://artifacts/jobplane/test/jobs/c/jp-c/",
        region="us-east-1",
        workdir=str(vm.root),
        log_interval_seconds=log_interval,
    )
    vmharness.run(vm, user_data(job), env, timeout=30)
    return vm.obj(job.status_uri)


def run_gce(tmp_path: Path, command: list[str], max_runtime: int, log_interval: int = 60) -> Path:
    """The GCE startup script under bash with gcloud/metadata stand-ins; returns the folder of uploads."""
    vm, env = vmharness.prepare(tmp_path)
    script = startup_script(
        job_id=JOB_ID,
        native_id=NATIVE,
        image=None,
        command=command,
        env={"A": "1"},
        status_uri=f"gs://jp-status/test/{NATIVE}/exit.json",
        events_topic=None,
        max_runtime_seconds=max_runtime,
        idle_samples=30,
        log_interval_seconds=log_interval,
        root=str(vm.root),
    )
    vmharness.run(vm, script, env, timeout=30)
    return vm.obj(f"gs://jp-status/test/{NATIVE}/")


def run_local(tmp_path: Path, command: list[str], max_runtime: int) -> bytes:
    """The local runner for real; returns the status.json it wrote."""
    folder = tmp_path / NATIVE
    folder.mkdir()
    spec = {
        "job_id": JOB_ID,
        "native_id": NATIVE,
        "attempt": 1,
        "command": command,
        "env": {"PATH": os.environ["PATH"]},
        "cwd": str(tmp_path),
        "max_runtime_seconds": max_runtime,
        "event_url": None,
        "region": "us-east-1",
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "JOBPLANE_KILL_GRACE_SECONDS": "0.5"}
    subprocess.run(
        [PY, "-m", "chalicelib.backends.local.runner", str(folder)], cwd=ROOT, env=env, timeout=30, check=True
    )
    return (folder / "status.json").read_bytes()


def _report_of(writer: str, tmp_path: Path, command: list[str], max_runtime: int) -> bytes:
    if writer == "ec2":
        return (run_ec2(tmp_path, command, max_runtime) / "status.json").read_bytes()
    if writer == "gce":
        return (run_gce(tmp_path, command, max_runtime) / "exit.json").read_bytes()
    return run_local(tmp_path, command, max_runtime)


def _seen(obs) -> tuple:
    return (obs.status, obs.failure_kind, obs.exit_code, obs.native_status, obs.reason)


@pytest.mark.parametrize("writer", ["ec2", "gce", "local"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_writer_reports_the_same_case_as_the_same_observation(tmp_path, writer, case):
    command, max_runtime, expected = CASES[case]
    raw = _report_of(writer, tmp_path, command, max_runtime)
    report = json.loads(raw)
    assert (report["v"], report["job_id"], report["attempt"], report["native_name"]) == (1, JOB_ID, 1, NATIVE)
    obs = parse_report(raw, job_id=JOB_ID, attempt=1)
    assert _seen(obs) == expected
    assert (obs.job_id, obs.attempt) == (JOB_ID, 1)
    assert obs.started_at is not None and obs.at is not None and obs.at >= obs.started_at


def test_the_exit_rules_put_the_agents_own_stop_first():
    assert exit_state(0) is ExitState.SUCCEEDED
    assert exit_state(3) is ExitState.FAILED
    assert exit_state(143, StopCause.CANCEL) is ExitState.CANCELLED
    assert exit_state(137, StopCause.TIMEOUT) is ExitState.TIMEOUT
    assert exit_state(0, StopCause.INTERRUPT) is ExitState.INTERRUPTED
    cancelled = make_report(
        job_id=JOB_ID,
        attempt=2,
        exit_code=143,
        stopped_by=StopCause.CANCEL,
        started_at=None,
        finished_at="2025-01-01T00:00:00Z",
    )
    obs = parse_report(cancelled, job_id=JOB_ID, attempt=2)
    assert _seen(obs) == (JobStatus.CANCELLED, None, 143, "CANCELLED", "cancelled on request")
    interrupted = {**cancelled, "state": "INTERRUPTED", "reason": ""}
    obs = parse_report(interrupted, job_id=JOB_ID, attempt=2)
    assert (obs.status, obs.failure_kind) == (JobStatus.FAILED, FailureKind.INTERRUPTED)


GOOD = make_report(job_id=JOB_ID, attempt=1, exit_code=0, started_at=None, finished_at="2025-01-01T00:00:00Z")


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"exit_code": 0, "timed_out": False}).encode(), "v: None"),
        ({**GOOD, "v": 2}, "v: 2"),
        ({**GOOD, "state": "DONE"}, "state: 'DONE'"),
        ({**GOOD, "exit_code": 3}, "state: SUCCEEDED with exit_code 3"),
        ({**GOOD, "exit_code": None}, "state: SUCCEEDED with exit_code None"),
        ({**GOOD, "exit_code": "0"}, "exit_code: '0'"),
        ({**GOOD, "exit_code": True}, "exit_code: True"),
        ({**GOOD, "state": "FAILED", "exit_code": 300}, "exit_code: 300"),
        ({**GOOD, "reason": 5}, "reason"),
        ({**GOOD, "finished_at": "yesterday"}, "finished_at: 'yesterday'"),
        ({**GOOD, "started_at": 12}, "started_at: 12"),
    ],
)
def test_a_malformed_report_fails_the_job_as_a_backend_error_naming_the_field(raw, names):
    obs = parse_report(raw, job_id=JOB_ID, attempt=1)
    assert (obs.status, obs.failure_kind, obs.native_status) == (JobStatus.FAILED, FailureKind.BACKEND_ERROR, "CORRUPT")
    assert obs.reason.startswith("unreadable exit report: ") and names in obs.reason
    assert (obs.job_id, obs.attempt) == (JOB_ID, 1)


def test_another_jobs_or_attempts_report_is_ignored_as_if_there_were_none():
    assert parse_report(GOOD, job_id="d" * 32, attempt=1) is None
    assert parse_report(GOOD, job_id=JOB_ID, attempt=2) is None
    assert parse_report(json.dumps({**GOOD, "attempt": "1"}), job_id=JOB_ID, attempt=1) is None
    assert parse_report(None, job_id=JOB_ID, attempt=1) is None
    assert parse_report(json.dumps(GOOD).encode(), job_id=JOB_ID, attempt=1).status is JobStatus.SUCCEEDED


def test_unknown_keys_are_ignored_so_agents_can_add_some():
    obs = parse_report({**GOOD, "heartbeat": "2025-01-01T00:00:00Z", "gpu_percent": 42}, job_id=JOB_ID, attempt=1)
    assert obs.status is JobStatus.SUCCEEDED


def test_a_script_refuses_a_native_name_that_is_not_the_jobs():
    with pytest.raises(ValueError, match="native_id"):
        user_data(VmJob(JOB_ID, 'jp-x", "state": "SUCCEEDED', "n", ("true",), (), 60, "s3://b/p/", "us-east-1"))
    with pytest.raises(ValueError, match="native_id"):
        startup_script(
            job_id=JOB_ID,
            native_id=f"jp-{'d' * 32}",
            image=None,
            command=["true"],
            env={},
            status_uri="gs://b/x/exit.json",
            events_topic=None,
            max_runtime_seconds=60,
            idle_samples=30,
        )


# --- log shipping ---------------------------------------------------------------------------
LOGGING = [PY, "-c", "import time\nfor i in range(4):\n    print('line', i, flush=True); time.sleep(1)"]


def _uploads(tmp_path: Path) -> list[tuple[str, str]]:
    """(destination, what was uploaded) per upload the scripts made, in order."""
    calls = vmharness.Vm(tmp_path, tmp_path / "vm").calls()
    return [(c["argv"][3] if c["tool"] == "gcloud" else c["argv"][-1], c["uploaded"]) for c in calls if "uploaded" in c]


@pytest.mark.parametrize("writer", ["ec2", "gce"])
def test_the_vm_scripts_ship_the_log_while_the_job_runs_and_in_full_before_the_report(tmp_path, writer):
    run = run_ec2 if writer == "ec2" else run_gce
    run(tmp_path, LOGGING, 60, log_interval=1)
    uploads = _uploads(tmp_path)
    shipped = [text for uri, text in uploads if uri.endswith("/log.txt")]
    assert len(shipped) >= 3  # at least two while it ran, and the last one
    assert "line 3" not in shipped[0]  # the first went up before the job ended
    assert all(earlier in later for earlier, later in zip(shipped, shipped[1:], strict=False))
    assert all(f"line {i}" in shipped[-1] for i in range(4))
    uris = [uri for uri, _ in uploads]
    report = "status.json" if writer == "ec2" else "exit.json"
    assert uris[-1].endswith(report) and uris[-2].endswith("/log.txt")
    folder = uris[-1].rsplit("/", 1)[0]
    assert {u for u in uris if u.endswith("log.txt")} == {f"{folder}/log.txt"}


def test_the_log_interval_is_the_scripts_own_not_the_jobs_env():
    job = VmJob(JOB_ID, NATIVE, "n", ("true",), (("LOG_INTERVAL", "0"),), 60, "s3://b/p/", "us-east-1")
    script = user_data(job)
    assert "LOG_INTERVAL=60\n" in script
    assert "'LOG_INTERVAL=0'" in script  # in the job's env array only


# --- one name per job variable on every backend --------------------------------------------
OUTPUTS, CHECKPOINTS = "s3://bucket/outputs/", "s3://bucket/checkpoints/train/"
EXPECTED = {
    "JOBPLANE_JOB_ID": JOB_ID,
    "JOBPLANE_ATTEMPT": "2",
    "JOBPLANE_OUTPUT_URI": OUTPUTS,
    "JOBPLANE_CHECKPOINT_URI": CHECKPOINTS,
    "LR": "0.1",
}


CONTRACT = {"env": {"LR": "0.1"}, "outputs": OUTPUTS, "checkpoint_uri": CHECKPOINTS}  # the spec EXPECTED is of
RETRIED = {"job_id": JOB_ID, "attempt": 2}  # the job EXPECTED is of


def _ours(env: dict[str, str]) -> dict[str, str]:
    # The *_DIR folders are each backend's own paths (its contract test checks them), the names are shared.
    return {k: v for k, v in env.items() if (k.startswith("JOBPLANE_") and not k.endswith("_DIR")) or k == "LR"}


def _on_gcs(expected: dict[str, str]) -> dict[str, str]:
    return {k: v.replace("s3://", "gs://") for k, v in expected.items()}


def _script_env(script: str) -> dict[str, str]:
    """The JOB_ENV array of a generated script, as bash sees it."""
    probe = script.split("\n")
    line = next(x for x in probe if x.startswith("JOB_ENV=("))
    out = subprocess.run(["bash", "-c", line + '\nprintf "%s\\0" "${JOB_ENV[@]}"'], capture_output=True, check=True)
    return dict(kv.split("=", 1) for kv in out.stdout.decode().split("\0")[:-1])


def test_every_backend_gives_the_job_the_same_variable_names(tmp_path):
    from chalicelib.backends.aws.batch import BatchBackend
    from chalicelib.backends.aws.ec2 import Ec2Backend
    from chalicelib.backends.aws.ecs import EcsBackend
    from chalicelib.backends.aws.sagemaker import SageMakerBackend
    from chalicelib.backends.gcp.gce import GceBackend
    from chalicelib.backends.gcp.vertex import VertexBackend

    settings = make_settings(
        tmp_path,
        JOBPLANE_SAGEMAKER_ROLE="arn:aws:iam::123456789012:role/sm",
        JOBPLANE_ECS_CLUSTER="cluster",
        JOBPLANE_EC2_AMI="ami-123",
        JOBPLANE_ARTIFACTS_BUCKET="artifacts",
        JOBPLANE_GCP_PROJECT="p",
        JOBPLANE_GCP_STATUS_URI="gs://jp-status/test",
    )
    seen = {}
    job = make_job("sagemaker", {**CONTRACT, "image": "train:1"}, **RETRIED)
    seen["sagemaker"] = SageMakerBackend(settings).training_job_request(job, Handle.of(job))["Environment"]
    job = make_job("aws-batch", {**CONTRACT, "image": "train:1"}, **RETRIED)
    batch = BatchBackend(settings).submit_request(job, Handle.of(job), "def")["ecsPropertiesOverride"]
    main = next(c for c in batch["taskProperties"][0]["containers"] if c["name"] == "job")
    seen["aws-batch"] = {e["name"]: e["value"] for e in main["environment"]}
    job = make_job("ecs", {**CONTRACT, "image": "train:1"}, **RETRIED)
    ecs = EcsBackend(settings).run_task_request(job, Handle.of(job), "def")["overrides"]["containerOverrides"]
    seen["ecs"] = {e["name"]: e["value"] for e in next(c for c in ecs if c["name"] == "job")["environment"]}
    gcs = {
        "outputs": _on_gcs(EXPECTED)["JOBPLANE_OUTPUT_URI"],
        "checkpoint_uri": _on_gcs(EXPECTED)["JOBPLANE_CHECKPOINT_URI"],
    }
    job = make_job("vertex", {**CONTRACT, "image": "train:1", **gcs}, **RETRIED)
    container = VertexBackend(settings).custom_job(job, Handle.of(job)).job_spec.worker_pool_specs[0].container_spec
    seen["vertex"] = {e.name: e.value for e in container.env}
    job = make_job("ec2", {**CONTRACT, "image": "train:1"}, **RETRIED)
    seen["ec2"] = _script_env(user_data(Ec2Backend(settings).vm_job(job, Handle.of(job))))
    job = make_job("gce", {**CONTRACT, "image": "train:1", **gcs}, **RETRIED)
    instance = GceBackend(settings, client=object()).instance(job, Handle.of(job))
    seen["gce"] = _script_env(instance.metadata.items[0].value)
    expected = {name: _on_gcs(EXPECTED) if name in ("vertex", "gce") else EXPECTED for name in seen}
    assert {name: _ours(env) for name, env in seen.items()} == expected
    # The folder variables (JOBPLANE_*_DIR) are each backend's paths; the staged backends set all three.
    for name in ("sagemaker", "aws-batch", "ecs", "vertex"):
        assert {"JOBPLANE_INPUT_DIR", "JOBPLANE_OUTPUT_DIR", "JOBPLANE_CHECKPOINT_DIR"} <= set(seen[name])


def test_the_local_process_gets_the_same_names_and_its_output_folder(tmp_path):
    from chalicelib.backends.local.backend import LocalBackend

    dump = tmp_path / "env.json"
    job = make_job(
        "local",
        {**CONTRACT, "command": [PY, "-c", f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"]},
        **RETRIED,
    )
    backend = LocalBackend(make_settings(tmp_path))
    backend.launch(job)
    wait_for(lambda: backend.describe(Handle.of(job)).status is JobStatus.SUCCEEDED, what="the local job")
    env = json.loads(dump.read_text())
    folders = ("JOBPLANE_OUTPUT_DIR", "JOBPLANE_INPUT_DIR", "JOBPLANE_CHECKPOINT_DIR")
    assert {k: v for k, v in _ours(env).items() if k not in folders} == EXPECTED
    folder = backend.job_dir(Handle.of(job).native_name)
    assert [Path(env[name]) for name in folders] == [folder / "outputs", folder / "inputs", folder / "checkpoints"]
    assert "JOBPLANE_OUTPUTS" not in env


def test_no_backend_uses_the_old_output_names():
    sources = [p for p in (ROOT / "chalicelib").rglob("*.py")]
    assert [p for p in sources if "JOBPLANE_OUTPUTS" in p.read_text()] == []


HEARTBEAT = {"v": 1, "job_id": "a" * 32, "attempt": 2, "at": "x", "interval_seconds": 60, "gpu_percent": 3.5}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, (None, None)),  # nothing uploaded: no heartbeat
        ({**HEARTBEAT, "gpu_samples": 30}, (3.5, "at")),
        ({**HEARTBEAT, "gpu_samples": 29}, (None, "at")),  # 29 minutes do not cover a 30-minute window
        ({**HEARTBEAT, "gpu_samples": 0, "gpu_percent": None}, (None, "at")),  # no GPU: the heartbeat alone
        ({**HEARTBEAT, "gpu_samples": 30, "attempt": 1}, None),  # another attempt's
        ({**HEARTBEAT, "gpu_samples": 30, "v": 2}, None),
        ({**HEARTBEAT, "gpu_samples": 30, "gpu_percent": 101}, None),
        ({**HEARTBEAT, "gpu_samples": 30, "gpu_percent": "3"}, None),
        ({**HEARTBEAT, "gpu_samples": True}, None),
        ("not json", None),
    ],
)
def test_a_heartbeat_is_read_into_the_utilisation_over_the_window(raw, expected):
    from chalicelib.backends.agent import parse_heartbeat

    text = json.dumps(raw) if isinstance(raw, dict) else raw
    seen = parse_heartbeat(text, job_id="a" * 32, attempt=2, received_at="at", window_minutes=30)
    assert (None if seen is None else (seen.gpu_percent, seen.last_heartbeat)) == expected


# --- the backstop at max_runtime_minutes ---------------------------------------------------
def test_the_ec2_backstop_past_max_runtime_reports_a_timeout_not_an_interruption(tmp_path, monkeypatch):
    # timeout(1) ends the command itself; the backstop is for what it cannot end, here a download that hangs.
    from chalicelib.backends.aws import userdata

    monkeypatch.setattr(userdata, "HARD_STOP_GRACE", 1)
    vm, env = vmharness.prepare(tmp_path)
    stubs = tmp_path / "bin"
    (stubs / "aws").rename(stubs / "aws-fake")
    (stubs / "aws").write_text(
        f'#!/bin/bash\ncase "$*" in *s3://data/hangs*) sleep 60 ;; esac\nexec "{stubs}/aws-fake" "$@"\n'
    )
    (stubs / "aws").chmod(0o755)
    # As a real shutdown does: every process of the script gets TERM (once; power_off's later call only notes).
    (stubs / "shutdown").write_text(
        "#!/bin/bash\n"
        f'[ -e "{tmp_path}/shutdown.called" ] && exit 0\n'
        f'touch "{tmp_path}/shutdown.called"\n'
        'kill -TERM -- "-$(ps -o pgid= $$ | tr -d " ")"\n'
    )
    job = VmJob(
        JOB_ID,
        NATIVE,
        "n",
        (PY, "-c", "pass"),
        (),
        1,
        "s3://artifacts/p/",
        "us-east-1",
        workdir=str(vm.root),
        inputs=(("big", "s3://data/hangs"),),
    )
    vmharness.run(vm, user_data(job), env, timeout=30)
    report = json.loads((vm.obj("s3://artifacts/p/") / "status.json").read_text())
    assert report["state"] == "TIMEOUT", report
    seen = parse_report(report, job_id=JOB_ID, attempt=1)
    assert (seen.status, seen.failure_kind) == (JobStatus.FAILED, FailureKind.TIMEOUT)
    assert "the backstop stops the machine" in (vm.root / "output.log").read_text()
