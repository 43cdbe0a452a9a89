"""`jobplane prices refresh`: rebuild the catalog from the AWS Price List and Cloud Billing Catalog APIs."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from chalicelib.errors import ValidationError
from chalicelib.pricing.tables import DATA_DIR, Row, Table, read_table, write_table

REFRESHABLE = ("ec2", "sagemaker", "gce")
# The Price List API is served from us-east-1 whatever region the prices are for.
PRICING_REGION = "us-east-1"
GCP_BILLING_URL = "https://cloudbilling.googleapis.com/v1"
GCE_SERVICE_ID = "6F81-5844-456A"  # Compute Engine in the Cloud Billing Catalog

# SKU description stems in the Cloud Billing Catalog, per GCE accelerator and machine family.
GPU_SKU_NAMES = {
    "nvidia-tesla-t4": "nvidia tesla t4 gpu",
    "nvidia-tesla-v100": "nvidia tesla v100 gpu",
    "nvidia-l4": "nvidia l4 gpu",
    "nvidia-tesla-a100": "nvidia tesla a100 gpu",
    "nvidia-a100-80gb": "nvidia tesla a100 80gb gpu",
    "nvidia-h100-80gb": "nvidia h100 80gb gpu",
    "nvidia-h100-mega-80gb": "nvidia h100 80gb mega gpu",
    "nvidia-h200-141gb": "h200 141gb gpu",
}
# Longest prefix first: a3-highgpu has its own SKUs; a3-megagpu and a3-ultragpu are not mapped, so
# a refresh leaves them unknown rather than pricing them with another family's cores.
MACHINE_SKU_NAMES = (
    ("a3-highgpu-", "a3 instance"),
    ("a2-", "a2 instance"),
    ("g2-", "g2 instance"),
    ("n1-", "n1 predefined instance"),
)
_SPOT_PREFIXES = ("spot preemptible ", "preemptible ")
_SPOT_SUFFIX = " attached to spot preemptible vms"


@dataclass
class Report:
    """What one provider's refresh found: how many prices it set, and each one it could not."""

    provider: str
    path: Path | None = None
    priced: int = 0
    unknown: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.provider}: {self.priced} prices, {len(self.unknown)} unknown -> {self.path}"


