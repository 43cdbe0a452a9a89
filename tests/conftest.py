"""Shared fixtures: an embedded moto server, settings with fresh tables, both job stores, the API client."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
    from tests.gcp.fakegcp import FakeGcp

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
    fake_server.fail_next.clear()
    fake_server._ids = 1000
    return fake_server


def make_settings(tmp_path, endpoint=None, **overrides):
    from chalicelib.config import Settings

    env = {
        "JOBPLANE_STAGE": "test",
        "JOBPLANE_TABLE_PREFIX": f"jp-{uuid.uuid4().hex[:10]}",
        "JOBPLANE_LOCAL_STATE_DIR": str(tmp_path / "jobs"),
        "JOBPLANE_LOCAL_RUN_AS": os.environ["JOBPLANE_LOCAL_RUN_AS"],
        "AWS_REGION": "us-east-1",
    }
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    env.update(overrides)
    return Settings.from_env(env)


def make_stores(settings):
    """One DynamoDB store of each kind over `settings`' tables, every table created."""
    from chalicelib.store.tables import dynamo_stores

    stores = dynamo_stores(settings)
    for store in stores.values():
        store.create_tables()
    return stores


def use_stores(settings, stores, **overrides):
    """Point deps at these settings and stores (plus any other cached objects given)."""
    from chalicelib import deps

    deps.reset()
    deps.override(
        settings=settings,
        store=stores["jobs"],
        token_store=stores["tokens"],
        slack_store=stores["slack"],
        devvm_store=stores["devvms"],
        metrics_store=stores["metrics"],
        **overrides,
    )


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


class ApiClient:
    """Chalice test client with token helpers; every call returns the Chalice response."""

    def __init__(self, client, stores):
        self.client = client
        self.stores = stores
        self.store = stores["jobs"]
        self.events = client.events
        self.lambda_ = client.lambda_

    def token(self, user: str, admin: bool = False) -> str:
        from chalicelib.auth import create_token

        return create_token(self.stores["tokens"], user, admin)

    def request(self, method, path, token=None, body=None, headers=None):
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        if body is not None and not isinstance(body, (str, bytes)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        return getattr(self.client.http, method.lower())(path, headers=hdrs, body=body or b"")


def wait_for(predicate, timeout=15.0, interval=0.05, what="condition"):
    """Poll `predicate` until it returns something true; fail the test after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def job_spec(name="train", **overrides):
    spec = {"name": name, "command": [sys.executable, "-c", "print('hello')"], "backend": "local"}
    spec.update(overrides)
    return spec
