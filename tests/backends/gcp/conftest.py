"""GCP fixtures: settings pointing at the fake Google APIs (tests/conftest.py serves it), a service."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from tests.gcp.helpers import gcp_env


@pytest.fixture
def gcp_settings(tmp_path, fake_gcp):
    return make_settings(tmp_path, **gcp_env(fake_gcp.endpoint))


@pytest.fixture
def gcp_service(memory_store, gcp_settings):
    from chalicelib.jobs.service import JobService

    return JobService(memory_store, gcp_settings)
