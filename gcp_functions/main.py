"""Cloud Functions entry points: thin adapters onto the shared core (filled in by the GCP issue)."""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("jobplane.gcp")


def reconcile(cloud_event: Any) -> list[dict[str, Any]]:  # noqa: ARG001 - the tick carries nothing
    """Pub/Sub message from Cloud Scheduler: the same reconcile as the AWS schedule."""
    from chalicelib import deps
    from chalicelib.reaper import reconcile as run

    actions = [a.to_dict() for a in run(deps.get_service())]
    log.info("reconcile: %s", json.dumps(actions))
    return actions
