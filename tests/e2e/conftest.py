"""The local stack as a real process (`jobplane local up`), one per module, for end-to-end tests."""

from __future__ import annotations

import pytest

from tests.factories import start_stack, stop_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    running = start_stack(tmp_path_factory.mktemp("stack"), sigint_ignored=True)
    yield running
    stop_stack(running)
