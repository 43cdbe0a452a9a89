"""The local backend: real processes in their own group, captured output, cancel, max runtime, events."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from chalicelib.backends.agent import make_report
from chalicelib.backends.base import Handle, Observation
from chalicelib.backends.local.backend import EVENT_DETAIL_TYPE, EVENT_SOURCE, LocalBackend, pid_alive
from chalicelib.backends.local.runner import sign_detail
from chalicelib.errors import ConfigError, ValidationError
from chalicelib.jobs.model import FailureKind, JobStatus, native_name, new_job_id
from tests.factories import ROOT, job_spec, make_job, make_settings, wait_for

PY = sys.executable


@pytest.fixture
def backend(tmp_path):
    return LocalBackend(make_settings(tmp_path))


def run_to_end(backend, job) -> Observation:
    backend.launch(job)
    return wait_for(
        lambda: (obs := backend.describe(Handle.of(job))) is not None and obs.status.terminal and obs,
        what="the job to end",
    )


def folder_of(backend, job) -> Path:
    return backend.job_dir(job.native_id)


def read_runner(backend, job) -> dict:
    path = folder_of(backend, job) / "runner.json"
    return wait_for(lambda: path.exists() and json.loads(path.read_text()), what="runner.json")


# --- running ----------------------------------------------------------------------------


def test_a_job_that_exits_0_succeeds(backend):
    job = make_job(spec=job_spec("t", command=[PY, "-c", "print('hello')"]), named=True)
    obs = run_to_end(backend, job)
    assert obs.status is JobStatus.SUCCEEDED
    assert obs.native_status == "SUCCEEDED"
    assert obs.exit_code == 0
    assert obs.reason == "exit code 0"
    assert obs.failure_kind is None
    assert (obs.job_id, obs.native_id, obs.attempt) == (job.job_id, job.native_id, 1)
    assert obs.started_at is not None and obs.at >= obs.started_at


def test_a_job_that_exits_3_fails_as_a_user_error_naming_the_exit_code(backend):
    obs = run_to_end(backend, make_job(spec=job_spec("t", command=[PY, "-c", "import sys; sys.exit(3)"]), named=True))
    assert obs.status is JobStatus.FAILED
    assert obs.failure_kind is FailureKind.USER_ERROR
    assert obs.exit_code == 3
    assert "exit code 3" in obs.reason


def test_a_program_that_does_not_exist_fails_with_exit_code_127(backend):
    obs = run_to_end(backend, make_job(spec=job_spec("t", command=["/nonexistent/program", "x"]), named=True))
    assert obs.status is JobStatus.FAILED
    assert obs.exit_code == 127
    assert obs.reason.startswith("could not start '/nonexistent/program'")


def test_stdout_and_stderr_are_captured_in_output_log(backend):
    code = "import sys; print('to stdout', flush=True); print('to stderr', file=sys.stderr, flush=True); print('end')"
    job = make_job(spec=job_spec("t", command=[PY, "-c", code]), named=True)
    run_to_end(backend, job)
    assert (folder_of(backend, job) / "output.log").read_text() == "to stdout\nto stderr\nend\n"
    chunk = backend.logs(Handle.of(job), 3)
    assert chunk.text == "stdout\nto stderr\nend\n"
    assert chunk.next_offset == len("to stdout\nto stderr\nend\n")
    assert chunk.complete is True


def test_the_job_sees_its_own_env_and_none_of_the_control_planes(backend, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "control-plane-secret")
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    job = make_job(spec=job_spec("t", command=[PY, "-c", code], env={"LR": "0.1"}), named=True)
    run_to_end(backend, job)
    env = json.loads((folder_of(backend, job) / "output.log").read_text())
    assert env["LR"] == "0.1"
    assert env["JOBPLANE_JOB_ID"] == job.job_id
    assert env["JOBPLANE_ATTEMPT"] == "1"
    assert env["JOBPLANE_OUTPUT_DIR"] == str(folder_of(backend, job) / "outputs")
    assert "AWS_SECRET_ACCESS_KEY" not in env


HOSTILE = [
    "$(touch {marker})",
    "`touch {marker}`",
    "'; touch {marker}; echo '",
    '"; touch {marker}; echo "',
    "line one\nline two; touch {marker}",
    ";rm -rf {marker}-dir; touch {marker}",
    "&& touch {marker} || true",
    "${{IFS}}touch${{IFS}}{marker}",
    "ünïcødé ✓ \t tab",
]


def test_hostile_args_and_env_values_reach_the_job_byte_for_byte_and_run_nothing(backend, tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "pwned-dir").mkdir()
    values = [v.format(marker=marker) for v in HOSTILE]
    env = {f"V{i}": v for i, v in enumerate(values)}
    code = (
        "import json, os, sys; "
        "json.dump({'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items() if k[:1] == 'V'}}, "
        "open(os.environ['JOBPLANE_OUTPUT_DIR'] + '/seen.json', 'w'))"
    )
    job = make_job(spec=job_spec("t", command=[PY, "-c", code, *values], env=env), named=True)
    obs = run_to_end(backend, job)
    assert obs.status is JobStatus.SUCCEEDED
    seen = json.loads((folder_of(backend, job) / "outputs" / "seen.json").read_text(encoding="utf-8"))
    assert seen["argv"] == values
    assert seen["env"] == env
    assert not marker.exists()
    assert (tmp_path / "pwned-dir").is_dir()


# --- cancel -----------------------------------------------------------------------------

FAMILY = """
import os, subprocess, sys, time
out = os.environ['JOBPLANE_OUTPUT_DIR']
grandchild = ("import os, time; open(os.environ['JOBPLANE_OUTPUT_DIR'] + '/grandchild', 'w')"
              ".write(str(os.getpid())); time.sleep(120)")
child = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(120)"
p = subprocess.Popen([sys.executable, '-c', child])
open(out + '/child', 'w').write(str(p.pid))
time.sleep(120)
"""


def test_cancel_kills_the_whole_process_group_and_reports_cancelled(backend):
    job = make_job(spec=job_spec("t", command=[PY, "-c", FAMILY]), named=True)
    backend.launch(job)
    outputs = folder_of(backend, job) / "outputs"
    job_pid = read_runner(backend, job)["pid"]
    child = int(wait_for(lambda: (outputs / "child").exists() and (outputs / "child").read_text(), what="child"))
    grandchild = int(
        wait_for(lambda: (outputs / "grandchild").exists() and (outputs / "grandchild").read_text(), what="grandchild")
    )
    assert all(pid_alive(p) for p in (job_pid, child, grandchild))
    assert backend.describe(Handle.of(job)).status is JobStatus.RUNNING

    backend.cancel(Handle.of(job))

    obs = wait_for(lambda: (o := backend.describe(Handle.of(job))).status.terminal and o, what="the cancel")
    assert obs.status is JobStatus.CANCELLED
    assert obs.reason == "cancelled on request"
    for pid in (job_pid, child, grandchild):
        wait_for(lambda pid=pid: not pid_alive(pid), timeout=5, what=f"pid {pid} to be gone")


def test_cancel_without_a_runner_kills_the_job_group_directly(backend):
    job = make_job(spec=job_spec("t", command=[PY, "-c", "import time; time.sleep(120)"]), named=True)
    backend.launch(job)
    job_pid = read_runner(backend, job)["pid"]
    runner_pid = int((folder_of(backend, job) / "runner.pid").read_text())
    os.kill(runner_pid, 9)  # the runner dies (an OOM kill); its job keeps running
    wait_for(lambda: not pid_alive(runner_pid), what="the runner to die")
    assert pid_alive(job_pid)
    backend.cancel(Handle.of(job))
    wait_for(lambda: not pid_alive(job_pid), timeout=5, what="the job process to be gone")
    assert backend.describe(Handle.of(job)).native_status == "LOST"


def test_a_job_process_that_outlived_its_runner_is_listed_as_running_and_released(backend):
    job = make_job(spec=job_spec("t", command=[PY, "-c", "import time; time.sleep(120)"]), named=True)
    backend.launch(job)
    job_pid = read_runner(backend, job)["pid"]
    runner_pid = int((folder_of(backend, job) / "runner.pid").read_text())
    os.kill(runner_pid, 9)
    wait_for(lambda: not pid_alive(runner_pid), what="the runner to die")
    (resource,) = backend.list_managed()
    assert (resource.resource_id, resource.running, resource.job_id) == (job.native_id, True, job.job_id)
    backend.release(Handle.of(job), "job failed")
    wait_for(lambda: not pid_alive(job_pid), timeout=5, what="the orphaned process to be gone")
    (resource,) = backend.list_managed()
    assert resource.running is False


def test_cancel_of_a_job_that_never_launched_does_nothing(backend):
    job = make_job(spec=job_spec("t", command=[PY, "-c", "pass"]), named=True)
    backend.cancel(Handle.of(job))
    assert not folder_of(backend, job).exists()
    assert backend.describe(Handle.of(job)) is None


# --- max runtime (the runner on a hand-written spec: the spec's minimum is a minute) ---------------


def start_runner(tmp_path, command, max_runtime_seconds, grace="0.5", event_url=None):
    job_id = new_job_id()
    folder = tmp_path / "jobs" / f"jp-{job_id}"
    (folder / "outputs").mkdir(parents=True)
    (folder / "launch.lock").touch()
    spec = {
        "job_id": job_id,
        "native_id": f"jp-{job_id}",
        "attempt": 1,
        "command": command,
        "env": {"PATH": os.environ["PATH"], "JOBPLANE_OUTPUT_DIR": str(folder / "outputs")},
        "cwd": str(tmp_path),
        "max_runtime_seconds": max_runtime_seconds,
        "event_url": event_url,
        "region": "us-east-1",
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "JOBPLANE_KILL_GRACE_SECONDS": grace}
    code = (
        "import sys; from pathlib import Path; from chalicelib.backends.local.runner import run; "
        "sys.exit(run(Path(sys.argv[1])))"
    )
    proc = subprocess.Popen([PY, "-c", code, str(folder)], cwd=ROOT, env=env)
    return job_id, folder, proc


def run_runner(tmp_path, command, max_runtime_seconds, grace="0.5"):
    started = time.monotonic()
    job_id, folder, proc = start_runner(tmp_path, command, max_runtime_seconds, grace)
    assert proc.wait(timeout=30) == 0
    return job_id, folder, time.monotonic() - started


def dead_url() -> str:
    """An endpoint that refuses connections: event delivery retries with backoff for ~20 s."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/events"


