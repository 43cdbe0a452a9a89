"""bench/cost.py: an idle tick counted against moto, the line items it used to leave out, and the targets."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.factories import ROOT

BENCH = ROOT / "bench" / "cost.py"


def _bench():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_cost", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured():
    bench = _bench()
    bench.JOBS = 20  # the counts scale to 1,000 jobs; the idle tick does not depend on them
    return bench, bench.measure()


@pytest.mark.slow
def test_an_idle_month_is_under_ten_cents_all_in_and_a_thousandth_of_a_vm(measured):
    bench, result = measured
    # An idle tick: the sparse-index queries only (active, queued, endpoints, the outbox), no budget read.
    assert set(result["reconcile_ops"]) == {"Query"} and sum(result["reconcile_ops"].values()) <= 8
    cost = bench.cost_per_1000(result)
    idle = cost["idle"]
    assert set(idle["lines"]) == {"Lambda (reconcile)", "DynamoDB reads (reconcile)", "CloudWatch Logs", "secrets"}
    assert all(v > 0 for v in idle["lines"].values())
    assert idle["total"] <= 0.10
    assert bench.CONTROLLER_VM_PER_HOUR * 24 * 30 / idle["total"] >= 1000
    # Secrets Manager alone would break the target: why the secrets are SSM parameters.
    assert cost["idle_secrets_manager"]["total"] - idle["total"] == pytest.approx(0.80, abs=0.01)
    assert cost["idle_secrets_manager"]["total"] > 0.10
    # A pattern of sources alone pays for every other workload's event; the narrowed one for none.
    assert cost["idle_broad_pattern"]["total"] > idle["total"] + 0.15
    assert cost["lines"]["CloudWatch Logs"] > 0 and cost["counts"]["state events matched"] == 6000


def test_the_line_items_follow_their_prices():
    bench = _bench()
    assert bench.secrets_month(0, secrets_manager=True) == pytest.approx(2 * 0.40)
    assert bench.secrets_month(10_000) == pytest.approx(0.03)  # KMS decrypts only: standard parameters are free
    assert bench.logs_cost(1_000_000) == pytest.approx(320e6 / 1e9 * 0.50)
    assert bench.lambda_cost(1_000_000, 0.1) == pytest.approx(0.20 + 0.5 * 0.1 * 1e6 * 0.0000166667)
