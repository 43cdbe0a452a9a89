"""Every store's tables are created per store, described in the deployment's Terraform and granted by its policy."""

from __future__ import annotations

import importlib.util
import json

import boto3
import pytest

from chalicelib.store.tables import dynamo_stores
from tests.factories import ROOT, make_settings


def _resources_module():
    spec = importlib.util.spec_from_file_location("jobplane_deploy_resources", ROOT / "deploy" / "aws" / "resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tables(stores) -> set[str]:
    return {model.Meta.table_name for store in stores.values() for model in store.models.values()}


def test_the_stores_own_every_table_once_and_no_two_own_the_same(tmp_path):
    settings = make_settings(tmp_path)
    stores = dynamo_stores(settings)
    owned = [model.Meta.table_name for store in stores.values() for model in store.models.values()]
    assert len(owned) == len(set(owned))
    assert set(owned) == {
        settings.jobs_table,
        settings.events_table,
        settings.idempotency_table,
        settings.capacity_table,
        settings.tokens_table,
        settings.slack_table,
        settings.devvms_table,
        settings.metrics_table,
        settings.endpoints_table,
        settings.endpoint_events_table,
        settings.budgets_table,
    }


def test_each_store_creates_its_own_tables_and_deps_creates_them_all(tmp_path, moto_endpoint):
    from chalicelib import deps

    settings = make_settings(tmp_path, moto_endpoint)
    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=moto_endpoint)

    stores = dynamo_stores(settings)

    def existing() -> set[str]:
        names = client.get_paginator("list_tables").paginate().build_full_result()["TableNames"]
        return set(names) & _tables(stores)

    stores["tokens"].create_tables()
    assert existing() == {settings.tokens_table}
    stores["tokens"].create_tables()  # again: nothing missing, nothing done
    deps.reset()
    deps.override(settings=settings)
    try:
        deps.create_tables()
    finally:
        deps.reset()
    assert existing() == _tables(stores)


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_terraform_describes_every_table_with_its_stores_ttl(stage):
    resources = _resources_module()
    settings, _ = resources.stage_settings(stage)
    stores = dynamo_stores(settings)
    tables = resources.extra_resources(stage)["resource"]["aws_dynamodb_table"]
    assert {t["name"] for t in tables.values()} == _tables(stores)
    ttl = {t["name"]: t["ttl"]["attribute_name"] for t in tables.values() if "ttl" in t}
    assert ttl == {
        store.models[name].Meta.table_name: attribute
        for store in stores.values()
        for name, attribute in store.TTL_ATTRIBUTES.items()
    }
    assert ttl[settings.idempotency_table] == "expires_at"
    assert ttl[settings.slack_table] == "expires_at"  # notification markers expire; user mappings have none


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_checked_in_policy_grants_every_table_and_its_indexes(stage):
    from chalicelib.backends.policy import stage_settings

    settings = stage_settings(stage, str(ROOT / ".chalice" / "config.json"))
    policy = json.loads((ROOT / ".chalice" / f"policy-{stage}.json").read_text())
    [statement] = [s for s in policy["Statement"] if s.get("Sid") == "Tables"]
    for table in _tables(dynamo_stores(settings)):
        assert f"arn:aws:dynamodb:*:*:table/{table}" in statement["Resource"]
        assert f"arn:aws:dynamodb:*:*:table/{table}/index/*" in statement["Resource"]