def test_a_job_past_its_max_runtime_is_stopped_and_fails_as_a_timeout(tmp_path):
    job_id, folder, elapsed = run_runner(tmp_path, [PY, "-c", "import time; time.sleep(60)"], 1)
    assert elapsed < 10
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "TIMEOUT"
    assert status["reason"].startswith("exceeded max_runtime_minutes")
    obs = LocalBackend(make_settings(tmp_path)).describe(Handle(job_id, f"jp-{job_id}"))
    assert obs.status is JobStatus.FAILED
    assert obs.failure_kind is FailureKind.TIMEOUT


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    code = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(os.environ['JOBPLANE_OUTPUT_DIR'] + '/pid', 'w').write(str(os.getpid())); time.sleep(60)"
    )
    _, folder, elapsed = run_runner(tmp_path, [PY, "-c", code], 1, grace="0.5")
    assert elapsed < 10
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "TIMEOUT"
    assert status["exit_code"] == 137  # what timeout(1) on the VMs says when the TERM was not enough
    assert not pid_alive(int((folder / "outputs" / "pid").read_text()))


def test_an_unreachable_event_endpoint_delays_neither_max_runtime_nor_cancel(tmp_path):
    started = time.monotonic()
    _, folder, proc = start_runner(tmp_path, [PY, "-c", "import time; time.sleep(60)"], 1, event_url=dead_url())
    try:
        status = wait_for(lambda: (folder / "status.json").exists(), timeout=8, what="the max runtime to be enforced")
        assert status
        assert json.loads((folder / "status.json").read_text())["state"] == "TIMEOUT"
        assert time.monotonic() - started < 8
    finally:
        proc.kill()
        proc.wait()

    backend = LocalBackend(make_settings(tmp_path, JOBPLANE_LOCAL_EVENT_URL=dead_url()))
    job = make_job(spec=job_spec("t", command=[PY, "-c", "import time; time.sleep(60)"]), named=True)
    backend.launch(job)
    job_pid = read_runner(backend, job)["pid"]
    runner_pid = int((folder_of(backend, job) / "runner.pid").read_text())
    try:
        backend.cancel(Handle.of(job))
        obs = wait_for(lambda: (o := backend.describe(Handle.of(job))).status.terminal and o, timeout=5, what="cancel")
        assert obs.status is JobStatus.CANCELLED
        assert not pid_alive(job_pid)
    finally:
        os.kill(runner_pid, 9)  # it would keep trying to deliver the final event for a while


