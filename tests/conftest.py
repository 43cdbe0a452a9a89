"""Shared fixtures: an embedded moto server, the fake Google APIs, settings, both job stores, the API client.

Helpers live in tests/factories.py; no test imports this module."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.factories import ApiClient, gcp_env, make_settings, make_stores, use_stores  # noqa: E402  (after the path)

# Never let a test find real credentials or reach a real endpoint.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    }
)
os.environ.pop("AWS_PROFILE", None)
# Test jobs run this checkout's Python, which an unprivileged user cannot reach here (it lives under
# /root); the isolation tests choose their user themselves.
os.environ.setdefault("JOBPLANE_LOCAL_RUN_AS", "self")


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real moto server on a free loopback port, shared by the session (the local stack's emulator)."""
    from jobplane.local.emulator import start_moto

    server, endpoint = start_moto()
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def fake_server():
    """The loopback fake of the Vertex, Compute and Storage REST APIs, shared by the session."""
    from tests.fakegcp import FakeGcp

    fake = FakeGcp().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_gcp(fake_server):
    """The shared fake, emptied for each test."""
    fake_server.requests.clear()
    fake_server.custom_jobs.clear()
    fake_server.instances.clear()
    fake_server.objects.clear()
    fake_server.guest_attributes.clear()
    fake_server.operations.clear()
    fake_server.log_entries.clear()
    fake_server.fail_next.clear()
    fake_server.operations.clear()
    fake_server.operation_errors.clear()
    fake_server.region_quotas.clear()
    fake_server.region_zones.clear()
    fake_server._ids = 1000
    return fake_server


@pytest.fixture
def fake_k8s(tmp_path):
    """A loopback Kubernetes API server; `fake.config` is a kubeconfig naming it as the current context."""
    from tests.fakek8s import FakeKubernetes

    fake = FakeKubernetes()
    fake.config = fake.kubeconfig(tmp_path)
    yield fake
    fake.close()


@pytest.fixture
def gcp_settings(tmp_path, fake_gcp):
    """Settings pointing at the fake Google APIs."""
    return make_settings(tmp_path, **gcp_env(fake_gcp.endpoint))


@pytest.fixture
def gcp_service(memory_store, gcp_settings):
    from chalicelib.jobs.service import JobService

    return JobService(memory_store, gcp_settings)


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


@pytest.fixture
def memory_store():
    from chalicelib.store.memory import InMemoryJobStore

    return InMemoryJobStore()


@pytest.fixture
def dynamo_store(tmp_path, moto_endpoint):
    from chalicelib.store.dynamo import DynamoJobStore

    store = DynamoJobStore(make_settings(tmp_path, moto_endpoint))
    store.create_tables()
    return store


@pytest.fixture(params=["dynamo", "in-memory"])
def store(request):
    name = "dynamo_store" if request.param == "dynamo" else "memory_store"
    return request.getfixturevalue(name)


@pytest.fixture
def service(memory_store, settings):
    from chalicelib.jobs.service import JobService

    return JobService(memory_store, settings)


@pytest.fixture
def api(tmp_path, moto_endpoint):
    """Chalice's test client over the real app, with a DynamoDB store on moto."""
    from chalice.test import Client

    from chalicelib import deps
    from chalicelib.jobs.service import JobService

    settings = make_settings(tmp_path, moto_endpoint)
    stores = make_stores(settings)
    use_stores(settings, stores, service=JobService(stores["jobs"], settings))
    import app as app_module

    with Client(app_module.app) as client:
        yield ApiClient(client, stores)
    deps.reset()
