"""JobStore.iter_created on both stores: the jobs created in [since, until), of one owner or all, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chalicelib.jobs.model import EventSource, HistoryEntry, JobStatus
from tests import factories
from tests.factories import count_dynamodb

DEC = datetime(2026, 12, 1, tzinfo=UTC)


def put(store, owner, at):
    job = factories.make_job(owner=owner, status=JobStatus.QUEUED, created_at=at, updated_at=at)
    store.create_job(job, HistoryEntry(job.job_id, at, None, job.status, "seeded", EventSource.API))
    return job


def test_jobs_are_read_by_creation_range_and_owner(store):
    before = put(store, "alice", DEC - timedelta(microseconds=1))  # Nov 30, 23:59:59.999999
    first = put(store, "alice", DEC)  # exactly the start: in
    bob = put(store, "bob", DEC + timedelta(days=3))
    last = put(store, "alice", DEC + timedelta(days=30, hours=23, minutes=59))
    after = put(store, "alice", datetime(2027, 1, 1, tzinfo=UTC))  # exactly the end: out
    january = datetime(2027, 1, 1, tzinfo=UTC)
    ids = [j.job_id for j in store.iter_created(DEC, january)]
    assert ids == [first.job_id, bob.job_id, last.job_id]
    assert [j.job_id for j in store.iter_created(DEC, january, "alice")] == [first.job_id, last.job_id]
    assert [j.job_id for j in store.iter_created(DEC)] == [first.job_id, bob.job_id, last.job_id, after.job_id]
    assert before.job_id not in {j.job_id for j in store.iter_created(DEC - timedelta(days=1), DEC)} ^ {before.job_id}
    assert list(store.iter_created(january + timedelta(days=1))) == []


def test_a_month_of_jobs_is_one_query(dynamo_store):
    for day in range(5):
        put(dynamo_store, "alice", DEC + timedelta(days=day))
    put(dynamo_store, "alice", DEC - timedelta(days=1))
    counts = count_dynamodb(dynamo_store)
    assert len(list(dynamo_store.iter_created(DEC, datetime(2027, 1, 1, tzinfo=UTC)))) == 5
    assert dict(counts) == {"Query": 1}
