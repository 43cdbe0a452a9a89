"""The metrics store contract on DynamoDB (moto) and in memory, and the job store's guarded record_metrics."""

from __future__ import annotations

import uuid

import pytest

from chalicelib.jobs.metrics import Cursor, Series
from chalicelib.jobs.model import JobStatus
from chalicelib.store.metrics import DynamoMetricsStore, InMemoryMetricsStore
from tests.factories import make_history, make_job, make_settings


@pytest.fixture(params=["dynamo", "memory"])
def metrics(request, tmp_path):
    if request.param == "memory":
        return InMemoryMetricsStore(max_points=10)
    store = DynamoMetricsStore(make_settings(tmp_path, request.getfixturevalue("moto_endpoint")), max_points=10)
    store.create_tables()
    return store


def test_a_job_without_metrics_has_no_series(metrics):
    assert metrics.series(uuid.uuid4().hex) == {}


def test_points_are_kept_per_key_and_a_seq_is_added_once(metrics):
    job_id = uuid.uuid4().hex
    after = metrics.append(job_id, {"loss": [(1, 0.9), (2, 0.5)], "acc": [(2, 0.6)]})
    assert after["loss"].points == ((1, 0.9), (2, 0.5))
    again = metrics.append(job_id, {"loss": [(2, 0.5), (3, 0.4)]})  # seq 2 read twice
    assert again["loss"].points == ((1, 0.9), (2, 0.5), (3, 0.4))
    assert metrics.series(job_id) == {"loss": again["loss"], "acc": Series(((2, 0.6),), 1, 1, 2)}
    assert metrics.series(uuid.uuid4().hex) == {}  # another job's series are apart


def test_a_series_stays_within_its_bound(metrics):
    job_id = uuid.uuid4().hex
    for start in range(1, 100, 10):
        metrics.append(job_id, {"step": [(seq, float(seq)) for seq in range(start, start + 10)]})
    series = metrics.series(job_id)["step"]
    assert len(series.points) <= 10
    assert series.seen == 100 and series.points[0] == (1, 1.0)


def test_a_writer_with_a_stale_view_loses_its_guard_and_builds_on_what_won(tmp_path, moto_endpoint):
    settings = make_settings(tmp_path, moto_endpoint)
    first, second = DynamoMetricsStore(settings), DynamoMetricsStore(settings)
    first.create_tables()
    job_id = uuid.uuid4().hex
    first.append(job_id, {"loss": [(1, 1.0)]})
    stale = Series()  # what a reader saw before the first write
    updated = second._append_key(job_id, "loss", [(1, 1.0), (2, 0.5)], stale)
    assert updated.points == ((1, 1.0), (2, 0.5))
    assert first.series(job_id)["loss"] == updated


def test_record_metrics_is_guarded_on_the_cursor_it_read(store):
    job = make_job(status=JobStatus.RUNNING)
    store.create_job(job, make_history(job))
    moved = store.record_metrics(job, {"loss": 0.5}, Cursor(120, 1))
    assert (moved.metrics, moved.metrics_cursor) == ({"loss": 0.5}, Cursor(120, 1))
    assert store.get_job(job.job_id) == moved
    assert store.record_metrics(job, {"loss": 0.9}, Cursor(60, 1)) is None  # read from the old cursor
    assert store.get_job(job.job_id).metrics == {"loss": 0.5}
    later = store.record_metrics(moved, {"loss": 0.25}, Cursor("t~x", 2, 1, "JOBPLANE_", 1))
    assert store.get_job(job.job_id) == later
    # The fields survive a transition (which rewrites other fields only) and terminal jobs take them too.
    ended = store.apply_transition(
        later, _transition(later.job_id, {"metrics": {"loss": 0.2}, "metrics_cursor": Cursor(9, 3)})
    )
    assert store.get_job(job.job_id).metrics == ended.metrics == {"loss": 0.2}
    assert store.record_metrics(ended, {"loss": 0.1}, Cursor(10, 4)).metrics == {"loss": 0.1}


def test_record_metrics_of_a_job_that_does_not_exist_writes_nothing(store):
    job = make_job(status=JobStatus.RUNNING)
    assert store.record_metrics(job, {"loss": 0.5}, Cursor(1, 1)) is None
    assert store.get_job(job.job_id) is None


def _transition(job_id, changes):
    from chalicelib.jobs.model import EventSource, Transition, utcnow

    ended = (JobStatus.RUNNING, JobStatus.SUCCEEDED, "exit 0", EventSource.BACKEND, utcnow())
    return Transition(job_id, *ended, None, changes)


def test_an_append_costs_one_query_and_one_put_per_key_with_points(tmp_path, moto_endpoint):
    store = DynamoMetricsStore(make_settings(tmp_path, moto_endpoint))
    store.create_tables()
    calls = []
    client = store.Metric._get_connection().connection.client
    client.meta.events.register("before-call.dynamodb.*", lambda model, **kw: calls.append(model.name))
    job_id = uuid.uuid4().hex
    store.append(job_id, {"loss": [(1, 0.5)], "acc": [(1, 0.7)]})
    assert sorted(calls) == ["PutItem", "PutItem", "Query"]
