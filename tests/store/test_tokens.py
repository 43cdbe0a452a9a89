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
