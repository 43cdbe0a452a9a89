"""deps builds one cached store per aggregate, each on the deployment's own tables."""

from __future__ import annotations

import pytest

from chalicelib import deps
from chalicelib.store.devvms import DynamoDevVmStore
from chalicelib.store.dynamo import DynamoJobStore
from chalicelib.store.metrics import DynamoMetricsStore
from chalicelib.store.slack import DynamoSlackStore
from chalicelib.store.tokens import DynamoTokenStore
from tests.factories import make_settings


@pytest.fixture
def configured(tmp_path):
    settings = make_settings(tmp_path)
    deps.reset()
    deps.override(settings=settings)
    yield settings
    deps.reset()


@pytest.mark.parametrize(
    ("factory", "kind", "table"),
    [
        (deps.get_store, DynamoJobStore, "jobs_table"),
        (deps.get_token_store, DynamoTokenStore, "tokens_table"),
        (deps.get_slack_store, DynamoSlackStore, "slack_table"),
        (deps.get_devvm_store, DynamoDevVmStore, "devvms_table"),
        (deps.get_metrics_store, DynamoMetricsStore, "metrics_table"),
    ],
)
def test_each_store_is_built_once_per_container_on_its_table(configured, factory, kind, table):
    store = factory()
    assert type(store) is kind
    assert factory() is store
    assert getattr(configured, table) in {m.Meta.table_name for m in store.models.values()}


def test_the_dev_vm_service_uses_the_dev_vm_store(configured):
    assert deps.get_devvm_service().store is deps.get_devvm_store()
