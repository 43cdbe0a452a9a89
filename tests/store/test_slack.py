"""The Slack store contract (notification outbox, user mappings) on DynamoDB (moto) and in memory."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.store.slack import (
    DynamoSlackStore,
    InMemorySlackStore,
    OutboxRecord,
    OutboxState,
    SlackUserRecord,
)
from tests.factories import make_settings

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PENDING, SENDING, SENT = OutboxState.PENDING, OutboxState.SENDING, OutboxState.SENT


@pytest.fixture(params=["dynamo", "memory"])
def store(request, tmp_path):
    if request.param == "memory":
        return InMemorySlackStore()
    store = DynamoSlackStore(make_settings(tmp_path, request.getfixturevalue("moto_endpoint")))
    store.create_tables()
    return store


def outbox(key, at=AT, destination="webhook"):
    return OutboxRecord(key, {"text": key}, destination, PENDING, created_at=at, next_try_at=at)


def test_can_record_a_notification_once(store):
    assert store.add_outbox(outbox("a" * 32 + "#RUNNING#1")) is True
    assert store.add_outbox(outbox("a" * 32 + "#RUNNING#1")) is False
    assert store.add_outbox(outbox("a" * 32 + "#RUNNING#2")) is True
    assert store.add_outbox(outbox("a" * 32 + "#SUCCEEDED#2")) is True
    assert store.get_outbox("a" * 32 + "#RUNNING#1") == outbox("a" * 32 + "#RUNNING#1")
    assert store.get_outbox("a" * 32 + "#FAILED#1") is None


def test_can_map_replace_and_remove_a_slack_user(store):
    assert store.get_slack_user("U2CERLKJA") is None
    store.put_slack_user(SlackUserRecord("U2CERLKJA", "alice", AT))
    assert store.get_slack_user("U2CERLKJA") == SlackUserRecord("U2CERLKJA", "alice", AT)
    store.put_slack_user(SlackUserRecord("U2CERLKJA", "bob", AT))
    assert store.get_slack_user("U2CERLKJA").user == "bob"
    assert store.delete_slack_user("U2CERLKJA") is True
    assert store.delete_slack_user("U2CERLKJA") is False
    assert store.get_slack_user("U2CERLKJA") is None


def test_a_mapping_is_not_an_outbox_record(store):
    store.put_slack_user(SlackUserRecord("U1", "alice", AT))
    assert store.add_outbox(outbox("U1")) is True
    assert store.get_slack_user("U1").user == "alice"
    assert store.get_outbox("user#U1") is None


def test_ten_threads_recording_one_notification_have_exactly_one_winner(store):
    barrier = threading.Barrier(10)
    results: list[bool] = []
    lock = threading.Lock()

    def worker():
        barrier.wait()
        added = store.add_outbox(outbox("b" * 32 + "#RUNNING#1"))
        with lock:
            results.append(added)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 9 + [True]


def test_only_due_pending_records_are_listed_earliest_first(store):
    for minutes, key in [(3, "c"), (1, "a"), (2, "b"), (10, "later")]:
        store.add_outbox(outbox(key, AT + timedelta(minutes=minutes)))
    store.add_outbox(outbox("sent", AT))
    store.claim_outbox("sent", AT, AT + timedelta(minutes=1))
    store.settle_outbox("sent", SENDING, SENT, AT, "")
    assert [r.key for r in store.open_outbox(PENDING, AT + timedelta(minutes=5), 10)] == ["a", "b", "c"]
    assert [r.key for r in store.open_outbox(PENDING, AT + timedelta(minutes=5), 2)] == ["a", "b"]
    assert store.count_open_outbox(PENDING) == 4
    assert store.count_open_outbox(SENDING) == 0
    with pytest.raises(ValueError, match="state: only PENDING and SENDING"):
        store.open_outbox(SENT, AT, 10)


def test_a_claim_takes_one_due_pending_record_and_counts_the_try(store):
    store.add_outbox(outbox("k", AT + timedelta(seconds=30)))
    assert store.claim_outbox("k", AT, AT + timedelta(minutes=1)) is None  # not due yet
    lease = AT + timedelta(minutes=2)
    claimed = store.claim_outbox("k", AT + timedelta(minutes=1), lease)
    assert (claimed.state, claimed.tries, claimed.next_try_at, claimed.message) == (SENDING, 1, lease, {"text": "k"})
    assert store.claim_outbox("k", AT + timedelta(minutes=1), lease) is None  # already SENDING
    assert [r.key for r in store.open_outbox(SENDING, lease, 10)] == ["k"]
    assert store.open_outbox(PENDING, lease, 10) == []
    assert store.claim_outbox("missing", AT, lease) is None


def test_a_settle_moves_only_from_the_expected_state(store):
    store.add_outbox(outbox("k"))
    store.claim_outbox("k", AT, AT + timedelta(minutes=1))
    retry = AT + timedelta(seconds=5)
    assert store.settle_outbox("k", SENDING, PENDING, retry, "HTTP 429: rate_limited") is True
    again = store.get_outbox("k")
    assert (again.state, again.tries, again.next_try_at, again.detail) == (PENDING, 1, retry, "HTTP 429: rate_limited")
    assert store.settle_outbox("k", SENDING, SENT, retry, "") is False  # it is PENDING now
    store.claim_outbox("k", retry, retry + timedelta(minutes=1))
    assert store.settle_outbox("k", SENDING, SENT, retry, "") is True
    done = store.get_outbox("k")
    assert (done.state, done.tries, done.detail) == (SENT, 2, "")
    assert store.count_open_outbox(PENDING) == store.count_open_outbox(SENDING) == 0


def test_ten_threads_claiming_one_record_have_exactly_one_winner(store):
    store.add_outbox(outbox("race"))
    barrier = threading.Barrier(10)
    results: list[bool] = []
    lock = threading.Lock()

    def worker():
        barrier.wait()
        claimed = store.claim_outbox("race", AT, AT + timedelta(minutes=1))
        with lock:
            results.append(claimed is not None)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 9 + [True]
    assert store.get_outbox("race").tries == 1
