"""`jobplane prices refresh` against recorded API responses: stubbed botocore and a loopback Billing API."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib.errors import ValidationError
from chalicelib.pricing import Catalog, Unknown
from chalicelib.pricing import refresh as refresh_module
from chalicelib.pricing.refresh import refresh
from chalicelib.pricing.tables import DATA_DIR, read_table
from jobplane import cli
from tests.factories import FIXTURES

TODAY = date(2026, 12, 1)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
REGIONS = ("eu-west-1", "us-east-1", "us-west-2")  # the order refresh walks the EC2 table's regions


def _load(name):
    return json.loads((FIXTURES / "pricing" / name).read_text())


def _as_sent(page):
    return {**page, "PriceList": [json.dumps(doc) for doc in page["PriceList"]]}


def _filters(**values):
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in values.items()]


def stubbed_aws(providers=("ec2", "sagemaker")):
    """A pricing client and per-region EC2 clients that answer the recorded pages, and check each request."""
    pricing = boto3.client("pricing", region_name="us-east-1")
    pricing_stub = Stubber(pricing)
    ec2_clients, stubs = {}, [pricing_stub]
    if "ec2" in providers:
        products, spot = _load("aws_ec2_get_products.json"), _load("aws_ec2_spot_price_history.json")
        base = read_table(DATA_DIR / "ec2.json")
        for region in REGIONS:
            filters = _filters(
                regionCode=region,
                operatingSystem="Linux",
                tenancy="Shared",
                preInstalledSw="NA",
                capacitystatus="Used",
                instanceFamily="GPU instance",
            )
            token = None
            for page in products[region]:
                params = {"ServiceCode": "AmazonEC2", "FormatVersion": "aws_v1", "Filters": filters}
                if token:
                    params["NextToken"] = token
                pricing_stub.add_response("get_products", _as_sent(page), params)
                token = page.get("NextToken")
            client = boto3.client("ec2", region_name=region)
            stub = Stubber(client)
            types = sorted({r.sku for r in base.rows if r.region == region})
            for page in spot[region]:
                response = {
                    "SpotPriceHistory": [
                        {**e, "Timestamp": datetime.fromisoformat(e["Timestamp"])} for e in page["SpotPriceHistory"]
                    ]
                }
                params = {
                    "InstanceTypes": types,
                    "ProductDescriptions": ["Linux/UNIX"],
                    "StartTime": NOW,
                    "EndTime": NOW,
                }
                stub.add_response("describe_spot_price_history", response, params)
            stub.activate()
            ec2_clients[region], stubs = client, [*stubs, stub]
    if "sagemaker" in providers:
        for page in _load("aws_sagemaker_get_products.json")["us-east-1"]:
            filters = _filters(regionCode="us-east-1", productFamily="ML Instance", component="Training")
            params = {"ServiceCode": "AmazonSageMaker", "FormatVersion": "aws_v1", "Filters": filters}
            pricing_stub.add_response("get_products", _as_sent(page), params)
    pricing_stub.activate()
    return pricing, ec2_clients, stubs


class FakeBillingCatalog:
    """The Cloud Billing Catalog API on loopback: the recorded pages, by pageToken."""

    def __init__(self):
        pages = _load("gcp_compute_skus.json")
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append((url.path, query))
                index = 0 if "pageToken" not in query else int(query["pageToken"].split("-")[1]) - 1
                body = json.dumps(pages[index]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def billing():
    fake = FakeBillingCatalog()
    yield fake
    fake.close()


@pytest.fixture
def refreshed(tmp_path, billing):
    pricing, ec2_clients, stubs = stubbed_aws()
    reports = refresh(
        tmp_path,
        pricing_client=pricing,
        ec2_client_for=ec2_clients.__getitem__,
        gcp_base_url=billing.url,
        gcp_api_key="test-key",
        today=TODAY,
        now=NOW,
    )
    for stub in stubs:
        stub.assert_no_pending_responses()
    return Catalog(tmp_path), {r.provider: r for r in reports}


def test_refresh_rebuilds_ec2_from_the_price_list_and_spot_history(refreshed):
    catalog, _ = refreshed
    on_demand = catalog.price("ec2", "us-east-1", "g5.xlarge")
    assert on_demand.usd_per_hour == 1.006 and on_demand.read_at == TODAY
    assert "Price List" in on_demand.source
    # us-east-1b's newer 0.44 replaced its older 0.507, and is lower than us-east-1a's 0.4591.
    spot = catalog.price("ec2", "us-east-1", "g5.xlarge", "spot")
    assert spot.usd_per_hour == 0.44 and spot.read_at == TODAY and "DescribeSpotPriceHistory" in spot.source
    assert catalog.price("ec2", "us-east-1", "p5.48xlarge", "spot").usd_per_hour == 14.2012
    assert catalog.price("ec2", "us-west-2", "g5.xlarge").usd_per_hour == 1.006


def test_a_sku_missing_from_the_response_becomes_unknown_not_zero(refreshed, tmp_path):
    catalog, reports = refreshed
    for quote in (
        catalog.price("ec2", "us-east-1", "g6.xlarge"),
        catalog.price("ec2", "eu-west-1", "g5.xlarge"),
        catalog.price("ec2", "us-west-2", "g5.xlarge", "spot"),
    ):
        assert isinstance(quote, Unknown) and "2026-12-01" in quote.reason
    row = next(r for r in read_table(tmp_path / "ec2.json").rows if (r.sku, r.region) == ("g6.xlarge", "us-east-1"))
    assert row.on_demand is None and row.spot is None
    assert "on-demand g6.xlarge in us-east-1: not in the response" in reports["ec2"].unknown


def test_refresh_rebuilds_sagemaker_training_and_skips_what_is_not_an_hour_of_it(refreshed):
    catalog, reports = refreshed
    quote = catalog.price("sagemaker", "us-east-1", "ml.g5.xlarge")
    assert quote.usd_per_hour == 1.408 and quote.read_at == TODAY
    assert catalog.price("sagemaker", "us-east-1", "ml.m5.large").usd_per_hour == 0.115
    # The p4d line in the response is a training plan's upfront fee (unit Quantity), not an hourly price.
    assert not catalog.price("sagemaker", "us-east-1", "ml.p4d.24xlarge")
    assert reports["sagemaker"].priced == 2


def test_refresh_rebuilds_gce_machines_from_cores_and_ram_and_gpus_apart(refreshed, billing):
    catalog, reports = refreshed
    n1 = catalog.price("gce", "us-central1", "n1-standard-8")
    assert n1.usd_per_hour == pytest.approx(8 * 0.031611 + 30 * 0.004237) and n1.read_at == TODAY
    spot = catalog.price("gce", "us-central1", "n1-standard-8", "spot")
    assert spot.usd_per_hour == pytest.approx(8 * 0.00698 + 30 * 0.000936)
    vm = catalog.vm_price("gce", "us-central1", "n1-standard-8", accelerator="nvidia-tesla-t4", accelerator_count=2)
    assert vm.usd_per_hour == pytest.approx(n1.usd_per_hour + 2 * 0.35)
    a2 = catalog.vm_price("gce", "us-central1", "a2-highgpu-1g")
    # The DWS A100 SKU (1.50) is another purchase kind and must not stand in for on-demand.
    assert a2.usd_per_hour == pytest.approx(12 * 0.031611 + 85 * 0.004237 + 2.933908)
    assert catalog.price("gce", "europe-west4", "nvidia-tesla-t4").usd_per_hour == 0.3675
    assert catalog.price("gce", "us-central1", "nvidia-h100-80gb").usd_per_hour == 9.79655
    assert not catalog.vm_price("gce", "us-central1", "a3-highgpu-1g")  # no A3 core/RAM SKUs in the response
    assert not catalog.price("gce", "europe-west4", "n1-standard-8")
    assert not catalog.price("gce", "us-central1", "nvidia-l4")
    assert any("'nvidia l4 gpu'" in u and "ambiguous" in u for u in reports["gce"].unknown)
    assert [q for _, q in billing.requests] == [
        {"currencyCode": "USD", "pageSize": "5000", "key": "test-key"},
        {"currencyCode": "USD", "pageSize": "5000", "key": "test-key", "pageToken": "page-2"},
    ]
    assert billing.requests[0][0] == "/v1/services/6F81-5844-456A/skus"


def test_every_rebuilt_table_has_todays_date_and_vertex_is_carried_over(refreshed, tmp_path):
    for provider in ("ec2", "sagemaker", "gce"):
        assert read_table(tmp_path / f"{provider}.json").read_at == TODAY
    assert (tmp_path / "vertex.json").read_text() == (DATA_DIR / "vertex.json").read_text()


def test_refresh_of_one_provider_copies_the_others_unchanged(tmp_path):
    pricing, _, _ = stubbed_aws(providers=("sagemaker",))
    reports = refresh(tmp_path, providers=["sagemaker"], pricing_client=pricing, today=TODAY, now=NOW)
    assert [r.provider for r in reports] == ["sagemaker"]
    assert (tmp_path / "ec2.json").read_text() == (DATA_DIR / "ec2.json").read_text()
    assert read_table(tmp_path / "sagemaker.json").read_at == TODAY


def test_refresh_refuses_a_provider_it_cannot_rebuild(tmp_path):
    with pytest.raises(ValidationError) as err:
        refresh(tmp_path, providers=["vertex"])
    assert err.value.details[0]["field"] == "providers"


def test_the_cli_command_writes_the_catalog_where_told(tmp_path, billing, monkeypatch, capsys):
    pricing, ec2_clients, _ = stubbed_aws()
    clients = {("pricing", "us-east-1"): pricing, **{("ec2", r): c for r, c in ec2_clients.items()}}
    monkeypatch.setattr(refresh_module, "aws_client", lambda service, region: clients[(service, region)])
    # The stubs expect spot history "as of now": pin the clock refresh reads.
    monkeypatch.setattr(refresh_module, "datetime", type("Clock", (), {"now": staticmethod(lambda tz=None: NOW)}))
    argv = ["prices", "refresh", "--output", str(tmp_path), "--gcp-endpoint", billing.url, "--gcp-api-key", "k"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "ec2:" in out and "unknown: on-demand g6.xlarge in us-east-1: not in the response" in out
    assert Catalog(tmp_path).price("sagemaker", "us-east-1", "ml.g5.xlarge").read_at == NOW.date()


def test_the_cli_command_names_a_bad_option(capsys, monkeypatch):
    monkeypatch.delenv("JOBPLANE_GCP_API_KEY", raising=False)
    assert cli.main(["prices", "refresh", "--only", "ec2,azure"]) == 2
    assert "--only" in capsys.readouterr().err
    assert cli.main(["prices", "refresh", "--only", "gce"]) == 2
    assert "--gcp-api-key" in capsys.readouterr().err
