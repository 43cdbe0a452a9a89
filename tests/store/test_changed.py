"""Jobs by the time of their last write (GET /jobs?updated_since=): every write moves a job, the read is one
Query of the *-changed index, and a table made before those indexes gets them."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from chalicelib.errors import ValidationError
from chalicelib.jobs.metrics import Cursor
from chalicelib.jobs.model import EventSource, HistoryEntry, JobStatus, Transition, iso, utcnow
from tests import factories

T0 = utcnow() - timedelta(days=1)


def queued_job(owner="alice", seconds=0):
    """A QUEUED local job created `seconds` after T0."""
    at = T0 + timedelta(seconds=seconds)
    return factories.make_job(spec={"command": ["true"]}, owner=owner, status=JobStatus.QUEUED, created_at=at)


def create(store, job):
    store.create_job(job, HistoryEntry(job.job_id, job.created_at, None, job.status, "submitted", EventSource.API))
    return job


def move(job, to, seconds):
    at = job.created_at + timedelta(seconds=seconds)
    return Transition(job.job_id, job.status, to, f"to {to.value}", EventSource.BACKEND, at)


class QueryCounter:
    def __init__(self):
        self.queries = 0
        self.items_read = 0

    def __call__(self, parsed, **_):  # botocore 'after-call' hook
        self.queries += 1
        self.items_read += int(parsed.get("ScannedCount", parsed.get("Count", 0)))


def _mark():
    """A time strictly between the writes before and the writes after (iso() has microseconds)."""
    time.sleep(0.002)
    mark = iso(utcnow())
    time.sleep(0.002)
    return mark


def _ids(page):
    return [j.job_id for j in page.jobs]


def _all_changed(store, owner, since, limit):
    seen, cursor, pages = [], None, 0
    while True:
        page = store.list_changed(owner, since, limit, cursor)
        seen.extend(page.jobs)
        pages += 1
        cursor = page.cursor
        if cursor is None:
            return seen, pages
        assert pages < 50


def test_only_jobs_written_after_the_mark_come_least_recently_written_first(store):
    old = [create(store, queued_job(seconds=s)) for s in range(3)]
    mark = _mark()
    assert store.list_changed(None, mark, 10, None).jobs == []
    fresh = create(store, queued_job(seconds=10))
    time.sleep(0.002)
    moved = store.apply_transition(old[1], move(old[1], JobStatus.LAUNCHING, 1))
    assert _ids(store.list_changed(None, mark, 10, None)) == [fresh.job_id, moved.job_id]
    assert store.list_changed(None, mark, 10, None).jobs[1].status is JobStatus.LAUNCHING


def test_every_kind_of_write_moves_a_job_past_the_mark(store):
    a, b, c = (create(store, queued_job(seconds=s)) for s in range(3))
    b = store.apply_transition(b, move(b, JobStatus.LAUNCHING, 1))
    mark = _mark()
    store.update_job(a, JobStatus.QUEUED, planner_reason="re-planned")
    time.sleep(0.002)
    store.record_metrics(b, {"loss": 0.5}, Cursor(1, 10))
    time.sleep(0.002)
    store.apply_transition(c, move(c, JobStatus.CANCELLED, 2))
    assert _ids(store.list_changed(None, mark, 10, None)) == [a.job_id, b.job_id, c.job_id]
    by_id = {j.job_id: j for j in store.list_changed(None, mark, 10, None).jobs}
    assert by_id[a.job_id].planner_reason == "re-planned"
    assert by_id[b.job_id].metrics == {"loss": 0.5}
    assert by_id[c.job_id].status is JobStatus.CANCELLED


def test_an_owner_sees_only_their_own_changes(store):
    mark = _mark()
    alice = create(store, queued_job("alice", 1))
    create(store, queued_job("bob", 2))
    assert _ids(store.list_changed("alice", mark, 10, None)) == [alice.job_id]
    assert store.list_changed("carol", mark, 10, None).jobs == []
    assert len(store.list_changed(None, mark, 10, None).jobs) == 2


@pytest.mark.parametrize("limit", [1, 4, 11])
def test_pages_of_changes_return_every_job_once(store, limit):
    mark = _mark()
    jobs = [create(store, queued_job("alice" if i % 2 else "bob", i)) for i in range(11)]
    seen, pages = _all_changed(store, None, mark, limit)
    assert [j.job_id for j in seen] == [j.job_id for j in jobs]  # in the order they were written
    assert pages <= -(-11 // limit) + 1
    alice, _ = _all_changed(store, "alice", mark, 2)
    assert [j.job_id for j in alice] == [j.job_id for j in jobs if j.owner == "alice"]


def test_a_cursor_of_another_listing_is_refused(dynamo_store):
    for i in range(3):
        create(dynamo_store, queued_job("alice", i))
    created = dynamo_store.list_jobs("alice", None, 1, None).cursor
    with pytest.raises(ValidationError) as err:
        dynamo_store.list_changed("alice", "2000-01-01T00:00:00.000000Z", 1, created)
    assert err.value.details[0]["field"] == "next_token"
    changed = dynamo_store.list_changed("alice", "2000-01-01T00:00:00.000000Z", 1, None).cursor
    with pytest.raises(ValidationError):
        dynamo_store.list_changed(None, "2000-01-01T00:00:00.000000Z", 1, changed)  # alice's, asked as all


def test_with_400_jobs_and_3_changed_the_read_is_one_query_of_what_changed(dynamo_store):
    with dynamo_store.Job.batch_write() as batch:  # every one carries `changed`, all before the mark
        for i in range(400):
            batch.save(dynamo_store._item(queued_job("alice" if i % 2 else "bob", i)))
    jobs = dynamo_store.list_jobs(None, None, 3, None).jobs
    mark = _mark()
    for job in jobs:
        dynamo_store.update_job(job, job.status, planner_reason="touched")
    counter = QueryCounter()
    dynamo_store.Job._get_connection().connection.client.meta.events.register("after-call.dynamodb.Query", counter)
    page = dynamo_store.list_changed(None, mark, 100, None)
    assert sorted(_ids(page)) == sorted(j.job_id for j in jobs)
    assert counter.queries == 1 and counter.items_read == 3  # not 400: no Scan, no filter


def test_a_jobs_table_made_before_the_changed_indexes_gets_them(tmp_path, moto_endpoint):
    from chalicelib.store.dynamo import DynamoJobStore
    from tests.factories import make_settings

    store = DynamoJobStore(make_settings(tmp_path, moto_endpoint))
    model = store.Job
    schema = model._get_schema()
    old = [i for i in schema["global_secondary_indexes"] if not i["index_name"].endswith("-changed")]
    names = {k["AttributeName"] for i in old for k in i["key_schema"]} | {"job_id"}
    client = model._get_connection().connection.client
    client.create_table(
        TableName=model.Meta.table_name,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=schema["key_schema"],
        AttributeDefinitions=[a for a in schema["attribute_definitions"] if a["AttributeName"] in names],
        GlobalSecondaryIndexes=[
            {"IndexName": i["index_name"], "KeySchema": i["key_schema"], "Projection": {"ProjectionType": "ALL"}}
            for i in old
        ],
    )
    store.create_tables()
    described = client.describe_table(TableName=model.Meta.table_name)["Table"]["GlobalSecondaryIndexes"]
    assert {"owner-changed", "all-changed"} <= {i["IndexName"] for i in described}
    assert store.add_missing_indexes() == []  # idempotent: a second start adds nothing
    mark = iso(utcnow() - timedelta(seconds=1))
    job = create(store, queued_job("alice", 1))
    assert _ids(store.list_changed("alice", mark, 10, None)) == [job.job_id]
