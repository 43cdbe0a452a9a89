"""The JobStore contract: every test runs against DynamoDB (on moto) and the in-memory twin."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.errors import AlreadyExistsError, StaleStateError
from chalicelib.jobs.capacity import Claim
from chalicelib.jobs.model import EventSource, FailureKind, HistoryEntry, Job, JobStatus, Transition
from chalicelib.jobs.spec_types import JobSpec
from chalicelib.store.base import IdempotencyRecord
from tests import factories

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_job(owner="alice", seconds=0, status=JobStatus.QUEUED, **changes) -> Job:
    """A local job created `seconds` after T0 (listings order by creation)."""
    at = T0 + timedelta(seconds=seconds)
    spec = changes.pop("spec", {"command": ["python", "-c", "print(1)"], "env": {"LR": "0.1"}})
    return factories.make_job(spec=spec, owner=owner, status=status, created_at=at, updated_at=at, **changes)


def first_entry(job: Job) -> HistoryEntry:
    return HistoryEntry(job.job_id, job.created_at, None, job.status, f"submitted by {job.owner}", EventSource.API)


def create(store, job: Job) -> Job:
    store.create_job(job, first_entry(job))
    return job


def move(job: Job, to: JobStatus, seconds: float, reason=None, **changes) -> Transition:
    return Transition(
        job.job_id,
        job.status,
        to,
        reason or f"to {to.value}",
        EventSource.BACKEND,
        job.created_at + timedelta(seconds=seconds),
        changes=changes,
    )


# --- jobs -----------------------------------------------------------------------------


def test_can_create_and_get_a_job_with_every_field_intact(store):
    job = make_job(
        native_id="jp-x",
        native_name="jp-" + "0" * 32 + "-a2",
        attempt=2,
        started_at=T0 + timedelta(seconds=3),
        failure_reason="none yet",
        cost_estimate_usd=1.25,
        planner_reason="backend 'local' requested by the spec",
        status_reason="submitted",
        candidates=("local", "ec2"),
        claims=(Claim("local:cpu", 1),),
    )
    create(store, job)
    assert store.get_job(job.job_id) == job


def test_an_unknown_job_is_none(store):
    assert store.get_job(uuid.uuid4().hex) is None


def test_get_jobs_reads_many_by_key_more_than_one_batch_of_100_and_leaves_out_the_unknown(store):
    jobs = [create(store, make_job()) for _ in range(120)]
    wanted = [j.job_id for j in jobs] + [uuid.uuid4().hex, jobs[0].job_id]
    assert store.get_jobs(wanted) == {j.job_id: j for j in jobs}
    assert store.get_jobs([]) == {}


def test_creating_the_same_job_id_twice_is_refused_and_keeps_the_first(store):
    job = create(store, make_job())
    with pytest.raises(AlreadyExistsError):
        store.create_job(job.with_changes(owner="mallory", name="evil"), first_entry(job))
    assert store.get_job(job.job_id) == job


def test_apply_transition_writes_status_changes_and_history(store):
    job = create(store, make_job())
    updated = store.apply_transition(
        job, move(job, JobStatus.LAUNCHING, 1, native_id="jp-abc", native_name=f"jp-{job.job_id}")
    )
    assert updated.status is JobStatus.LAUNCHING
    assert updated.native_id == "jp-abc"
    assert updated.status_reason == "to LAUNCHING"
    assert updated.updated_at == T0 + timedelta(seconds=1)
    assert store.get_job(job.job_id) == updated


def test_a_transition_from_a_stale_status_raises_and_writes_nothing(store):
    job = create(store, make_job())
    launched = store.apply_transition(job, move(job, JobStatus.LAUNCHING, 1))
    with pytest.raises(StaleStateError):
        store.apply_transition(job, move(job, JobStatus.CANCELLED, 2, finished_at=T0))  # job says QUEUED
    assert store.get_job(job.job_id) == launched
    assert [e.to_status for e in store.history(job.job_id)] == [JobStatus.QUEUED, JobStatus.LAUNCHING]


def test_a_transition_of_a_missing_job_is_stale(store):
    job = make_job()
    with pytest.raises(StaleStateError):
        store.apply_transition(job, move(job, JobStatus.LAUNCHING, 1))
    assert store.get_job(job.job_id) is None


def test_history_is_appended_in_order_with_every_field(store):
    job = create(store, make_job())
    steps = [(JobStatus.LAUNCHING, 1), (JobStatus.RUNNING, 2), (JobStatus.FAILED, 3)]
    for status, seconds in steps:
        transition = Transition(
            job.job_id,
            job.status,
            status,
            f"now {status.value}",
            EventSource.RECONCILE,
            T0 + timedelta(seconds=seconds),
            native_status=f"native-{status.value.lower()}",
            changes={"failure_kind": FailureKind.USER_ERROR} if status is JobStatus.FAILED else {},
        )
        job = store.apply_transition(job, transition)
    history = store.history(job.job_id)
    assert [(e.from_status, e.to_status) for e in history] == [
        (None, JobStatus.QUEUED),
        (JobStatus.QUEUED, JobStatus.LAUNCHING),
        (JobStatus.LAUNCHING, JobStatus.RUNNING),
        (JobStatus.RUNNING, JobStatus.FAILED),
    ]
    assert history[0] == first_entry(make_job().with_changes(job_id=job.job_id))
    assert history[3] == HistoryEntry(
        job.job_id,
        T0 + timedelta(seconds=3),
        JobStatus.RUNNING,
        JobStatus.FAILED,
        "now FAILED",
        EventSource.RECONCILE,
        "native-failed",
        1,
    )
    assert store.get_job(job.job_id).failure_kind is FailureKind.USER_ERROR


def test_history_keeps_the_order_of_writes_when_a_late_event_reports_an_earlier_time(store):
    # A cancel is recorded at 0:10; the process had already ended at 0:05, which reconcile learns at 0:12.
    job = create(store, make_job())
    job = store.apply_transition(job, move(job, JobStatus.RUNNING, 1))
    job = store.apply_transition(job, move(job, JobStatus.CANCELLING, 10))
    store.apply_transition(job, move(job, JobStatus.SUCCEEDED, 5, finished_at=T0 + timedelta(seconds=5)))
    history = store.history(job.job_id)
    assert [(e.from_status, e.to_status) for e in history] == [
        (None, JobStatus.QUEUED),
        (JobStatus.QUEUED, JobStatus.RUNNING),
        (JobStatus.RUNNING, JobStatus.CANCELLING),
        (JobStatus.CANCELLING, JobStatus.SUCCEEDED),
    ]
    assert history[3].at == T0 + timedelta(seconds=5)  # the time the source reported is kept


def test_update_job_is_guarded_on_the_status(store):
    job = create(store, make_job())
    updated = store.update_job(job, JobStatus.QUEUED, status_reason="waiting for capacity")
    assert store.get_job(job.job_id).status_reason == "waiting for capacity"
    assert updated.status_reason == "waiting for capacity"
    with pytest.raises(StaleStateError):
        store.update_job(job, JobStatus.RUNNING, status_reason="never")
    assert store.get_job(job.job_id).status_reason == "waiting for capacity"


def test_terminal_jobs_leave_the_active_and_queued_indexes(store):
    queued = create(store, make_job(seconds=1))
    running = create(store, make_job(seconds=2))
    running = store.apply_transition(running, move(running, JobStatus.RUNNING, 3))
    done = create(store, make_job(seconds=3))
    done = store.apply_transition(done, move(done, JobStatus.RUNNING, 4))
    assert {j.job_id for j in store.iter_active()} == {queued.job_id, running.job_id, done.job_id}
    store.apply_transition(done, move(done, JobStatus.SUCCEEDED, 5))
    active = list(store.iter_active())
    assert [j.job_id for j in active] == [queued.job_id, running.job_id]  # oldest first
    assert active[1].status is JobStatus.RUNNING
    assert [j.job_id for j in store.iter_queued()] == [queued.job_id]


def test_a_retry_back_to_queued_rejoins_the_queued_index(store):
    job = create(store, make_job())
    job = store.apply_transition(job, move(job, JobStatus.LAUNCHING, 1))
    assert list(store.iter_queued()) == []
    store.apply_transition(job, move(job, JobStatus.QUEUED, 2, attempt=2))
    assert [(j.job_id, j.attempt) for j in store.iter_queued()] == [(job.job_id, 2)]


# --- listing --------------------------------------------------------------------------


def _all_pages(store, owner, status, limit):
    seen, cursor, pages = [], None, 0
    while True:
        page = store.list_jobs(owner, status, limit, cursor)
        assert len(page.jobs) <= limit
        seen.extend(page.jobs)
        pages += 1
        assert pages < 50, "pagination does not end"
        if page.cursor is None:
            return seen, pages
        cursor = page.cursor


def test_list_jobs_is_newest_first(store):
    jobs = [create(store, make_job(seconds=s)) for s in (5, 1, 9, 3)]
    page = store.list_jobs(None, None, 10, None)
    expected = [j.job_id for j in sorted(jobs, key=lambda j: j.created_at, reverse=True)]
    assert [j.job_id for j in page.jobs] == expected
    assert page.cursor is None


def test_list_jobs_for_an_owner_shows_only_that_owners_jobs(store):
    alice = [create(store, make_job("alice", s)) for s in range(3)]
    create(store, make_job("bob", 10))
    page = store.list_jobs("alice", None, 10, None)
    assert [j.job_id for j in page.jobs] == [j.job_id for j in reversed(alice)]
    assert store.list_jobs("carol", None, 10, None).jobs == []


def test_list_jobs_filters_by_status(store):
    queued = create(store, make_job("alice", 1))
    running = create(store, make_job("alice", 2))
    store.apply_transition(running, move(running, JobStatus.RUNNING, 3))
    failed = create(store, make_job("bob", 3))
    store.apply_transition(failed, move(failed, JobStatus.FAILED, 4))
    assert [j.job_id for j in store.list_jobs(None, JobStatus.QUEUED, 10, None).jobs] == [queued.job_id]
    assert [j.job_id for j in store.list_jobs(None, JobStatus.RUNNING, 10, None).jobs] == [running.job_id]
    assert [j.job_id for j in store.list_jobs(None, JobStatus.FAILED, 10, None).jobs] == [failed.job_id]
    assert store.list_jobs("alice", JobStatus.FAILED, 10, None).jobs == []
    assert [j.job_id for j in store.list_jobs("alice", JobStatus.RUNNING, 10, None).jobs] == [running.job_id]


@pytest.mark.parametrize("limit", [1, 7, 23])
def test_pagination_returns_every_job_once_in_order(store, limit):
    jobs = [create(store, make_job("alice" if i % 3 else "bob", i)) for i in range(23)]
    seen, pages = _all_pages(store, None, None, limit)
    expected = [j.job_id for j in sorted(jobs, key=lambda j: j.created_at, reverse=True)]
    assert [j.job_id for j in seen] == expected
    assert pages <= -(-23 // limit) + 1  # an empty final page is allowed, no more


def test_pagination_with_an_owner_and_a_status_filter_returns_every_match_once(store):
    matches = []
    for i in range(17):
        job = create(store, make_job("alice" if i % 2 else "bob", i))
        if i % 4 in (1, 3) and i % 3:
            job = store.apply_transition(job, move(job, JobStatus.RUNNING, i + 1))
            matches.append(job)
    seen, _ = _all_pages(store, "alice", JobStatus.RUNNING, 2)
    assert [j.job_id for j in seen] == [j.job_id for j in reversed(matches)]
    assert all(j.owner == "alice" and j.status is JobStatus.RUNNING for j in seen)


def test_jobs_created_in_the_same_instant_page_without_loss(store):
    jobs = [create(store, make_job(seconds=0)) for _ in range(6)]
    seen, _ = _all_pages(store, None, None, 4)
    assert sorted(j.job_id for j in seen) == sorted(j.job_id for j in jobs)
    assert len(seen) == 6


# --- idempotency keys -----------------------------------------------------------------


def test_the_first_idempotency_claim_wins_and_is_returned_to_later_claims(store):
    first = IdempotencyRecord("alice", "key-1", "1" * 32, "hash-1", T0)
    assert store.claim_idempotency_key(first) == first
    second = IdempotencyRecord("alice", "key-1", "2" * 32, "hash-2", T0 + timedelta(seconds=1))
    assert store.claim_idempotency_key(second) == first
    other_owner = IdempotencyRecord("bob", "key-1", "3" * 32, "hash-3", T0)
    assert store.claim_idempotency_key(other_owner) == other_owner


# --- concurrency ----------------------------------------------------------------------


def test_ten_threads_applying_the_same_transition_have_exactly_one_winner(store):
    job = create(store, make_job())
    barrier = threading.Barrier(10)
    results: list[str] = []
    lock = threading.Lock()

    def worker(i):
        transition = move(job, JobStatus.LAUNCHING, 1, reason=f"worker {i}", native_id=f"jp-{i}")
        barrier.wait()
        try:
            store.apply_transition(job, transition)
            outcome = f"won {i}"
        except StaleStateError:
            outcome = "stale"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [r for r in results if r.startswith("won")]
    assert len(results) == 10
    assert len(winners) == 1
    winner = winners[0].split()[1]
    stored = store.get_job(job.job_id)
    assert stored.status is JobStatus.LAUNCHING
    assert stored.native_id == f"jp-{winner}"
    history = store.history(job.job_id)
    assert [e.reason for e in history] == ["submitted by alice", f"worker {winner}"]


def test_ten_threads_claiming_one_idempotency_key_all_get_the_same_record(store):
    barrier = threading.Barrier(10)
    results: list[IdempotencyRecord] = []
    lock = threading.Lock()

    def worker(i):
        record = IdempotencyRecord("alice", "same-key", f"{i:032d}", "hash", T0)
        barrier.wait()
        claimed = store.claim_idempotency_key(record)
        with lock:
            results.append(claimed)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 10
    assert len({r.job_id for r in results}) == 1


# --- the typed spec and the two native fields ------------------------------------------------
def test_the_typed_spec_round_trips_with_every_field(store):
    from chalicelib.jobs.spec import parse_spec
    from tests.factories import FULL_SPEC

    job = create(store, make_job(spec=parse_spec(FULL_SPEC)))
    stored = store.get_job(job.job_id)
    assert stored.spec == job.spec
    assert type(stored.spec) is JobSpec
    assert stored.to_api()["spec"] == job.to_api()["spec"] == parse_spec(FULL_SPEC).to_dict()


def test_our_name_and_the_providers_id_are_kept_apart(store):
    job = create(store, make_job())
    name = f"jp-{job.job_id}"
    launched = store.apply_transition(job, move(job, JobStatus.LAUNCHING, 1, native_name=name))
    assert (store.get_job(job.job_id).native_name, store.get_job(job.job_id).native_id) == (name, None)
    store.update_job(launched, JobStatus.LAUNCHING, native_id="arn:aws:ecs:us-east-1:1:task/c/abc")
    stored = store.get_job(job.job_id)
    assert (stored.native_name, stored.native_id) == (name, "arn:aws:ecs:us-east-1:1:task/c/abc")
    assert stored.to_api()["native_name"] == name


@pytest.mark.parametrize(
    ("attempt", "old_native_id", "native_name", "native_id"),
    [
        (1, "jp-{id}", "jp-{id}", None),  # our name, before the provider's id replaced it
        (2, "jp-{id}-a2", "jp-{id}-a2", None),
        (1, "i-0abc123def4567890", "jp-{id}", "i-0abc123def4567890"),  # the provider's id
        (3, "projects/p/locations/r/customJobs/7", "jp-{id}-a3", "projects/p/locations/r/customJobs/7"),
        (1, None, None, None),  # never dispatched
    ],
)
def test_an_item_written_before_native_name_existed_still_loads(
    dynamo_store, attempt, old_native_id, native_name, native_id
):
    job = make_job(attempt=attempt)
    item = dynamo_store._item(job)
    item.native_id = old_native_id.format(id=job.job_id) if old_native_id else None
    item.native_name = None  # what an old item lacks
    item.save()
    loaded = dynamo_store.get_job(job.job_id)
    expect = (native_name.format(id=job.job_id) if native_name else None, native_id)
    assert (loaded.native_name, loaded.native_id) == expect
    assert loaded.spec == job.spec
