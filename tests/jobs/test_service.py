"""JobService use cases over the in-memory store (and DynamoDB where it matters) with real local jobs."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from chalicelib.api import list_query, parse_status
from chalicelib.auth import Principal
from chalicelib.backends.base import ComputeBackend, Handle, LaunchResult
from chalicelib.errors import ConflictError, IdempotencyMismatchError, NotFoundError, ValidationError
from chalicelib.events import handle_state_change
from chalicelib.jobs.model import EventSource, FailureKind, JobStatus
from chalicelib.jobs.service import JobService
from chalicelib.jobs.spec import parse_spec
from chalicelib.reaper import reconcile
from tests.factories import job_spec, make_history, make_job, make_settings, wait_for

ALICE = Principal("alice")
BOB = Principal("bob")
ADMIN = Principal("root", admin=True)
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def spec(name="train", **overrides):
    return parse_spec(job_spec(name, **overrides))


def reconcile_until(service, job_id, statuses, timeout=15.0):
    """Run reconcile (the scheduled function) until the job is in one of `statuses`."""

    def done():
        reconcile(service)
        job = service.store.get_job(job_id)
        return job if job.status in statuses else None

    return wait_for(done, timeout, what=f"job {job_id} to reach {statuses}")


def job_dir(service, job):
    return Path(service.settings.local_state_dir).resolve() / job.native_id


def pid_gone(pid: int) -> bool:
    from chalicelib.backends.local.backend import pid_alive

    return not pid_alive(pid)


# --- submit and run -------------------------------------------------------------------


def test_a_submitted_job_is_launching_and_reconcile_finishes_it_as_succeeded(service):
    job, created = service.submit(ALICE, spec())
    assert created is True
    assert job.status is JobStatus.LAUNCHING
    assert job.native_id == f"jp-{job.job_id}"
    assert job.owner == "alice"
    assert job.backend == "local"
    assert job.planner_reason == "backend 'local' requested by the spec"
    done = reconcile_until(service, job.job_id, {JobStatus.SUCCEEDED, JobStatus.FAILED})
    assert done.status is JobStatus.SUCCEEDED
    assert done.failure_kind is None
    assert done.started_at is not None and done.finished_at >= done.started_at
    assert (job_dir(service, job) / "output.log").read_text() == "hello\n"
    history = service.history(ALICE, job.job_id)
    assert [(e.from_status, e.to_status) for e in history][:2] == [
        (None, JobStatus.QUEUED),
        (JobStatus.QUEUED, JobStatus.LAUNCHING),
    ]
    assert history[-1].to_status is JobStatus.SUCCEEDED
    assert history[-1].source is EventSource.RECONCILE
    assert service.store.get_job(job.job_id).cost_estimate_usd == 0.0


def test_a_failing_job_is_failed_as_a_user_error_with_its_exit_code(service):
    job, _ = service.submit(ALICE, spec(command=[sys.executable, "-c", "raise SystemExit(3)"]))
    done = reconcile_until(service, job.job_id, {JobStatus.SUCCEEDED, JobStatus.FAILED})
    assert done.status is JobStatus.FAILED
    assert done.failure_kind is FailureKind.USER_ERROR
    assert done.failure_reason == "exit code 3"


class _EventSink:
    """The function endpoint a local runner posts its events to: each one goes to on_job_state_change."""

    def __init__(self, service):
        sink = self
        self.events: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                sink.events.append(raw)
                handle_state_change(raw, service)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_runner_events_alone_take_a_job_through_running_to_succeeded(memory_store, tmp_path):
    settings = make_settings(tmp_path)
    service = JobService(memory_store, settings)
    sink = _EventSink(service)
    try:
        service.settings = make_settings(tmp_path, JOBPLANE_LOCAL_EVENT_URL=sink.url)
        job, _ = service.submit(ALICE, spec())
        done = wait_for(lambda: (j := memory_store.get_job(job.job_id)).terminal and j, what="the job to finish")
    finally:
        sink.close()
    assert done.status is JobStatus.SUCCEEDED
    assert [e["detail"]["state"] for e in sink.events] == ["RUNNING", "SUCCEEDED"]
    history = service.history(ALICE, job.job_id)
    assert [(e.from_status, e.to_status, e.source) for e in history] == [
        (None, JobStatus.QUEUED, EventSource.API),
        (JobStatus.QUEUED, JobStatus.LAUNCHING, EventSource.DISPATCH),
        (JobStatus.LAUNCHING, JobStatus.RUNNING, EventSource.BACKEND),
        (JobStatus.RUNNING, JobStatus.SUCCEEDED, EventSource.BACKEND),
    ]
    assert history[3].reason == "exit code 0"


# --- idempotency ----------------------------------------------------------------------


def test_a_replayed_idempotency_key_returns_the_first_job_without_a_second_launch(service):
    first, created = service.submit(ALICE, spec(), "key-1")
    again, created_again = service.submit(ALICE, spec(), "key-1")
    assert (created, created_again) == (True, False)
    assert again.job_id == first.job_id
    jobs, _ = service.list(ALICE)
    assert [j.job_id for j in jobs] == [first.job_id]
    assert len(list(Path(service.settings.local_state_dir).glob("jp-*"))) == 1


def test_the_same_key_from_another_user_is_another_job(service):
    mine, _ = service.submit(ALICE, spec(), "shared-key")
    theirs, created = service.submit(BOB, spec(), "shared-key")
    assert created is True
    assert theirs.job_id != mine.job_id


def test_a_key_reused_with_a_different_spec_is_refused(service):
    service.submit(ALICE, spec(), "key-1")
    with pytest.raises(IdempotencyMismatchError) as info:
        service.submit(ALICE, spec(env={"LR": "0.2"}), "key-1")
    assert info.value.STATUS_CODE == 409
    assert info.value.details == [{"field": "Idempotency-Key", "message": "use a new key for a different job"}]
    assert len(service.list(ALICE)[0]) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there"])
def test_a_malformed_idempotency_key_is_a_validation_error(service, key):
    with pytest.raises(ValidationError) as info:
        service.submit(ALICE, spec(), key)
    assert info.value.details[0]["field"] == "Idempotency-Key"


def test_ten_concurrent_submits_with_one_key_make_one_job(store, tmp_path):
    service = JobService(store, make_settings(tmp_path))
    barrier = threading.Barrier(10)
    results, errors = [], []
    lock = threading.Lock()

    def submit():
        barrier.wait()
        try:
            outcome = service.submit(ALICE, spec(), "same-key")
        except Exception as exc:  # collected: the assertion below shows it
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=submit) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(results) == 10
    assert len({job.job_id for job, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * 9 + [True]
    (job_id,) = {job.job_id for job, _ in results}
    jobs, _ = service.list(ADMIN, limit=100)
    assert [j.job_id for j in jobs] == [job_id]
    assert [p.name for p in Path(service.settings.local_state_dir).glob("jp-*")] == [f"jp-{job_id}"]
    reconcile_until(service, job_id, {JobStatus.SUCCEEDED})


# --- cancel ---------------------------------------------------------------------------


def test_cancelling_a_running_job_stops_its_process_and_ends_cancelled(service):
    job, _ = service.submit(ALICE, spec(command=SLEEP))
    folder = job_dir(service, job)
    runner = wait_for(
        lambda: json.loads((folder / "runner.json").read_text()) if (folder / "runner.json").exists() else None
    )
    cancelling = service.cancel(ALICE, job.job_id)
    assert cancelling.status is JobStatus.CANCELLING  # the runner stops it; reconcile learns the outcome
    done = reconcile_until(service, job.job_id, {JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.SUCCEEDED})
    assert done.status is JobStatus.CANCELLED
    assert done.failure_kind is None
    wait_for(lambda: pid_gone(runner["pid"]), what="the job's process to be gone")
    reasons = [e.reason for e in service.history(ALICE, job.job_id)]
    assert "cancel requested by alice" in reasons


def test_cancelling_a_finished_job_is_a_conflict(service):
    job, _ = service.submit(ALICE, spec())
    reconcile_until(service, job.job_id, {JobStatus.SUCCEEDED})
    with pytest.raises(ConflictError) as info:
        service.cancel(ALICE, job.job_id)
    assert info.value.STATUS_CODE == 409
    assert info.value.message == f"job {job.job_id} is already SUCCEEDED"
    assert service.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_cancelling_twice_is_harmless(service):
    job, _ = service.submit(ALICE, spec(command=SLEEP))
    first = service.cancel(ALICE, job.job_id)
    second = service.cancel(ALICE, job.job_id)
    assert (first.status, second.status) == (JobStatus.CANCELLING, JobStatus.CANCELLING)
    assert first.job_id == second.job_id
    done = reconcile_until(service, job.job_id, {JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.SUCCEEDED})
    assert done.status is JobStatus.CANCELLED
    statuses = [e.to_status for e in service.history(ALICE, job.job_id)]
    assert statuses.count(JobStatus.CANCELLING) == 1
    assert statuses.count(JobStatus.CANCELLED) == 1


# --- who sees what --------------------------------------------------------------------


def test_another_users_job_does_not_exist_for_them(service):
    job, _ = service.submit(ALICE, spec())
    for call in (service.get, service.cancel, service.history):
        with pytest.raises(NotFoundError) as info:
            call(BOB, job.job_id)
        assert info.value.message == f"no job {job.job_id!r}"
    assert service.list(BOB) == ([], None)


@pytest.mark.parametrize("job_id", ["nope", "0" * 31, "g" * 32, "../../etc/passwd", "A" * 32])
def test_an_implausible_job_id_is_not_found(service, job_id):
    with pytest.raises(NotFoundError):
        service.get(ALICE, job_id)


def test_an_admin_sees_and_lists_every_users_jobs(service):
    a, _ = service.submit(ALICE, spec("a"))
    b, _ = service.submit(BOB, spec("b"))
    assert service.get(ADMIN, a.job_id).owner == "alice"
    assert [e.to_status for e in service.history(ADMIN, b.job_id)][:2] == [JobStatus.QUEUED, JobStatus.LAUNCHING]
    jobs, token = service.list(ADMIN)
    assert [j.job_id for j in jobs] == [b.job_id, a.job_id]
    assert token is None
    assert [j.job_id for j in service.list(ALICE)[0]] == [a.job_id]


# --- listing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "2.5"}, "limit"),
        ({"limit": -3}, "limit"),
        ({"status": "DONE"}, "status"),
        ({"status": "running;drop"}, "status"),
        ({"next_token": "!!not-base64!!"}, "next_token"),
        ({"next_token": "e30"}, "next_token"),  # base64 of "{}"
        ({"next_token": "bnVsbA"}, "next_token"),  # base64 of "null"
    ],
)
def test_bad_list_parameters_are_validation_errors_naming_the_field(service, kwargs, field):
    with pytest.raises(ValidationError) as info:
        query = list_query(kwargs)
        service.list(ALICE, query.status, query.limit, query.next_token)
    assert info.value.STATUS_CODE == 400
    assert info.value.details[0]["field"] == field


def test_the_status_filter_takes_the_status_names_the_api_shows(service):
    job, _ = service.submit(ALICE, spec())
    reconcile_until(service, job.job_id, {JobStatus.SUCCEEDED})
    assert [j.job_id for j in service.list(ALICE, status=parse_status("SUCCEEDED"))[0]] == [job.job_id]
    assert service.list(ALICE, status=parse_status("RUNNING"))[0] == []
    with pytest.raises(ValidationError) as info:
        parse_status("succeeded")
    assert info.value.details == [
        {"field": "status", "message": "one of QUEUED, LAUNCHING, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED"}
    ]


def _seed(service, owner, n, status=JobStatus.QUEUED):
    """Jobs straight into the store (no processes): listing is about the store and the token."""
    from datetime import timedelta

    from chalicelib.jobs.model import utcnow

    jobs = []
    base = utcnow()
    for i in range(n):
        job = make_job("local", job_spec(f"j{i}"), owner=owner, status=status, created_at=base + timedelta(seconds=i))
        service.store.create_job(job, make_history(job, reason="seeded"))
        jobs.append(job)
    return jobs


def test_paging_through_a_users_jobs_returns_each_once_newest_first(service):
    mine = _seed(service, "alice", 12)
    _seed(service, "bob", 5)
    seen, token = [], None
    for _ in range(10):
        page, token = service.list(ALICE, limit=5, next_token=token)
        seen.extend(page)
        if token is None:
            break
    assert [j.job_id for j in seen] == [j.job_id for j in reversed(mine)]


def test_a_next_token_is_bound_to_its_owner_and_status(service):
    _seed(service, "alice", 3)
    _seed(service, "bob", 3)
    _, token = service.list(ALICE, limit=1)
    assert token is not None
    for principal, status in ((BOB, None), (ADMIN, None), (ALICE, JobStatus.QUEUED)):
        with pytest.raises(ValidationError) as info:
            service.list(principal, status=status, limit=1, next_token=token)
        assert info.value.details[0]["field"] == "next_token"
    _, admin_token = service.list(ADMIN, status=JobStatus.QUEUED, limit=2)
    with pytest.raises(ValidationError):
        service.list(ADMIN, status=JobStatus.FAILED, limit=2, next_token=admin_token)
    page, _ = service.list(ADMIN, status=JobStatus.QUEUED, limit=2, next_token=admin_token)
    assert len(page) == 2


def test_a_job_whose_runner_died_fails_as_lost_and_its_orphaned_process_is_stopped(service):
    job, _ = service.submit(ALICE, spec(command=SLEEP))
    folder = job_dir(service, job)
    runner_json = folder / "runner.json"
    job_pid = wait_for(lambda: runner_json.exists() and json.loads(runner_json.read_text())["pid"], what="runner")
    runner_pid = int((folder / "runner.pid").read_text())
    os.kill(runner_pid, signal.SIGKILL)  # the supervisor is gone (OOM killer); the job itself runs on
    wait_for(lambda: pid_gone(runner_pid), what="the runner to die")
    done = reconcile_until(service, job.job_id, {JobStatus.FAILED, JobStatus.SUCCEEDED, JobStatus.CANCELLED})
    assert done.status is JobStatus.FAILED
    assert done.failure_kind is FailureKind.BACKEND_ERROR
    assert done.failure_reason == "the local runner exited without an exit status"
    wait_for(lambda: pid_gone(job_pid), timeout=5, what="the orphaned job process to be stopped")


# --- one validation per launch decision; our name apart from the provider's id -------------------
class ProviderIdBackend(ComputeBackend):
    """A provider that answers a launch with its own id (as Batch, ECS, EC2 and Vertex do) and counts checks."""

    name = "local"

    def __init__(self, settings, crash=False):
        super().__init__(settings)
        self.validated = 0
        self.launched: list[Handle] = []
        self.crash = crash

    def validate(self, spec):
        self.validated += 1
        super().validate(spec)

    def _launch_impl(self, job, handle):
        self.launched.append(handle)
        if self.crash:
            raise SystemExit("died between the LAUNCHING write and the provider's answer")
        return LaunchResult(f"provider-id-{len(self.launched)}", "SUBMITTED")

    def _describe_impl(self, handle):
        return None

    def _cancel_impl(self, handle):
        return None


def _counting_service(memory_store, tmp_path, crash=False):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="local")
    backends = {}

    def factory(name, _settings):
        return backends.setdefault(name, ProviderIdBackend(settings, crash))

    return JobService(memory_store, settings, backend_factory=factory), backends


@pytest.mark.parametrize("backend", ["auto", "local"])
def test_validate_runs_once_from_submit_to_launch(memory_store, tmp_path, backend):
    service, backends = _counting_service(memory_store, tmp_path)
    # auto needs an image to pass the edge; the local backend ignores it
    job, _ = service.submit(ALICE, spec(backend=backend, image="train:1"))
    assert job.status is JobStatus.LAUNCHING
    assert job.backend == "local"
    assert (backends["local"].validated, len(backends["local"].launched)) == (1, 1)


def test_the_provider_id_is_stored_apart_from_our_name(memory_store, tmp_path):
    service, backends = _counting_service(memory_store, tmp_path)
    job, _ = service.submit(ALICE, spec())
    stored = memory_store.get_job(job.job_id)
    assert (stored.native_name, stored.native_id) == (f"jp-{job.job_id}", "provider-id-1")
    assert backends["local"].launched[0].native_name == f"jp-{job.job_id}"
    api = stored.to_api()
    assert (api["native_name"], api["native_id"]) == (f"jp-{job.job_id}", "provider-id-1")


def test_before_the_provider_answers_a_job_has_our_name_and_no_provider_id(memory_store, tmp_path):
    service, _ = _counting_service(memory_store, tmp_path, crash=True)
    with pytest.raises(SystemExit):
        service.submit(ALICE, spec())
    (job,) = memory_store.iter_active()
    assert (job.status, job.native_name, job.native_id) == (JobStatus.LAUNCHING, f"jp-{job.job_id}", None)
