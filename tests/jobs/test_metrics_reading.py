"""Where metrics are read: reconcile ticks (bounded), the terminal transition, GET /jobs/{id}/metrics; from the
cursor on the job, on byte-offset and cursor-paged logs alike, never adding a point twice."""

from __future__ import annotations

import json

import pytest

from chalicelib.auth import Principal
from chalicelib.errors import BackendError
from chalicelib.jobs.metrics_reader import TICK_BYTES
from chalicelib.jobs.model import EventSource, JobEvent, JobStatus, native_name
from chalicelib.jobs.service import JobService
from chalicelib.reaper import read_metrics, reconcile_all
from chalicelib.store.memory import InMemoryJobStore
from chalicelib.store.metrics import InMemoryMetricsStore
from tests.factories import LogBackend, make_history, make_job

ALICE = Principal("alice", admin=False)


def metrics_line(**values) -> str:
    return f"JOBPLANE_METRICS {json.dumps(values)}\n"


@pytest.fixture(params=["bytes", "paged"])
def world(request, settings):
    store, series = InMemoryJobStore(), InMemoryMetricsStore()
    backend = LogBackend(settings, paged=request.param == "paged", page_lines=50)
    service = JobService(store, settings, backend_factory=lambda *_: backend, metrics_store=series)
    return service, backend


def running_job(service, backend, text="", **changes):
    job = make_job(status=JobStatus.RUNNING, **changes)
    job = job.with_changes(native_name=native_name(job.job_id, job.attempt), native_id="pid-1")
    service.store.create_job(job, make_history(job))
    backend.output[job.native_name] = text
    return job


def test_a_reconcile_tick_records_the_latest_metrics_and_the_series(world):
    service, backend = world
    output = "starting\n" + "".join(metrics_line(epoch=e, loss=1 / e) for e in (1, 2, 3)) + "done\n"
    job = running_job(service, backend, output)
    assert read_metrics(service) == [{"metrics": {"jobs_read": 1, "errors": []}}]
    stored = service.store.get_job(job.job_id)
    assert stored.metrics == {"epoch": 3.0, "loss": pytest.approx(1 / 3)}
    assert stored.to_api()["metrics"] == stored.metrics
    series = service.metrics_reader.store.series(job.job_id)
    assert series["epoch"].points == ((1, 1.0), (2, 2.0), (3, 3.0))
    # More output: the next tick reads on from the cursor and adds only what is new.
    backend.output[job.native_name] += metrics_line(epoch=4, loss=0.2)
    read_metrics(service)
    assert service.metrics_reader.store.series(job.job_id)["epoch"].points[-2:] == ((3, 3.0), (4, 4.0))
    assert service.store.get_job(job.job_id).metrics["loss"] == 0.2


def test_a_tick_reads_at_most_tick_bytes_of_one_job(settings):
    store, series = InMemoryJobStore(), InMemoryMetricsStore()
    backend = LogBackend(settings)
    service = JobService(store, settings, backend_factory=lambda *_: backend, metrics_store=series)
    filler = "x" * 1000 + "\n"
    job = running_job(service, backend, filler * 200 + metrics_line(acc=0.9))  # about 200 KB
    read_metrics(service)
    cursor = store.get_job(job.job_id).metrics_cursor
    assert 0 < cursor.offset <= TICK_BYTES
    assert store.get_job(job.job_id).metrics == {}  # the metrics line is further on: a later read finds it
    service.metrics(ALICE, job.job_id)  # GET /jobs/{id}/metrics reads on (256 KiB)
    assert store.get_job(job.job_id).metrics == {"acc": 0.9}


def test_the_terminal_transition_carries_the_final_metrics(world):
    service, backend = world
    job = running_job(service, backend, metrics_line(loss=0.5) + metrics_line(loss=0.25, val_accuracy=0.87))
    ended = service.apply_event(JobEvent(job.job_id, JobStatus.SUCCEEDED, EventSource.BACKEND, reason="exit 0"))
    assert ended.status is JobStatus.SUCCEEDED
    assert ended.metrics == {"loss": 0.25, "val_accuracy": 0.87}
    assert service.store.get_job(job.job_id).metrics_cursor.lines == 2


