"""GCP fixtures: the fake Vertex/Compute/Storage REST server, settings pointing at it, a service."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from tests.gcp.fakegcp import FakeGcp
from tests.gcp.helpers import gcp_env


@pytest.fixture(scope="session")
def fake_server():
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


@pytest.fixture
def gcp_settings(tmp_path, fake_gcp):
    return make_settings(tmp_path, **gcp_env(fake_gcp.endpoint))


@pytest.fixture
def gcp_service(memory_store, gcp_settings):
    from chalicelib.jobs.service import JobService

    return JobService(memory_store, gcp_settings)