# --- launching is idempotent ---------------------------------------------------------------


def test_a_second_launch_of_the_same_attempt_starts_nothing(backend):
    job = make_job(spec=job_spec("t", command=[PY, "-c", "print('once')"]), named=True)
    first = backend.launch(job)
    second = backend.launch(job)
    assert (first.native_id, first.native_status) == (job.native_id, "Started")
    assert (second.native_id, second.native_status) == (job.native_id, "AlreadyLaunched")
    wait_for(lambda: backend.describe(Handle.of(job)).status.terminal, what="the job to end")
    assert (folder_of(backend, job) / "output.log").read_text() == "once\n"


def test_each_attempt_gets_its_own_native_name_and_folder(backend):
    first = make_job(spec=job_spec("t", command=[PY, "-c", "print(1)"]), named=True)
    second = first.with_changes(attempt=2, native_id=native_name(first.job_id, 2))
    assert run_to_end(backend, first).attempt == 1
    obs = run_to_end(backend, second)
    assert (obs.native_id, obs.attempt) == (f"jp-{first.job_id}-a2", 2)


def test_describe_of_an_unknown_native_id_is_none(backend):
    job_id = new_job_id()
    assert backend.describe(Handle(job_id, f"jp-{job_id}")) is None
    assert backend.describe(Handle(job_id, f"jp-{job_id}-a3", 3)) is None


# --- events -------------------------------------------------------------------------------


class _Recorder:
    def __init__(self):
        self.events: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                recorder.events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_runner_events_parse_back_to_what_describe_sees(tmp_path):
    recorder = _Recorder()
    try:
        backend = LocalBackend(make_settings(tmp_path, JOBPLANE_LOCAL_EVENT_URL=recorder.url))
        job = make_job(spec=job_spec("t", command=[PY, "-c", "import sys; sys.exit(5)"]), named=True)
        final = run_to_end(backend, job)
        events = wait_for(lambda: len(recorder.events) >= 2 and recorder.events, what="two events")
    finally:
        recorder.close()
    assert [(e["source"], e["detail-type"]) for e in events] == [(EVENT_SOURCE, EVENT_DETAIL_TYPE)] * 2
    running, ended = (backend.parse_event(e) for e in events)
    assert running.status is JobStatus.RUNNING
    assert (running.job_id, running.native_id, running.attempt) == (job.job_id, job.native_id, 1)
    assert ended == final
    assert ended.status is JobStatus.FAILED
    assert ended.exit_code == 5
    assert ended.failure_kind is FailureKind.USER_ERROR


