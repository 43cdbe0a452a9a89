"""State-event sources per cloud, generated from the descriptors and checked in: read without importing a backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from chalicelib.backends import Cloud

# app.py's EventBridge pattern is built at import, on every cold start: reading this file costs far less
# than importing every backend module for its descriptor. tests/backends/test_backend_names.py fails when it
# is stale; `python -m chalicelib.backends.sources` rewrites it.
SOURCES_FILE = Path(__file__).with_name("event_sources.json")


def deployed(*clouds: Cloud) -> list[str]:
    """The checked-in sources of these clouds, in the order given."""
    table = json.loads(SOURCES_FILE.read_text())
    return [source for cloud in clouds for source in table.get(cloud.value, [])]


def render() -> str:
    """The file's content as the registered descriptors say it should be."""
    from chalicelib.backends import event_sources

    return json.dumps({cloud.value: event_sources(cloud) for cloud in Cloud}, indent=2) + "\n"


if __name__ == "__main__":
    SOURCES_FILE.write_text(render())
    sys.stdout.write(render())
