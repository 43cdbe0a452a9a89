"""The monthly budget store: its interface, its DynamoDB table and its in-memory twin."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from chalicelib.budgets.model import Budget, OnExceed, Scope
from chalicelib.store.edge import DynamoStore, get_or_none, share_botocore_loader, table_meta

if TYPE_CHECKING:
    from pynamodb.models import Model

    from chalicelib.config import Settings

#: every budget is one item under this partition key, so listing them all is one Query (never a Scan)
BUDGETS_PK = "budgets"


class BudgetStore(ABC):
    """Budgets by id (`owner:<user>` or `label:<key>=<value>`); a deployment has tens of them."""

    @abstractmethod
    def put_budget(self, budget: Budget) -> None:
        """Create or replace the budget with this id."""

    @abstractmethod
    def get_budget(self, budget_id: str) -> Budget | None: ...

    @abstractmethod
    def list_budgets(self) -> list[Budget]:
        """Every budget, ordered by id."""

    @abstractmethod
    def delete_budget(self, budget_id: str) -> bool:
        """Remove a budget; False if there was none."""

    def create_tables(self) -> None:
        """Create whatever backing tables are missing (tests, the local stack)."""


class InMemoryBudgetStore(BudgetStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._budgets: dict[str, Budget] = {}

    def put_budget(self, budget: Budget) -> None:
        with self._lock:
            self._budgets[budget.budget_id] = budget

    def get_budget(self, budget_id: str) -> Budget | None:
        return self._budgets.get(budget_id)

    def list_budgets(self) -> list[Budget]:
        return [self._budgets[k] for k in sorted(self._budgets)]

    def delete_budget(self, budget_id: str) -> bool:
        with self._lock:
            return self._budgets.pop(budget_id, None) is not None


def build_models(settings: Settings) -> dict[str, type[Model]]:
    """The budgets table's model, bound to this deployment's table name and endpoint."""
    from pynamodb.attributes import BooleanAttribute, NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
    from pynamodb.models import Model

    class BudgetModel(Model):
        class Meta(table_meta(settings)):
            table_name = settings.budgets_table

        pk = UnicodeAttribute(hash_key=True)
        budget_id = UnicodeAttribute(range_key=True)
        scope = UnicodeAttribute()
        subject = UnicodeAttribute()
        limit_usd = NumberAttribute()
        on_exceed = UnicodeAttribute()
        hard = BooleanAttribute(default=False)
        updated_at = UTCDateTimeAttribute()
        updated_by = UnicodeAttribute()

    return {"budgets": BudgetModel}


class DynamoBudgetStore(DynamoStore, BudgetStore):
    def __init__(self, settings: Settings) -> None:
        share_botocore_loader()
        self.models = build_models(settings)
        self.Budget = self.models["budgets"]

    def put_budget(self, budget: Budget) -> None:
        self.Budget(
            BUDGETS_PK,
            budget.budget_id,
            scope=budget.scope.value,
            subject=budget.subject,
            limit_usd=budget.limit_usd,
            on_exceed=budget.on_exceed.value,
            hard=budget.hard,
            updated_at=budget.updated_at,
            updated_by=budget.updated_by,
        ).save()

    def get_budget(self, budget_id: str) -> Budget | None:
        item = get_or_none(self.Budget, BUDGETS_PK, range_key=budget_id, consistent_read=True)
        return None if item is None else self._record(item)

    def list_budgets(self) -> list[Budget]:
        return [self._record(item) for item in self.Budget.query(BUDGETS_PK, scan_index_forward=True)]

    def delete_budget(self, budget_id: str) -> bool:
        from pynamodb.exceptions import DeleteError

        try:
            self.Budget(BUDGETS_PK, budget_id).delete(condition=self.Budget.pk.exists())
        except DeleteError as exc:
            if getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    @staticmethod
    def _record(item) -> Budget:
        return Budget(
            scope=Scope(item.scope),
            subject=item.subject,
            limit_usd=float(item.limit_usd),
            on_exceed=OnExceed(item.on_exceed),
            hard=bool(item.hard),
            updated_at=item.updated_at,
            updated_by=item.updated_by,
        )