# --- AWS Price List -----------------------------------------------------------------------
def _products(client: Any, service_code: str, filters: dict[str, str]) -> Iterator[dict[str, Any]]:
    request: dict[str, Any] = {
        "ServiceCode": service_code,
        "FormatVersion": "aws_v1",
        "Filters": [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
    }
    while True:
        page = client.get_products(**request)
        # Each PriceList item is a JSON document sent as a string.
        yield from (json.loads(item) for item in page.get("PriceList", []))
        if not page.get("NextToken"):
            return
        request["NextToken"] = page["NextToken"]


def _hourly_on_demand(doc: dict[str, Any]) -> list[float]:
    rates = []
    for term in doc.get("terms", {}).get("OnDemand", {}).values():
        for dim in term.get("priceDimensions", {}).values():
            usd = dim.get("pricePerUnit", {}).get("USD")
            # An hourly rate only: a reservation's upfront fee (unit Quantity) is not what an hour costs,
            # and a 0 is a free-tier line, not a price.
            if dim.get("unit") == "Hrs" and usd is not None and float(usd) > 0:
                rates.append(float(usd))
    return rates


def _collect(found: dict[str, set[float]], sku: str, rates: Iterable[float]) -> None:
    found[sku].update(rates)


def _single(found: dict[str, set[float]], sku: str, where: str, report: Report) -> float | None:
    values = found.get(sku, set())
    if len(values) == 1:
        return next(iter(values))
    report.unknown.append(f"{where}: " + ("not in the response" if not values else f"ambiguous {sorted(values)}"))
    return None


def ec2_on_demand(client: Any, region: str) -> dict[str, set[float]]:
    found: dict[str, set[float]] = defaultdict(set)
    filters = {
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "instanceFamily": "GPU instance",
    }
    for doc in _products(client, "AmazonEC2", filters):
        attrs = doc.get("product", {}).get("attributes", {})
        # The filters already say this; checked again so a looser answer cannot slip a Windows or
        # reserved-capacity line in as the Linux on-demand price.
        if all(attrs.get(k) == v for k, v in filters.items()) and "BoxUsage" in attrs.get("usagetype", ""):
            _collect(found, attrs.get("instanceType", ""), _hourly_on_demand(doc))
    return found


def sagemaker_training(client: Any, region: str) -> dict[str, set[float]]:
    found: dict[str, set[float]] = defaultdict(set)
    filters = {"regionCode": region, "productFamily": "ML Instance", "component": "Training"}
    for doc in _products(client, "AmazonSageMaker", filters):
        attrs = doc.get("product", {}).get("attributes", {})
        usage = attrs.get("usagetype", "")
        # USE1-Train:ml.g5.xlarge is training instance time; Training-plan fees and spot lines differ.
        if attrs.get("component") == "Training" and "-Train:" in usage:
            _collect(found, attrs.get("instanceName") or usage.split(":", 1)[1], _hourly_on_demand(doc))
    return found


def ec2_spot(client: Any, instance_types: list[str], now: datetime) -> dict[str, float]:
    """The lowest current Linux/UNIX spot price among the region's zones, per instance type."""
    latest: dict[tuple[str, str], tuple[datetime, float]] = {}
    # Start and end both now: the answer is each zone's price in effect now.
    request: dict[str, Any] = {
        "InstanceTypes": instance_types,
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": now,
        "EndTime": now,
    }
    while True:
        page = client.describe_spot_price_history(**request)
        for entry in page.get("SpotPriceHistory", []):
            key = (entry["InstanceType"], entry["AvailabilityZone"])
            if key not in latest or entry["Timestamp"] > latest[key][0]:
                latest[key] = (entry["Timestamp"], float(entry["SpotPrice"]))
        if not page.get("NextToken"):
            break
        request["NextToken"] = page["NextToken"]
    lowest: dict[str, float] = {}
    for (instance_type, _zone), (_at, usd) in latest.items():
        lowest[instance_type] = min(usd, lowest.get(instance_type, usd))
    return lowest


def refresh_ec2(base: Table, pricing_client: Any, ec2_client_for: Callable[[str], Any], today: date, now: datetime):
    report = Report("ec2")
    rows = []
    for region in sorted({r.region for r in base.rows}):
        on_demand = ec2_on_demand(pricing_client, region)
        types = sorted({r.sku for r in base.rows if r.region == region})
        spot = ec2_spot(ec2_client_for(region), types, now)
        for row in (r for r in base.rows if r.region == region):
            usd = _single(on_demand, row.sku, f"on-demand {row.sku} in {region}", report)
            if row.sku not in spot:
                report.unknown.append(f"spot {row.sku} in {region}: no spot price history")
            rows.append(Row(row.sku, region, usd, spot.get(row.sku)))
    report.priced = sum((r.on_demand is not None) + (r.spot is not None) for r in rows)
    sources = {
        "on_demand": "AWS Price List API (GetProducts AmazonEC2: Linux, shared tenancy, no pre-installed software)",
        "spot": "EC2 DescribeSpotPriceHistory: lowest Linux/UNIX price among the region's zones at "
        f"{now.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
    }
    notes = "Linux list prices; spot prices change by zone and by hour."
    return Table("ec2", today, sources, notes, tuple(rows)), report


def refresh_sagemaker(base: Table, pricing_client: Any, today: date):
    report = Report("sagemaker")
    rows = []
    for region in sorted({r.region for r in base.rows}):
        found = sagemaker_training(pricing_client, region)
        for row in (r for r in base.rows if r.region == region):
            rows.append(Row(row.sku, region, _single(found, row.sku, f"training {row.sku} in {region}", report)))
    report.priced = sum(r.on_demand is not None for r in rows)
    sources = {"on_demand": "AWS Price List API (GetProducts AmazonSageMaker: ML Instance, component Training)"}
    notes = (
        "Training instance types. Managed spot training bills the on-demand rate for BillableTimeInSeconds, "
        "so there is no spot column."
    )
    return Table("sagemaker", today, sources, notes, tuple(rows)), report


# --- Google Cloud Billing Catalog ---------------------------------------------------------
def gcp_skus(fetch: Callable[[str], dict[str, Any]], base_url: str, api_key: str | None) -> Iterator[dict[str, Any]]:
    token = ""
    while True:
        query = {"currencyCode": "USD", "pageSize": "5000"}
        if api_key:
            query["key"] = api_key
        if token:
            query["pageToken"] = token
        page = fetch(f"{base_url}/services/{GCE_SERVICE_ID}/skus?{urllib.parse.urlencode(query)}")
        yield from page.get("skus", [])
        token = page.get("nextPageToken") or ""
        if not token:
            return


def fetch_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - https or a test's loopback URL
        return json.loads(resp.read())


def _unit_price(sku: dict[str, Any]) -> tuple[float, str] | None:
    infos = sku.get("pricingInfo") or []
    if not infos:
        return None
    # pricingInfo is a timeline, oldest first; the first tier is the rate from the first unit.
    expression = infos[-1].get("pricingExpression", {})
    tiers = sorted(expression.get("tieredRates", []), key=lambda t: float(t.get("startUsageAmount", 0)))
    if not tiers or tiers[0].get("unitPrice", {}).get("currencyCode", "USD") != "USD":
        return None
    money = tiers[0]["unitPrice"]
    return int(money.get("units") or 0) + int(money.get("nanos") or 0) / 1e9, expression.get("usageUnit", "")


def _sku_key(sku: dict[str, Any]) -> tuple[str, str] | None:
    """(description stem, on_demand|spot), or None for commitments, DWS and other purchase kinds."""
    usage = sku.get("category", {}).get("usageType")
    if usage not in ("OnDemand", "Preemptible"):
        return None
    stem = sku.get("description", "").lower().split(" running in ")[0]
    spot = usage == "Preemptible"
    for prefix in _SPOT_PREFIXES:
        if stem.startswith(prefix):
            stem, spot = stem[len(prefix) :], True
    if stem.endswith(_SPOT_SUFFIX):
        stem, spot = stem[: -len(_SPOT_SUFFIX)], True
    return stem, "spot" if spot else "on_demand"


def gce_components(skus: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str, str], set[float]]:
    """(stem, purchase, region, unit) -> the prices the catalog gives for it."""
    found: dict[tuple[str, str, str, str], set[float]] = defaultdict(set)
    for sku in skus:
        key, price = _sku_key(sku), _unit_price(sku)
        if key is None or price is None:
            continue
        for region in sku.get("serviceRegions", []):
            found[(*key, region, price[1])].add(price[0])
    return found


