"""The Slack store contract (notification markers, user mappings) on DynamoDB (moto) and in memory."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from chalicelib.store.slack import DynamoSlackStore, InMemorySlackStore, SlackUserRecord
from tests.conftest import make_settings

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["dynamo", "memory"])
def store(request, tmp_path):
    if request.param == "memory":
        return InMemorySlackStore()
    store = DynamoSlackStore(make_settings(tmp_path, request.getfixturevalue("moto_endpoint")))
    store.create_tables()
    return store


def test_can_claim_a_notification_once(store):
    assert store.claim_notification("a" * 32 + "#RUNNING#1", AT) is True
    assert store.claim_notification("a" * 32 + "#RUNNING#1", AT) is False
    assert store.claim_notification("a" * 32 + "#RUNNING#2", AT) is True
    assert store.claim_notification("a" * 32 + "#SUCCEEDED#2", AT) is True


def test_can_map_replace_and_remove_a_slack_user(store):
    assert store.get_slack_user("U2CERLKJA") is None
    store.put_slack_user(SlackUserRecord("U2CERLKJA", "alice", AT))
    assert store.get_slack_user("U2CERLKJA") == SlackUserRecord("U2CERLKJA", "alice", AT)
    store.put_slack_user(SlackUserRecord("U2CERLKJA", "bob", AT))
    assert store.get_slack_user("U2CERLKJA").user == "bob"
    assert store.delete_slack_user("U2CERLKJA") is True
    assert store.delete_slack_user("U2CERLKJA") is False
    assert store.get_slack_user("U2CERLKJA") is None


def test_a_mapping_is_not_a_marker(store):
    store.put_slack_user(SlackUserRecord("U1", "alice", AT))
    assert store.claim_notification("U1", AT) is True
    assert store.get_slack_user("U1").user == "alice"


def test_ten_threads_claiming_one_marker_have_exactly_one_winner(store):
    barrier = threading.Barrier(10)
    results: list[bool] = []
    lock = threading.Lock()

    def worker():
        barrier.wait()
        claimed = store.claim_notification("b" * 32 + "#RUNNING#1", AT)
        with lock:
            results.append(claimed)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 9 + [True]
