"""Endpoint backends are descriptors in ENDPOINT_REGISTRY: spec validation, auto, enabling, IAM and prices
read them, so a new endpoint backend is one module and one registry line."""

from __future__ import annotations

import json
import re

import pytest

from chalicelib.auth import Principal
from chalicelib.endpoints import backends as registry
from chalicelib.endpoints.model import EndpointStatus
from chalicelib.endpoints.service import EndpointService, hourly_price
from chalicelib.endpoints.spec import parse_endpoint_spec
from chalicelib.errors import ValidationError
from chalicelib.store.endpoints import InMemoryEndpointStore
from chalicelib.store.memory import InMemoryJobStore
from tests.factories import ROOT, endpoint_body, make_settings

ALICE = Principal("alice")


def test_every_registered_endpoint_backend_declares_its_descriptor():
    for name in registry.names():
        found = registry.descriptor(name)
        cls = registry.backend_class(name)
        assert found.name == name == cls.name and cls.descriptor is found
        assert (found.price_table is None) == (found.unpriced_reason is not None), name


def test_no_endpoint_backend_name_is_a_literal_in_the_spec_or_the_service():
    names = sorted(registry.names(), key=len, reverse=True)
    literal = re.compile("[\"'](" + "|".join(re.escape(n) for n in names) + ")[\"']")
    for rel in ("chalicelib/endpoints/spec.py", "chalicelib/endpoints/service.py"):
        lines = (ROOT / rel).read_text().splitlines()
        found = [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(lines, 1) if literal.search(line)]
        assert not found, "\n".join(found)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.ENDPOINT_REGISTRY, "toy", "tests.endpoints.toy_endpoint_backend:TOY")
    return registry.descriptor("toy")


def test_one_registry_line_adds_an_endpoint_backend_to_the_spec_auto_and_the_service(toy, tmp_path):
    service = EndpointService(
        InMemoryEndpointStore(), make_settings(tmp_path, JOBPLANE_BACKENDS="local"), InMemoryJobStore()
    )
    assert "toy" in service.enabled()  # enabled with the local deployment backend, as its descriptor says
    spec = parse_endpoint_spec(endpoint_body(backend="auto"))
    assert service.plan(spec, spec.model.uri) == (
        "toy",
        "auto: toy: CPU model: the toy serves first; the model is on AWS",
    )
    endpoint = service.create(ALICE, parse_endpoint_spec(endpoint_body(backend="toy")))
    assert endpoint.status is EndpointStatus.IN_SERVICE and endpoint.url == f"toy://{endpoint.native_id}"
    assert endpoint.cost_per_hour_usd is None and endpoint.cost_unknown_reason == "toys are priceless"
    assert service.invoke(ALICE, endpoint.endpoint_id, json.dumps({"x": 21}).encode()) == {"y": 42}
    # auto leaves a CPU-only backend out for a GPU model, and says so
    gpu = parse_endpoint_spec(endpoint_body(backend="auto", resources={"gpus": 1}))
    with pytest.raises(ValidationError) as info:
        service.plan(gpu, gpu.model.uri)
    assert "toy serves CPU only" in info.value.message


def test_an_unregistered_backend_is_refused_naming_the_registered_ones(toy):
    with pytest.raises(ValidationError) as info:
        parse_endpoint_spec(endpoint_body(backend="azureml"))
    assert info.value.details[0]["field"] == "backend" and "'toy' or 'auto'" in info.value.details[0]["message"]
    with pytest.raises(ValidationError):
        registry.descriptor("azureml")


def test_prices_come_from_the_descriptor_never_a_made_up_zero(tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_LOCAL_PRICE_PER_HOUR="0.25")
    assert hourly_price("local", settings, {"min_replicas": 1}) == (0.25, None)
    for name in ("sagemaker", "sagemaker-serverless", "vertex"):
        rate, why = hourly_price(name, settings, {"resources": {"instance_type": "ml.g5.xlarge"}})
        assert rate is None and why == registry.descriptor(name).unpriced_reason
    assert "training rates only" in hourly_price("sagemaker", settings)[1]


def test_the_cli_line_shows_why_a_cost_is_unknown_and_the_rate_when_known():
    from jobplane.cli import _endpoint_line

    base = {"endpoint_id": "e" * 32, "name": "clf", "status": "IN_SERVICE", "backend": "sagemaker", "url": None}
    unknown = {**base, "cost_per_hour_usd": None, "cost_unknown_reason": "no hosting rates in the catalog"}
    assert "(cost unknown: no hosting rates in the catalog)" in _endpoint_line(unknown)
    known = {**base, "backend": "local", "cost_per_hour_usd": 0.5, "cost_estimate_usd": 0.25}
    assert "($0.50/h, $0.25 so far)" in _endpoint_line(known)
