"""Every store's DynamoDB implementation together: the set that owns every table (create, describe, grant)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chalicelib.config import Settings
    from chalicelib.store.edge import DynamoStore


def dynamo_stores(settings: Settings) -> dict[str, DynamoStore]:
    """One DynamoDB store of each kind: together they own every table (create, describe, grant)."""
    from chalicelib.store.budgets import DynamoBudgetStore
    from chalicelib.store.devvms import DynamoDevVmStore
    from chalicelib.store.dynamo import DynamoJobStore
    from chalicelib.store.endpoints import DynamoEndpointStore
    from chalicelib.store.metrics import DynamoMetricsStore
    from chalicelib.store.slack import DynamoSlackStore
    from chalicelib.store.tokens import DynamoTokenStore

    return {
        "jobs": DynamoJobStore(settings),
        "tokens": DynamoTokenStore(settings),
        "slack": DynamoSlackStore(settings),
        "devvms": DynamoDevVmStore(settings),
        "metrics": DynamoMetricsStore(settings),
        "endpoints": DynamoEndpointStore(settings),
        "budgets": DynamoBudgetStore(settings),
    }
