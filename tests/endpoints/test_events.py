"""The "SageMaker Endpoint State Change" event, as AWS publishes it, through app.py's on_job_state_change to the
endpoint service (Chalice's test client, DynamoDB on moto): applied once, duplicates and late events harmless."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from chalicelib import deps
from chalicelib.endpoints.model import EndpointHistoryEntry, EndpointStatus
from chalicelib.jobs.model import EventSource
from tests.factories import ENDPOINT_STATE_EVENT as STATE_EVENT
from tests.factories import make_endpoint, make_settings, make_stores, use_stores

S = EndpointStatus
CREATED = datetime.fromtimestamp(1592411990, UTC)  # just before the sample's CreationTime


@pytest.fixture
def lambda_(tmp_path, moto_endpoint):
    from chalice.test import Client

    settings = make_settings(tmp_path, moto_endpoint, JOBPLANE_BACKENDS="local,sagemaker")
    stores = make_stores(settings)
    use_stores(settings, stores)
    import app as app_module

    with Client(app_module.app) as client:
        client.stores = stores
        yield client
    deps.reset()


def put(client, backend="sagemaker", **changes):
    endpoint = make_endpoint(body={"backend": backend}, created_at=CREATED, **changes)
    endpoint = endpoint.with_changes(native_id=f"jpe-{endpoint.endpoint_id}")
    entry = EndpointHistoryEntry(endpoint.endpoint_id, CREATED, None, S.CREATING, "created", EventSource.API)
    client.stores["endpoints"].put_endpoint(endpoint, entry)
    return endpoint


def event(endpoint_id: str, status: str, modified_ms: float, **detail) -> dict:
    raw = copy.deepcopy(STATE_EVENT)
    name = f"jpe-{endpoint_id}"
    raw["resources"] = [f"arn:aws:sagemaker:us-west-2:111122223333:endpoint/{name}"]
    raw["detail"].update(EndpointName=name, EndpointStatus=status, LastModifiedTime=modified_ms, **detail)
    return raw


def send(client, raw) -> dict:
    return client.lambda_.invoke("on_job_state_change", raw).payload


def test_the_published_event_moves_the_endpoint_and_a_duplicate_changes_nothing(lambda_):
    endpoint = put(lambda_)
    in_service = event(endpoint.endpoint_id, "IN_SERVICE", 1592411994287.0)
    first, again = send(lambda_, in_service), send(lambda_, in_service)
    assert (first["outcome"], first["status"], first["endpoint_id"]) == ("applied", "IN_SERVICE", endpoint.endpoint_id)
    assert (again["outcome"], again["status"]) == ("unchanged", "IN_SERVICE")
    store = lambda_.stores["endpoints"]
    got = store.get_endpoint(endpoint.endpoint_id)
    assert got.status is S.IN_SERVICE and got.in_service_at == datetime.fromtimestamp(1592411994.287, UTC)
    assert [(h.to_status, h.source) for h in store.history(endpoint.endpoint_id)] == [
        (S.CREATING, EventSource.API),
        (S.IN_SERVICE, EventSource.BACKEND),
    ]


def test_a_late_event_older_than_the_last_change_cannot_undo_it(lambda_):
    endpoint = put(lambda_)
    send(lambda_, event(endpoint.endpoint_id, "InService", 1592411994287.0))  # DescribeEndpoint's spelling too
    # An Updating event from before the endpoint came into service arrives after it.
    late = send(lambda_, event(endpoint.endpoint_id, "Updating", 1592411993000.0))
    assert (late["outcome"], late["status"]) == ("unchanged", "IN_SERVICE")
    assert "older than the endpoint's last change" in late["detail"]
    newer = send(lambda_, event(endpoint.endpoint_id, "UPDATING", 1592411999000.0))
    assert (newer["outcome"], newer["status"]) == ("applied", "UPDATING")


def test_a_failed_event_records_the_reason(lambda_):
    endpoint = put(lambda_)
    raw = event(endpoint.endpoint_id, "FAILED", 1592411994287.0, FailureReason="The primary container did not pass")
    assert send(lambda_, raw)["status"] == "FAILED"
    got = lambda_.stores["endpoints"].get_endpoint(endpoint.endpoint_id)
    assert got.failure_reason == "The primary container did not pass"


def test_a_serverless_endpoint_hears_the_same_event_and_strangers_are_not_applied(lambda_):
    serverless = put(lambda_, backend="sagemaker-serverless")
    result = send(lambda_, event(serverless.endpoint_id, "IN_SERVICE", 1592411994287.0))
    assert (result["outcome"], result["status"]) == ("applied", "IN_SERVICE")
    unknown = send(lambda_, event("f" * 32, "IN_SERVICE", 1592411994287.0))
    assert unknown["outcome"] == "unknown_job"
    foreign = copy.deepcopy(STATE_EVENT)
    foreign["detail"]["EndpointName"] = "someone-elses-endpoint"
    assert send(lambda_, foreign)["outcome"] == "ignored"