def test_events_from_elsewhere_or_about_foreign_resources_parse_to_none(backend):
    detail = make_report(
        job_id=new_job_id(), attempt=1, exit_code=0, started_at=None, finished_at="2024-05-01T12:00:00.000000Z"
    )
    detail["signature"] = sign_detail(backend.event_key(detail["native_name"]), detail)
    good = {"source": EVENT_SOURCE, "detail-type": EVENT_DETAIL_TYPE, "time": "2024-05-01T12:00:00Z", "detail": detail}
    assert backend.parse_event(good).status is JobStatus.SUCCEEDED
    assert backend.parse_event({**good, "source": "aws.ec2"}) is None
    assert backend.parse_event({**good, "detail-type": "Something Else"}) is None
    assert backend.parse_event({**good, "detail": {**detail, "native_name": "someone-elses-job"}}) is None
    assert backend.parse_event({**good, "detail": {}}) is None


# --- the event path is signed per job ------------------------------------------------------------


def _signed_event(backend, detail: dict, key_of: str | None = None) -> dict:
    name = detail.get("native_name") or detail["native_id"]
    detail = {**detail, "signature": sign_detail(backend.event_key(key_of or name), detail)}
    return {"source": EVENT_SOURCE, "detail-type": EVENT_DETAIL_TYPE, "time": "2024-05-01T12:00:00Z", "detail": detail}


def test_an_event_signed_with_another_jobs_key_or_unsigned_is_refused(backend):
    job_id = new_job_id()
    other = f"jp-{new_job_id()}"
    detail = make_report(
        job_id=job_id, attempt=1, exit_code=0, started_at=None, finished_at="2020-01-01T00:00:00.000000Z"
    )
    with pytest.raises(ValidationError, match=r"detail\.signature: does not match"):
        backend.parse_event(_signed_event(backend, detail, key_of=other))
    unsigned = _signed_event(backend, detail)
    del unsigned["detail"]["signature"]
    with pytest.raises(ValidationError, match=r"detail\.signature: missing"):
        backend.parse_event(unsigned)
    tampered = _signed_event(
        backend,
        {
            "native_id": detail["native_name"],
            "state": "RUNNING",
            "at": detail["at"] if "at" in detail else detail["finished_at"],
        },
    )
    tampered["detail"]["state"] = "SUCCEEDED"
    with pytest.raises(ValidationError, match=r"detail\.signature"):
        backend.parse_event(tampered)
    assert backend.parse_event(_signed_event(backend, detail)).status is JobStatus.SUCCEEDED


def test_an_unknown_state_is_ignored_and_a_malformed_one_names_the_field(backend):
    native = f"jp-{new_job_id()}"
    assert backend.parse_event(_signed_event(backend, {"native_id": native, "state": "EXPLODED"})) is None
    assert backend.parse_event(_signed_event(backend, {"native_id": native, "state": "LOST"})) is None
    with pytest.raises(ValidationError, match=r"detail\.state"):
        backend.parse_event(_signed_event(backend, {"native_id": native, "state": 3}))
    with pytest.raises(ValidationError, match=r"detail\.at"):
        backend.parse_event(_signed_event(backend, {"native_id": native, "state": "RUNNING", "at": "yesterday"}))
    with pytest.raises(ValidationError, match="detail: must be a JSON object"):
        backend.parse_event({"source": EVENT_SOURCE, "detail-type": EVENT_DETAIL_TYPE, "detail": ["x"]})


def test_the_stack_key_is_private_and_each_job_key_differs(backend, tmp_path):
    a, b = f"jp-{new_job_id()}", f"jp-{new_job_id()}"
    assert backend.event_key(a) != backend.event_key(b)
    assert backend.event_key(a) == LocalBackend(make_settings(tmp_path)).event_key(a)  # derived, not stored
    assert stat.S_IMODE(os.stat(tmp_path / "jobs" / "event-key").st_mode) == 0o600


