"""Cloud Functions entry points through functions-framework's own app and test client."""

from __future__ import annotations

import base64
import json

import pytest
from functions_framework import create_app

from chalicelib.events.gcp import handle_gcs_event
from chalicelib.jobs.model import FailureKind, JobStatus
from tests.factories import GCP_PROJECT, ROOT, gcp_env, gcp_fixture, make_settings, pubsub_data, submit

SOURCE = str(ROOT / "gcp_functions" / "main.py")
ZONE = "us-central1-a"


@pytest.fixture(scope="module")
def gcp_tables(tmp_path_factory, moto_endpoint, fake_server):
    """One set of DynamoDB tables on moto for the module (creating them is the slow part)."""
    from chalicelib.store.dynamo import DynamoJobStore

    settings = make_settings(tmp_path_factory.mktemp("gcp"), moto_endpoint, **gcp_env(fake_server.endpoint))
    store = DynamoJobStore(settings)
    store.create_tables()
    return settings, store


@pytest.fixture
def gcp_deps(gcp_tables, fake_gcp):
    """The functions' cached service: a DynamoDB store on moto, GCP APIs on the fake."""
    from chalicelib import deps
    from chalicelib.jobs.service import JobService

    settings, store = gcp_tables
    service = JobService(store, settings)
    deps.reset()
    deps.override(settings=settings, store=store, service=service)
    yield service
    deps.reset()


def client(target):
    return create_app(target, SOURCE, "cloudevent").test_client()


def binary_headers(ce_type: str, source: str, event_id: str = "evt-1") -> dict[str, str]:
    return {
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": ce_type,
        "ce-specversion": "1.0",
        "ce-time": "2025-01-01T02:00:01.000Z",
        "Content-Type": "application/json",
    }


def _preempted(job):
    entry = gcp_fixture("logentry_gce_preempted.json")
    entry["protoPayload"]["resourceName"] = f"projects/{GCP_PROJECT}/zones/{ZONE}/instances/{job.native_id}"
    return entry


def test_a_published_structured_cloudevent_that_is_not_ours_is_acknowledged(gcp_deps):
    event = gcp_fixture("cloudevent_pubsub_structured.json")  # verbatim sample: data is "test message 3"
    response = client("on_job_event").post(
        "/", data=json.dumps(event), headers={"Content-Type": "application/cloudevents+json"}
    )
    assert response.status_code == 200


def test_a_log_sink_message_fails_a_preempted_job_in_dynamodb(gcp_deps, fake_gcp):
    job = submit(gcp_deps, backend="gce", resources={"spot": True})
    fake_gcp.instances[(ZONE, job.native_id)]["status"] = "TERMINATED"
    topic = f"//pubsub.googleapis.com/projects/{GCP_PROJECT}/topics/jobplane-test-events"
    response = client("on_job_event").post(
        "/",
        data=json.dumps(pubsub_data(_preempted(job))),
        headers=binary_headers("google.cloud.pubsub.topic.v1.messagePublished", topic),
    )
    assert response.status_code == 200
    after = gcp_deps.store.get_job(job.job_id)
    assert (after.status, after.failure_kind) == (JobStatus.FAILED, FailureKind.INTERRUPTED)
    assert fake_gcp.instances == {}


def test_a_raw_push_body_is_converted_by_functions_framework(gcp_deps, fake_gcp):
    """A push subscription without Eventarc POSTs the bare push JSON; functions-framework turns it into a
    messagePublished CloudEvent (keeping messageId/publishTime, dropping the snake_case twins)."""
    job = submit(gcp_deps, backend="gce", resources={"spot": True})
    fake_gcp.instances[(ZONE, job.native_id)]["status"] = "TERMINATED"
    body = pubsub_data(_preempted(job))
    response = client("on_job_event").post(
        f"/projects/{GCP_PROJECT}/topics/jobplane-test-events", data=json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 200
    assert gcp_deps.store.get_job(job.job_id).status is JobStatus.FAILED


def test_a_transient_backend_error_asks_for_redelivery(gcp_deps, fake_gcp):
    job = submit(gcp_deps, backend="gce")
    fake_gcp.fail_next.append(
        (429, {"error": {"code": 429, "message": "Rate Limit Exceeded", "status": "RESOURCE_EXHAUSTED"}})
    )
    response = client("on_job_event").post(
        "/",
        data=json.dumps(pubsub_data(_preempted(job))),
        headers=binary_headers("google.cloud.pubsub.topic.v1.messagePublished", "//pubsub.googleapis.com/x"),
    )
    assert response.status_code == 500  # Pub/Sub delivers it again
    assert gcp_deps.store.get_job(job.job_id).status is JobStatus.LAUNCHING


def test_an_event_that_would_fail_again_is_acknowledged_as_an_error_result(gcp_deps, fake_gcp):
    from cloudevents.http import CloudEvent

    from chalicelib.events import Outcome
    from gcp_functions import main
    from tests.fakegcp import _error

    job = submit(gcp_deps, backend="gce")
    denied = f"Required 'compute.instances.get' permission for 'projects/{GCP_PROJECT}/zones/{ZONE}/instances/x'"
    fake_gcp.fail_next.append(_error(403, "PERMISSION_DENIED", denied, "forbidden"))
    attributes = {
        "id": "evt-2",
        "source": "//pubsub.googleapis.com/x",
        "type": "google.cloud.pubsub.topic.v1.messagePublished",
        "specversion": "1.0",
    }
    result = main.on_job_event(CloudEvent(attributes, pubsub_data(_preempted(job))))
    assert result["outcome"] == Outcome.ERROR.value == "error"
    assert "compute.instances.get" in result["detail"]
    assert result == {"outcome": "error", "job_id": None, "status": None, "detail": result["detail"]}
    assert gcp_deps.store.get_job(job.job_id).status is JobStatus.LAUNCHING


def test_reconcile_from_the_scheduler_heals_a_job(gcp_deps, fake_gcp):
    job = submit(gcp_deps, image="us-docker.pkg.dev/p/r/i:1", backend="vertex")
    fake_gcp.custom_jobs[job.native_id]["state"] = "JOB_STATE_SUCCEEDED"
    tick = {"message": {"data": base64.b64encode(b"tick").decode(), "messageId": "1", "message_id": "1"}}
    response = client("reconcile").post(
        "/",
        data=json.dumps(tick),
        headers=binary_headers("google.cloud.pubsub.topic.v1.messagePublished", "//pubsub.googleapis.com/sched"),
    )
    assert response.status_code == 200
    assert gcp_deps.store.get_job(job.job_id).status is JobStatus.SUCCEEDED


def test_an_upload_event_reaches_the_trigger_rules(gcp_deps):
    event = gcp_fixture("cloudevent_storage_finalized.json")
    response = client("on_gcs_upload").post(
        "/", data=json.dumps(event), headers={"Content-Type": "application/cloudevents+json"}
    )
    assert response.status_code == 200
    assert handle_gcs_event(event["type"], event["data"], gcp_deps) == [
        {"bucket": "sample-bucket", "key": "folder/Test.cs", "outcome": "no_rule"}
    ]
    assert handle_gcs_event("google.cloud.storage.object.v1.deleted", event["data"], gcp_deps) == []
