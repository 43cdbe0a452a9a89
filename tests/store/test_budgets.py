"""The budget store contract on DynamoDB (moto) and in memory; listing is one Query, never a Scan."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chalicelib.budgets.model import Budget, OnExceed, Scope
from chalicelib.store.budgets import DynamoBudgetStore, InMemoryBudgetStore
from tests.factories import count_dynamodb, make_settings

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["dynamo", "memory"])
def store(request, tmp_path):
    if request.param == "memory":
        return InMemoryBudgetStore()
    store = DynamoBudgetStore(make_settings(tmp_path, request.getfixturevalue("moto_endpoint")))
    store.create_tables()
    return store


def budget(subject="alice", scope=Scope.OWNER, limit=500.0, **kw) -> Budget:
    return Budget(scope, subject, limit, kw.pop("on_exceed", OnExceed.REFUSE), kw.pop("hard", False), T0, "root")


def test_a_budget_is_stored_whole_and_replaced_by_its_id(store):
    store.put_budget(budget(limit=500.0))
    assert store.get_budget("owner:alice") == budget(limit=500.0)
    replaced = budget(limit=750.5, on_exceed=OnExceed.HOLD, hard=True)
    store.put_budget(replaced)
    assert store.get_budget("owner:alice") == replaced
    assert store.list_budgets() == [replaced]
    assert store.get_budget("owner:bob") is None


def test_budgets_are_listed_by_id_and_deleted_once(store):
    store.put_budget(budget("team=vision", Scope.LABEL, 1000.0))
    store.put_budget(budget("bob"))
    store.put_budget(budget("alice"))
    assert [b.budget_id for b in store.list_budgets()] == ["label:team=vision", "owner:alice", "owner:bob"]
    assert store.delete_budget("owner:bob") is True
    assert store.delete_budget("owner:bob") is False
    assert [b.budget_id for b in store.list_budgets()] == ["label:team=vision", "owner:alice"]


def test_listing_budgets_is_one_query(tmp_path, moto_endpoint):
    store = DynamoBudgetStore(make_settings(tmp_path, moto_endpoint))
    store.create_tables()
    for name in ("a", "b", "c"):
        store.put_budget(budget(name))
    counts = count_dynamodb(store)
    assert len(store.list_budgets()) == 3
    assert dict(counts) == {"Query": 1}