# --- isolation --------------------------------------------------------------------------------------


def test_a_job_runs_in_its_own_folder_with_private_files(backend):
    job = make_job(
        spec=job_spec("t", command=[PY, "-c", "import os; print(os.getcwd()); open('made-here', 'w').write('x')"]),
        named=True,
    )
    final = run_to_end(backend, job)
    assert final.status is JobStatus.SUCCEEDED
    folder = folder_of(backend, job)
    assert (folder / "output.log").read_text().strip() == str(folder / "work")
    assert (folder / "work" / "made-here").exists() and not (ROOT / "made-here").exists()
    for name in ("output.log", "status.json", "runner.json", "spec.json", "runner.pid", "runner.log"):
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


def test_the_runner_holds_no_control_plane_credential_or_address(backend, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "control-plane-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("JOBPLANE_LOCAL_DIR", "/somewhere/.jobplane")
    job = make_job(spec=job_spec("t", command=[PY, "-c", "import time; time.sleep(30)"]), named=True)
    backend.launch(job)
    try:
        runner = read_runner(backend, job)
        pid = int((folder_of(backend, job) / "runner.pid").read_text())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        job_environ = Path(f"/proc/{runner['pid']}/environ").read_bytes().split(b"\0")
    finally:
        backend.cancel(Handle.of(job))
    for env in (environ, job_environ):
        names = {e.split(b"=", 1)[0].decode() for e in env if e}
        assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "JOBPLANE_LOCAL_DIR"} & names
        assert not any(b"control-plane-secret" in e for e in env)


@pytest.mark.skipif(os.geteuid() != 0, reason="running jobs as another user needs root")
def test_a_job_run_as_nobody_cannot_read_the_stacks_secrets_other_logs_or_write_the_repository(tmp_path):
    backend = LocalBackend(make_settings(tmp_path, JOBPLANE_LOCAL_RUN_AS="nobody"))
    admin_token = tmp_path / "admin-token"
    admin_token.write_text("secret-admin-token\n")
    admin_token.chmod(0o600)
    first = make_job(
        spec=job_spec("t", command=["/usr/bin/python3", "-c", "print('first job private line')"]), named=True
    )
    assert run_to_end(backend, first).status is JobStatus.SUCCEEDED
    probe = (
        "import sys\n"
        "for path in sys.argv[1:3]:\n"
        "    try:\n"
        "        print('READ', path, open(path).read()[:40])\n"
        "    except OSError as exc:\n"
        "        print('DENIED', path, exc.errno)\n"
        "try:\n"
        "    open(sys.argv[3], 'w').write('x'); print('WROTE')\n"
        "except OSError as exc:\n"
        "    print('DENIED write', exc.errno)\n"
        "print('CWD-WRITE', open('mine', 'w').write('ok'))\n"
    )
    intruder_file = ROOT / "chalicelib" / f"intruder-{new_job_id()}"
    other_log = folder_of(backend, first) / "output.log"
    job = make_job(
        spec=job_spec(
            "t", command=["/usr/bin/python3", "-c", probe, str(admin_token), str(other_log), str(intruder_file)]
        ),
        named=True,
    )
    try:
        final = run_to_end(backend, job)
        output = (folder_of(backend, job) / "output.log").read_text()
    finally:
        intruder_file.unlink(missing_ok=True)
    assert final.status is JobStatus.SUCCEEDED, output
    assert "READ" not in output and "WROTE" not in output, output
    assert output.count("DENIED") == 3 and "CWD-WRITE 2" in output, output


def test_an_unknown_run_as_user_is_a_clear_error(tmp_path):
    backend = LocalBackend(make_settings(tmp_path, JOBPLANE_LOCAL_RUN_AS="no-such-user-here"))
    with pytest.raises(ConfigError, match="JOBPLANE_LOCAL_RUN_AS"):
        backend.launch(make_job(spec=job_spec("t", command=[PY, "-c", "pass"]), named=True))
