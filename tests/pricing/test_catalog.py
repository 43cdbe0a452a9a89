"""The packaged price catalog: lookups, explicit unknowns, VM sums, dates in every figure."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path

import pytest

from chalicelib import pricing
from chalicelib.config import Settings
from chalicelib.errors import ConfigError, ValidationError
from chalicelib.pricing import Catalog, Cost, Price, Unknown
from chalicelib.pricing.tables import DATA_DIR, Row, Table, read_table, write_table
from tests.factories import ROOT

SNAPSHOT = Path("/work/shared/data/prices")


def test_can_price_an_ec2_instance_on_demand_and_spot_with_its_date():
    on_demand = pricing.price("ec2", "us-east-1", "g5.xlarge")
    spot = pricing.price("ec2", "us-east-1", "g5.xlarge", "spot")
    assert (on_demand.usd_per_hour, spot.usd_per_hour) == (1.006, 0.4591)
    assert on_demand.read_at == date(2026, 1, 21)
    assert "skypilot-catalog" in on_demand.source and "zones" in spot.source
    assert pricing.price("ec2", "eu-west-1", "g5.xlarge").usd_per_hour == 1.123


def test_a_missing_spot_price_is_an_explicit_unknown_never_zero():
    quote = pricing.price("ec2", "us-east-1", "p5.4xlarge", "spot")
    assert isinstance(quote, Unknown) and not quote
    assert "no spot price" in quote.reason and "p5.4xlarge" in quote.reason
    assert quote.usd_per_hour is None
    cost = quote.cost(3)
    assert cost.usd is None and not cost.known
    assert cost.format().startswith("unknown (no spot price")


def test_an_instance_type_or_region_the_catalog_lacks_is_unknown():
    assert not pricing.price("ec2", "eu-west-1", "p5.48xlarge")  # the snapshot has no eu-west-1 p5
    quote = pricing.price("ec2", "us-east-1", "x9.huge")
    assert isinstance(quote, Unknown) and "x9.huge" in quote.reason and "2026-01-21" in quote.reason


def test_sagemaker_training_is_its_own_price_with_each_rows_date():
    quote = pricing.price("sagemaker", "us-east-1", "ml.g5.xlarge")
    # 1.006 is the EC2 price of g5.xlarge; SageMaker training bills 1.408 (SOURCES.md §3).
    assert quote.usd_per_hour == 1.408
    assert quote.read_at == date(2026, 9, 24)
    assert pricing.price("sagemaker", "us-east-1", "ml.g4dn.2xlarge").read_at == date(2021, 11, 29)


def test_sagemaker_managed_spot_answers_the_on_demand_rate_and_says_why():
    spot = pricing.price("sagemaker", "us-east-1", "ml.g5.xlarge", "spot")
    assert spot.usd_per_hour == 1.408
    assert "BillableTimeInSeconds" in spot.source


def test_a_suspect_row_is_unknown_with_the_reason_not_a_wrong_figure():
    quote = pricing.price("sagemaker", "us-east-1", "ml.g5.16xlarge")
    assert not quote and "suspect" in quote.reason
    assert not pricing.price("gce", "us-central1", "nvidia-h100-80gb")


def test_a_gce_vm_is_its_machine_plus_its_bundled_accelerators():
    quote = pricing.vm_price("gce", "us-central1", "a2-highgpu-1g")
    assert quote.usd_per_hour == pytest.approx(0.73948 + 2.93391)
    assert quote.read_at == date(2025, 11, 27)
    machine_only = pricing.price("gce", "us-central1", "a2-highgpu-1g")
    assert machine_only.usd_per_hour == 0.73948


def test_an_n1_vm_takes_the_accelerator_row_for_its_count_or_n_times_one():
    two = pricing.vm_price("gce", "us-central1", "n1-standard-8", accelerator="nvidia-tesla-t4", accelerator_count=2)
    assert two.usd_per_hour == pytest.approx(0.38 + 0.7)
    three = pricing.vm_price("gce", "us-central1", "n1-standard-8", "spot", "nvidia-tesla-t4", 3)
    assert three.usd_per_hour == pytest.approx(0.11605 + 3 * 0.175)
    assert pricing.price("gce", "us-central1", "nvidia-tesla-t4").usd_per_hour == 0.35


def test_a_vm_with_an_unknown_part_is_unknown():
    quote = pricing.vm_price("gce", "us-central1", "a3-highgpu-8g")  # its H100 row is suspect
    assert not quote and "nvidia-h100-80gb" in quote.reason
    assert not pricing.vm_price("gce", "us-central1", "n1-standard-8", accelerator="nvidia-tesla-p4")


def test_bad_vm_arguments_name_the_field():
    with pytest.raises(ValidationError) as err:
        pricing.vm_price("gce", "us-central1", "a2-highgpu-1g", accelerator="nvidia-tesla-t4")
    assert err.value.details[0]["field"] == "accelerator"
    with pytest.raises(ValidationError) as err:
        pricing.vm_price("gce", "us-central1", "n1-standard-8", accelerator="nvidia-tesla-t4", accelerator_count=0)
    assert err.value.details[0]["field"] == "accelerator_count"
    with pytest.raises(ValidationError) as err:
        pricing.vm_price("gce", "us-central1", "n1-standard-8", accelerator_count=2)
    assert err.value.details[0]["field"] == "accelerator"


def test_vertex_is_unknown_because_its_premium_is_not_in_the_snapshot():
    for quote in (
        pricing.price("vertex", "us-central1", "n1-standard-4"),
        pricing.vm_price("vertex", "us-central1", "a2-highgpu-1g"),
    ):
        assert isinstance(quote, Unknown) and "premium" in quote.reason


def test_a_vertex_table_with_rows_is_used(tmp_path):
    row = Row("g2-standard-4", "us-central1", 0.9, kind="machine")
    write_table(Table("vertex", date(2027, 1, 2), {"on_demand": "a future table"}, "", (row,)), tmp_path)
    assert Catalog(tmp_path).price("vertex", "us-central1", "g2-standard-4").usd_per_hour == 0.9


def test_the_local_price_is_the_setting():
    assert "JOBPLANE_LOCAL_PRICE_PER_HOUR" in pricing.price("local", "here", "any").reason
    settings = Settings.from_env({"JOBPLANE_LOCAL_PRICE_PER_HOUR": "2.5"})
    assert settings.local_price_per_hour == 2.5
    quote = pricing.for_settings(settings).price("local", "here", "workstation", "spot")
    assert quote.usd_per_hour == 2.5 and quote.read_at == date.today()
    assert pricing.for_settings(Settings.from_env({})).price("local", "", "").usd_per_hour == 0


def test_a_bad_local_price_setting_names_the_variable():
    with pytest.raises(ConfigError, match="JOBPLANE_LOCAL_PRICE_PER_HOUR"):
        Settings.from_env({"JOBPLANE_LOCAL_PRICE_PER_HOUR": "-1"})


@pytest.mark.parametrize(
    ("field", "args"), [("provider", ("azure", "r", "s")), ("purchase", ("ec2", "r", "s", "reserved"))]
)
def test_a_bad_provider_or_purchase_names_the_field(field, args):
    with pytest.raises(ValidationError) as err:
        pricing.price(*args)
    assert err.value.details[0]["field"] == field


def test_every_figure_shows_its_price_date():
    assert Cost(1.234, date(2026, 1, 15)).format() == "$1.23 (prices of 2026-01-15)"
    assert str(Cost(1234.5, date(2026, 1, 15))) == "$1,234.50 (prices of 2026-01-15)"
    assert Price(1.408, date(2026, 9, 24), "x").format() == "$1.408/h (prices of 2026-09-24)"
    assert Price(0.5, date(2026, 9, 24), "x").format() == "$0.50/h (prices of 2026-09-24)"
    assert Price(2, date(2026, 9, 24), "x").cost(1.5).format() == "$3.00 (prices of 2026-09-24)"


def test_costs_add_up_with_the_oldest_date_and_unknown_wins():
    older, newer = Cost(1.0, date(2025, 1, 1)), Cost(2.5, date(2026, 1, 1))
    assert older + newer == Cost(3.5, date(2025, 1, 1))
    unknown = Unknown("no price for x").cost(1)
    total = newer + unknown
    assert not total.known and "no price for x" in total.reason
    with pytest.raises(ValidationError):
        Price(1, date(2026, 1, 1), "x").cost(-1)


def test_prices_add_their_sources_and_dates():
    a, b = Price(1, date(2026, 1, 1), "a"), Price(2, date(2025, 6, 1), "b")
    assert a + b == Price(3, date(2025, 6, 1), "a; b")
    assert not (a + Unknown("gpu"))


def test_tables_load_lazily_once_per_provider(tmp_path):
    write_table(
        Table("ec2", date(2026, 2, 3), {"on_demand": "test"}, "", (Row("g5.xlarge", "us-east-1", 1.0),)), tmp_path
    )
    catalog = Catalog(tmp_path)
    assert catalog.price("ec2", "us-east-1", "g5.xlarge").usd_per_hour == 1.0
    (tmp_path / "ec2.json").write_text("not json")  # a second lookup must not read the file again
    assert catalog.price("ec2", "us-east-1", "G5.XLARGE ").usd_per_hour == 1.0


def test_importing_the_catalog_reads_no_table():
    code = "import chalicelib.pricing as p, sys; sys.exit(len(p._tables))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_a_table_survives_write_and_read(tmp_path):
    table = read_table(DATA_DIR / "gce.json")
    assert read_table(write_table(table, tmp_path)) == table


def test_the_package_ships_the_data_files():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert any("chalicelib.pricing".startswith(p.rstrip("*")) for p in setuptools["packages"]["find"]["include"])
    patterns = setuptools["package-data"]["chalicelib.pricing"]
    assert {p.name for p in DATA_DIR.iterdir()} == {
        p.name for pattern in patterns for p in DATA_DIR.parent.glob(pattern)
    }


@pytest.mark.skipif(not SNAPSHOT.is_dir(), reason="the shared price snapshot is not on this machine")
def test_the_packaged_catalog_is_what_the_importer_makes_of_the_snapshot(tmp_path):
    script = ROOT / "deploy" / "import_price_snapshot.py"
    subprocess.run(
        [sys.executable, str(script), str(SNAPSHOT), "--output", str(tmp_path)], check=True, capture_output=True
    )
    for provider in ("ec2", "gce", "sagemaker", "vertex"):
        assert (tmp_path / f"{provider}.json").read_text() == (DATA_DIR / f"{provider}.json").read_text(), provider
