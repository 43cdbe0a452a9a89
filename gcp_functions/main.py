"""Cloud Functions entry points (gen2, functions-framework): thin adapters onto the shared core."""

from __future__ import annotations

import json
import logging
from typing import Any

import functions_framework

log = logging.getLogger("jobplane.gcp")


def _service():
    from chalicelib import deps

    deps.ensure_aws_credentials()  # DynamoDB through the federated AWS role, refreshed before expiry
    return deps.get_service()


def _raise_if_retryable(exc: Exception) -> None:
    """A transient failure is raised (HTTP 500: Pub/Sub / Eventarc deliver again); anything else is
    logged and acknowledged, since delivering it again would fail the same way."""
    from chalicelib.errors import BackendError, JobplaneError

    if isinstance(exc, BackendError) and exc.retryable:
        raise exc
    if not isinstance(exc, JobplaneError):
        raise exc
    log.warning("event dropped: %s", exc.message)


@functions_framework.cloud_event
def on_job_event(cloud_event) -> dict[str, Any]:
    """google.cloud.pubsub.topic.v1.messagePublished: a log sink entry (Vertex AI, GCE) or a jobplane
    VM's message. Only a hint: the backend re-reads the resource before any transition."""
    from chalicelib.errors import JobplaneError
    from chalicelib.events import EventResult, Outcome
    from chalicelib.events.gcp import handle_job_event

    try:
        result = handle_job_event(cloud_event.data, _service()).to_dict()
    except JobplaneError as exc:
        _raise_if_retryable(exc)
        result = EventResult(Outcome.ERROR, detail=exc.message).to_dict()
    log.info("on_job_event %s: %s", cloud_event["id"], json.dumps(result))
    return result


@functions_framework.cloud_event
def on_gcs_upload(cloud_event) -> list[dict[str, Any]]:
    """google.cloud.storage.object.v1.finalized: the upload trigger rules, as for S3."""
    from chalicelib.events.gcp import handle_gcs_event

    results = handle_gcs_event(cloud_event["type"], cloud_event.data, _service())
    log.info("on_gcs_upload %s: %s", cloud_event["id"], json.dumps(results))
    return results


@functions_framework.cloud_event
def reconcile(cloud_event) -> list[dict[str, Any]]:
    """Pub/Sub message from Cloud Scheduler: the same reconcile as the AWS schedule (the tick carries nothing)."""
    from chalicelib.reaper import read_metrics
    from chalicelib.reaper import reconcile as run

    service = _service()
    jobs = list(service.store.iter_active())  # one read of the active index for the tick and its metrics
    actions = [a.to_dict() for a in run(service, jobs=jobs)] + read_metrics(service, jobs)
    log.info("reconcile %s: %s", cloud_event["id"], json.dumps(actions))
    return actions