def test_a_last_line_without_a_newline_counts_once_the_job_is_over(settings):
    store, series = InMemoryJobStore(), InMemoryMetricsStore()
    backend = LogBackend(settings)
    service = JobService(store, settings, backend_factory=lambda *_: backend, metrics_store=series)
    job = running_job(service, backend, 'JOBPLANE_METRICS {"loss": 0.1}')
    read_metrics(service)
    assert store.get_job(job.job_id).metrics == {}  # the line may still grow while the job runs
    ended = service.apply_event(JobEvent(job.job_id, JobStatus.FAILED, EventSource.BACKEND, reason="exit 1"))
    assert ended.metrics == {"loss": 0.1}


def test_a_failing_log_read_never_keeps_a_job_from_its_end(world):
    service, backend = world
    job = running_job(service, backend, metrics_line(loss=0.5))
    read_metrics(service)
    backend.fail = BackendError("CloudWatch Logs: ThrottlingException", retryable=True)
    assert read_metrics(service)[0]["metrics"]["errors"][0]["job_id"] == job.job_id
    ended = service.apply_event(JobEvent(job.job_id, JobStatus.SUCCEEDED, EventSource.BACKEND))
    assert ended.status is JobStatus.SUCCEEDED
    assert ended.metrics == {"loss": 0.5}  # the last read's values stay


def test_two_readers_of_the_same_output_add_each_point_once(world):
    service, backend = world
    job = running_job(service, backend, metrics_line(step=1) + metrics_line(step=2))
    reader = service.metrics_reader
    first, _ = reader.catch_up(service.store, job, TICK_BYTES)
    again, _ = reader.catch_up(service.store, job, TICK_BYTES)  # from the stale record: loses the guard
    assert again == service.store.get_job(job.job_id) == first
    assert reader.store.series(job.job_id)["step"].points == ((1, 1.0), (2, 2.0))


def test_a_retried_attempt_reads_its_own_log_and_numbers_on(world):
    service, backend = world
    job = running_job(service, backend, metrics_line(loss=0.9) + metrics_line(loss=0.8))
    read_metrics(service)
    first = service.store.get_job(job.job_id)
    second = first.with_changes(attempt=2, native_name=native_name(job.job_id, 2))
    service.store.update_job(first, JobStatus.RUNNING, attempt=2, native_name=second.native_name)
    backend.output[second.native_name] = metrics_line(loss=0.7)
    read_metrics(service)
    assert service.metrics_reader.store.series(job.job_id)["loss"].points == ((1, 0.9), (2, 0.8), (3, 0.7))
    assert service.store.get_job(job.job_id).metrics_cursor.attempt == 2


def test_get_metrics_catches_up_and_counts_malformed_lines(world):
    service, backend = world
    job = running_job(service, backend, metrics_line(acc=0.5) + "JOBPLANE_METRICS {broken\n" + metrics_line(acc=0.6))
    body = service.metrics(ALICE, job.job_id).to_api()
    assert body == {
        "job_id": job.job_id,
        "metrics": {"acc": 0.6},
        "series": {"acc": [[1, 0.5], [2, 0.6]]},
        "lines": 2,
        "malformed_lines": 1,
        "caught_up": True,
    }
    assert service.metrics(ALICE, job.job_id).to_api()["series"] == body["series"]  # nothing new: the store's


def test_jobs_that_have_not_started_are_not_read(world):
    service, backend = world
    queued = make_job(status=JobStatus.QUEUED)
    service.store.create_job(queued, make_history(queued))
    assert read_metrics(service) == []
    assert service.metrics(ALICE, queued.job_id).to_api()["series"] == {}
    assert backend.logs_calls == 0


def test_reconcile_all_reports_the_metrics_read(world):
    service, backend = world
    job = running_job(service, backend, metrics_line(loss=1))
    backend.resources[job.native_name] = "Running"  # in sync: reconcile's own decision is NONE
    results = reconcile_all(service)
    assert results[0]["action"] == "none"
    assert {"metrics": {"jobs_read": 1, "errors": []}} in results