def _component(found, stem: str, purchase: str, region: str, unit: str, report: Report) -> float | None:
    values = found.get((stem, purchase, region, unit), set())
    if len(values) == 1:
        return next(iter(values))
    problem = "not in the response" if not values else f"ambiguous {sorted(values)}"
    report.unknown.append(f"{purchase} '{stem}' ({unit}) in {region}: {problem}")
    return None


def _machine_stem(machine_type: str) -> str | None:
    return next((stem for prefix, stem in MACHINE_SKU_NAMES if machine_type.startswith(prefix)), None)


def refresh_gce(base: Table, skus: Iterable[dict[str, Any]], today: date):
    report = Report("gce")
    found = gce_components(skus)
    rows = []
    for row in (r for r in base.rows if r.kind == "machine"):
        stem = _machine_stem(row.sku)
        prices = {}
        for purchase in ("on_demand", "spot"):
            if stem is None:
                report.unknown.append(f"{purchase} {row.sku} in {row.region}: no Billing Catalog SKU family known")
                prices[purchase] = None
                continue
            core = _component(found, f"{stem} core", purchase, row.region, "h", report)
            ram = _component(found, f"{stem} ram", purchase, row.region, "GiBy.h", report)
            both = core is not None and ram is not None
            prices[purchase] = round(row.vcpus * core + row.memory_gib * ram, 6) if both else None
        rows.append(replace(row, on_demand=prices["on_demand"], spot=prices["spot"], read_at=None, source=None))
    # The catalog prices one GPU; a row for N of them would only repeat N times that.
    for accelerator, region in sorted({(r.sku, r.region) for r in base.rows if r.kind == "accelerator"}):
        prices = {}
        for purchase in ("on_demand", "spot"):
            stem = GPU_SKU_NAMES.get(accelerator)
            if stem is None:
                report.unknown.append(f"{purchase} {accelerator} in {region}: no Billing Catalog SKU name known")
                prices[purchase] = None
            else:
                prices[purchase] = _component(found, stem, purchase, region, "h", report)
        rows.append(Row(accelerator, region, prices["on_demand"], prices["spot"], kind="accelerator", count=1))
    report.priced = sum((r.on_demand is not None) + (r.spot is not None) for r in rows)
    sources = {
        "on_demand": f"Cloud Billing Catalog API (services/{GCE_SERVICE_ID}/skus, usageType OnDemand); "
        "machines are vCPUs x core + GiB x RAM",
        "spot": f"Cloud Billing Catalog API (services/{GCE_SERVICE_ID}/skus, Spot Preemptible SKUs)",
    }
    notes = (
        "machine rows for a2/a3/g2 exclude their bundled GPUs (accelerator + count say which); a VM is machine + "
        "accelerators. Accelerator rows are the price of one GPU."
    )
    return Table("gce", today, sources, notes, tuple(rows)), report


