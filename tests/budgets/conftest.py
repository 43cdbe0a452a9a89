"""A world for budgets (tests.factories.BudgetWorld): an in-memory job store, budgets, a priced backend."""

from __future__ import annotations

import pytest

from tests.factories import BudgetWorld


@pytest.fixture
def world(settings):
    return BudgetWorld(settings)