def test_a_tick_makes_one_logs_call_per_running_job_and_writes_only_what_changed(settings):
    store, series = InMemoryJobStore(), InMemoryMetricsStore()
    backend = LogBackend(settings, paged=True, page_lines=2)
    service = JobService(store, settings, backend_factory=lambda *_: backend, metrics_store=series)
    job = running_job(service, backend, "".join(metrics_line(step=s) for s in range(1, 6)))
    writes = []
    record = store.record_metrics
    store.record_metrics = lambda *a: writes.append("job") or record(*a)
    for _ in range(3):
        read_metrics(service)
    assert backend.logs_calls == 3  # a page a tick: two lines each here
    assert [p[0] for p in series.series(job.job_id)["step"].points] == [1, 2, 3, 4, 5]
    assert writes == ["job"] * 3
    read_metrics(service)  # nothing new: a read, no write
    assert (backend.logs_calls, writes) == (4, ["job"] * 3)


def test_reads_are_bounded_and_say_when_they_did_not_reach_the_end(settings):
    from chalicelib.jobs.metrics_reader import FINAL_BYTES, REQUEST_BYTES

    store, series = InMemoryJobStore(), InMemoryMetricsStore()
    backend = LogBackend(settings)
    service = JobService(store, settings, backend_factory=lambda *_: backend, metrics_store=series)
    filler = "x" * 999 + "\n"
    job = running_job(service, backend, filler * 300 + metrics_line(acc=0.9) + filler * 800)  # about 1.1 MB
    first = service.metrics(ALICE, job.job_id)
    assert first.caught_up is False and first.job.metrics_cursor.offset <= REQUEST_BYTES
    second = service.metrics(ALICE, job.job_id)
    assert second.job.metrics == {"acc": 0.9}
    ended = service.apply_event(JobEvent(job.job_id, JobStatus.SUCCEEDED, EventSource.BACKEND))
    assert ended.metrics_cursor.offset - second.job.metrics_cursor.offset <= FINAL_BYTES
    assert ended.metrics_cursor.offset < len(backend.output[job.native_name])  # the rest: later requests


def test_the_slack_tail_of_a_job_reads_at_most_2_kib(world):
    service, backend = world
    job = running_job(service, backend, "".join(f"{i:04d} " + "y" * 195 + "\n" for i in range(50)))
    lines = service.tail_of(service.store.get_job(job.job_id))
    assert sum(len(line) + 1 for line in lines) <= 2048
    assert lines[-1].startswith("0049 ") and len(lines) == 10


def test_the_api_tail_gives_15_lines_by_default_within_16_kib(world):
    service, backend = world
    job = running_job(service, backend, "".join(f"{i:04d} " + "z" * 2000 + "\n" for i in range(40)))
    lines, note = service.tail(ALICE, job.job_id)
    assert note is None and len(lines) == 8  # 2 KB lines: 8 fit in 16 KiB
    assert sum(len(line) + 1 for line in lines) <= 16 * 1024 and lines[-1].startswith("0039 ")
    short = running_job(service, backend, "".join(f"line {i}\n" for i in range(40)))
    assert service.tail(ALICE, short.job_id)[0] == [f"line {i}" for i in range(25, 40)]


def test_a_tick_reads_the_active_index_once_for_reconcile_and_metrics_alike(settings, dynamo_store):
    from tests.factories import count_dynamodb

    backend = LogBackend(settings)
    service = JobService(
        dynamo_store, settings, backend_factory=lambda *_: backend, metrics_store=InMemoryMetricsStore()
    )
    jobs = [running_job(service, backend, metrics_line(loss=i)) for i in (1, 2, 3)]
    for job in jobs:
        backend.resources[job.native_name] = "Running"  # in sync: reconcile writes nothing of its own
    dynamodb = count_dynamodb(dynamo_store)
    results = reconcile_all(service)
    assert {"metrics": {"jobs_read": 3, "errors": []}} in results
    # The sparse active index once (reconcile hands its jobs to the metrics read), the queue once (dispatch).
    assert dynamodb["Query"] == 2
    assert dynamodb["UpdateItem"] == 3  # each job's cursor and latest values
    assert [dynamo_store.get_job(j.job_id).metrics for j in jobs] == [{"loss": 1.0}, {"loss": 2.0}, {"loss": 3.0}]