# --- the command --------------------------------------------------------------------------
def aws_client(service: str, region: str) -> Any:
    import boto3

    return boto3.client(service, region_name=region)


def refresh(
    output: Path,
    *,
    providers: Iterable[str] = REFRESHABLE,
    pricing_client: Any = None,
    ec2_client_for: Callable[[str], Any] | None = None,
    gcp_fetch: Callable[[str], dict[str, Any]] = fetch_json,
    gcp_base_url: str = GCP_BILLING_URL,
    gcp_api_key: str | None = None,
    base_dir: Path = DATA_DIR,
    today: date | None = None,
    now: datetime | None = None,
) -> list[Report]:
    """Rebuild the tables of `providers` for the SKUs and regions `base_dir` lists; copy the rest.

    A SKU the APIs do not price (absent, or two different prices) is written with a null price:
    unknown to every lookup, never 0.
    """
    now = now or datetime.now(UTC)
    today = today or now.date()
    providers = tuple(providers)
    unknown = [p for p in providers if p not in REFRESHABLE]
    if unknown or not providers:
        raise ValidationError(
            f"providers must be some of {', '.join(REFRESHABLE)}, got {list(providers)}",
            [{"field": "providers", "message": f"each one of {', '.join(REFRESHABLE)}"}],
        )
    reports = []
    for provider in ("ec2", "sagemaker", "gce", "vertex"):
        base = read_table(base_dir / f"{provider}.json")
        if provider not in providers:
            if Path(output).resolve() != Path(base_dir).resolve():
                write_table(base, Path(output))
            continue
        if provider == "ec2":
            table, report = refresh_ec2(base, pricing_client, ec2_client_for, today, now)
        elif provider == "sagemaker":
            table, report = refresh_sagemaker(base, pricing_client, today)
        else:
            table, report = refresh_gce(base, gcp_skus(gcp_fetch, gcp_base_url, gcp_api_key), today)
        report.path = write_table(table, Path(output))
        reports.append(report)
    return reports
