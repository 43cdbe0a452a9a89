"""The token store contract on DynamoDB (moto) and in memory."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chalicelib.store.tokens import DynamoTokenStore, InMemoryTokenStore, TokenRecord
from tests.factories import make_settings

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["dynamo", "memory"])
def store(request, tmp_path):
    if request.param == "memory":
        return InMemoryTokenStore()
    store = DynamoTokenStore(make_settings(tmp_path, request.getfixturevalue("moto_endpoint")))
    store.create_tables()
    return store


def test_tokens_are_stored_by_hash(store):
    record = TokenRecord("a" * 64, "alice", True, T0)
    store.put_token(record)
    assert store.get_token("a" * 64) == record
    assert store.get_token("b" * 64) is None


def test_a_non_admin_token_keeps_its_user(store):
    store.put_token(TokenRecord("d" * 64, "bob@lab", False, T0))
    assert store.get_token("d" * 64) == TokenRecord("d" * 64, "bob@lab", False, T0)


def test_tokens_are_listed_oldest_first_all_or_one_users(store):
    from datetime import timedelta

    store.put_token(TokenRecord("e" * 64, "carol", False, T0 + timedelta(minutes=2)))
    store.put_token(TokenRecord("f" * 64, "dave", True, T0 + timedelta(minutes=1)))
    store.put_token(TokenRecord("9" * 64, "carol", False, T0))
    assert [r.token_hash[0] for r in store.list_tokens()] == ["9", "f", "e"]
    assert [r.token_hash[0] for r in store.list_tokens("carol")] == ["9", "e"]
    assert store.list_tokens("nobody") == []
    assert store.list_tokens("dave")[0] == TokenRecord("f" * 64, "dave", True, T0 + timedelta(minutes=1))


def test_a_deleted_token_is_gone_and_deleting_it_again_says_so(store):
    store.put_token(TokenRecord("c" * 64, "alice", False, T0))
    assert store.delete_token("c" * 64) is True
    assert store.get_token("c" * 64) is None
    assert store.delete_token("c" * 64) is False
