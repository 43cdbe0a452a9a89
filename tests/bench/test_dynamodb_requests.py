"""bench/dynamodb_requests.py counts every write of a lifecycle (notify's markers too) and a filtered page's reads."""

from __future__ import annotations

import importlib.util
import sys

from tests.factories import ROOT

BENCH = ROOT / "bench" / "dynamodb_requests.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_dynamodb_requests", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_lifecycle_count_includes_notifys_outbox_writes():
    result = _bench().measure()
    notify = next(p for label, p in result["phases"].items() if label.startswith("notify"))
    # Per message sent (RUNNING, SUCCEEDED): its outbox record, the claim before the send, the settle after.
    ops = notify["ops"]
    assert ops.get("PutItem", 0) >= 2
    assert notify["writes"] == ops.get("PutItem", 0) + ops.get("UpdateItem", 0) == 3 * ops["PutItem"]
    submit_and_events = [
        p for label, p in result["phases"].items() if not label.startswith(("notify", "duplicate", "late"))
    ]
    assert result["lifecycle"]["writes"] == sum(p["writes"] for p in submit_and_events) + notify["writes"]


def test_the_listing_bench_reads_only_the_page():
    rows = _bench().measure_listing(200, failed=10, limit=20)
    for row in rows.values():
        assert row["returned"] == 10 and not row["next_token"]
        assert row["queries"] <= 2 and row["items_read"] <= 2 * row["returned"]
