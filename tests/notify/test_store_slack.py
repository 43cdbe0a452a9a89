"""The Slack store methods (notification markers, user mapping) against both stores."""

from __future__ import annotations

from datetime import UTC, datetime

from chalicelib.store.base import SlackUserRecord

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


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
