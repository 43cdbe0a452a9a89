"""Status-filtered listings read from their own index: DynamoDB work grows with the page, not with history."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib.auth import Principal
from chalicelib.errors import ValidationError
from chalicelib.jobs.model import FailureKind, JobStatus, utcnow
from chalicelib.jobs.service import JobService
from tests.factories import make_job, make_settings, noop_spec

SPEC = noop_spec("j")


class QueryCounter:
    def __init__(self):
        self.queries = 0
        self.items_read = 0

    def __call__(self, parsed, **_):  # botocore 'after-call' hook
        self.queries += 1
        self.items_read += int(parsed.get("ScannedCount", parsed.get("Count", 0)))


def _fill(store, total, failed, owners=("alice", "bob")):
    """`total` jobs, the `failed` FAILED ones the oldest (a filter over history would read everything)."""
    start = utcnow() - timedelta(days=1)
    with store.Job.batch_write() as batch:
        for i in range(total):
            status = JobStatus.FAILED if i < failed else JobStatus.SUCCEEDED
            job = make_job(
                spec=SPEC,
                job_id=f"{i:032x}",
                owner=owners[i % len(owners)],
                status=status,
                created_at=start + timedelta(seconds=i),
                failure_kind=FailureKind.USER_ERROR if status is JobStatus.FAILED else None,
            )
            batch.save(store._item(job))


def _count(store):
    counter = QueryCounter()
    for client in {m._get_connection().connection.client for m in store.models.values()}:
        client.meta.events.register("after-call.dynamodb.Query", counter)
    return counter


@pytest.mark.parametrize("principal", [Principal("alice"), Principal("admin", admin=True)])
def test_a_status_filtered_page_reads_at_most_two_items_per_job_and_two_queries(dynamo_store, tmp_path, principal):
    _fill(dynamo_store, 400, 10)
    service = JobService(dynamo_store, make_settings(tmp_path))
    counter = _count(dynamo_store)
    jobs, token = service.list(principal, JobStatus.FAILED, 20)
    expected = 5 if not principal.admin else 10
    assert len(jobs) == expected and all(j.status is JobStatus.FAILED for j in jobs)
    assert principal.admin or all(j.owner == "alice" for j in jobs)
    assert token is None
    assert counter.queries <= 2
    assert counter.items_read <= 2 * len(jobs)


def test_status_pages_follow_their_tokens_to_every_match_once(dynamo_store, tmp_path):
    _fill(dynamo_store, 120, 30)
    service = JobService(dynamo_store, make_settings(tmp_path))
    counter = _count(dynamo_store)
    seen, token, pages = [], None, 0
    while True:
        before = (counter.queries, counter.items_read)
        jobs, token = service.list(Principal("alice"), JobStatus.FAILED, 4, token)
        pages += 1
        assert counter.queries - before[0] <= 2
        assert counter.items_read - before[1] <= 2 * max(len(jobs), 1)
        seen.extend(jobs)
        if token is None:
            break
    assert pages == 4  # 15 of alice's: 4 + 4 + 4 + 3, and the last page says it is the last
    assert len({j.job_id for j in seen}) == len(seen) == 15
    assert [j.created_at for j in seen] == sorted((j.created_at for j in seen), reverse=True)


def test_a_job_moves_between_status_listings_with_its_transitions(dynamo_store):
    from chalicelib.jobs.model import EventSource, HistoryEntry, Transition

    job = make_job(spec=SPEC, job_id="f" * 32, status=JobStatus.QUEUED)
    dynamo_store.create_job(job, HistoryEntry(job.job_id, job.created_at, None, JobStatus.QUEUED, "s", EventSource.API))
    assert [j.job_id for j in dynamo_store.list_jobs("alice", JobStatus.QUEUED, 5, None).jobs] == [job.job_id]
    dynamo_store.apply_transition(
        job, Transition(job.job_id, JobStatus.QUEUED, JobStatus.RUNNING, "go", EventSource.BACKEND, utcnow())
    )
    assert dynamo_store.list_jobs("alice", JobStatus.QUEUED, 5, None).jobs == []
    assert dynamo_store.list_jobs(None, JobStatus.QUEUED, 5, None).jobs == []
    assert [j.job_id for j in dynamo_store.list_jobs("alice", JobStatus.RUNNING, 5, None).jobs] == [job.job_id]
    assert [j.job_id for j in dynamo_store.list_jobs(None, JobStatus.RUNNING, 5, None).jobs] == [job.job_id]


def test_a_token_of_another_status_listing_is_refused_naming_the_field(dynamo_store):
    _fill(dynamo_store, 12, 6, owners=("alice",))
    page = dynamo_store.list_jobs("alice", JobStatus.FAILED, 2, None)
    assert page.cursor is not None
    with pytest.raises(ValidationError) as raised:
        dynamo_store.list_jobs("alice", JobStatus.SUCCEEDED, 2, page.cursor)
    assert raised.value.details[0]["field"] == "next_token"


def test_jobs_written_before_the_index_are_backfilled_into_it(dynamo_store):
    _fill(dynamo_store, 6, 3, owners=("alice",))
    for item in dynamo_store.Job.scan():
        item.update(actions=[dynamo_store.Job.owner_status.remove()])  # as an older release wrote them
    assert dynamo_store.list_jobs("alice", JobStatus.FAILED, 10, None).jobs == []
    assert dynamo_store.backfill_owner_status() == 6
    assert len(dynamo_store.list_jobs("alice", JobStatus.FAILED, 10, None).jobs) == 3
    assert dynamo_store.backfill_owner_status() == 0
    dynamo_store.create_tables()  # the local stack's start runs it too, harmlessly
    assert len(dynamo_store.list_jobs("alice", JobStatus.SUCCEEDED, 10, None).jobs) == 3


def test_the_backfill_scan_runs_once_per_deployment_not_at_every_start(dynamo_store, monkeypatch):
    scans = []
    real = dynamo_store.backfill_owner_status
    monkeypatch.setattr(dynamo_store, "backfill_owner_status", lambda: scans.append(1) or real())
    dynamo_store.create_tables()  # new tables record that they need no migration
    assert scans == []
    # As a deployment of an older release: tables with jobs, no migration recorded.
    dynamo_store.Idempotency.get(dynamo_store._migration_pk("owner_status")).delete()
    dynamo_store.create_tables()  # the first start of this release migrates
    dynamo_store.create_tables()  # every later start finds the migration recorded
    dynamo_store.create_tables()
    assert scans == [1]
    # The marker is no idempotency record a user could ever claim: owners start alphanumeric.
    from chalicelib.auth import USER_RE

    assert not USER_RE.match(dynamo_store.MIGRATION_OWNER)
