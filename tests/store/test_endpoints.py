"""The endpoint store contract on DynamoDB (moto) and in memory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.endpoints.model import EndpointHistoryEntry, EndpointStatus, EndpointTransition
from chalicelib.errors import AlreadyExistsError, StaleStateError
from chalicelib.jobs.model import EventSource
from chalicelib.store.endpoints import DynamoEndpointStore, InMemoryEndpointStore
from tests.factories import make_endpoint, make_settings

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
S = EndpointStatus


@pytest.fixture(params=["dynamo", "memory"])
def store(request, tmp_path):
    if request.param == "memory":
        return InMemoryEndpointStore()
    store = DynamoEndpointStore(make_settings(tmp_path, request.getfixturevalue("moto_endpoint")))
    store.create_tables()
    return store


def created(endpoint):
    return EndpointHistoryEntry(endpoint.endpoint_id, endpoint.created_at, None, S.CREATING, "created", EventSource.API)


def moved(endpoint, to, minutes=1, **changes):
    return EndpointTransition(
        endpoint.endpoint_id,
        endpoint.status,
        to,
        f"to {to.value}",
        EventSource.BACKEND,
        T0 + timedelta(minutes=minutes),
        native_status=to.value,
        changes=changes,
    )


def test_can_put_and_get_an_endpoint_with_every_field_intact(store):
    endpoint = make_endpoint(
        native_id="jpe-x",
        url="http://127.0.0.1:9/",
        cost_per_hour_usd=1.41,
        plan_reason="asked for local",
        code_uri="s3://b/code/x.tar.gz",
        version=3,
        invocations=7,
        last_invoked_at=T0,
        cost_unknown_reason="no hosting rates in the catalog",
        operation="projects/p/locations/l/endpoints/jpe-x/operations/42",
        serving_error="application-autoscaling RegisterScalableTarget: AccessDeniedException",
    )
    store.put_endpoint(endpoint, created(endpoint))
    assert store.get_endpoint(endpoint.endpoint_id) == endpoint
    assert store.get_endpoint(uuid.uuid4().hex) is None
    assert [e.to_status for e in store.history(endpoint.endpoint_id)] == [S.CREATING]


def test_a_taken_endpoint_id_is_refused_and_keeps_the_first(store):
    endpoint = make_endpoint()
    store.put_endpoint(endpoint, created(endpoint))
    with pytest.raises(AlreadyExistsError):
        store.put_endpoint(endpoint.with_changes(owner="bob"), created(endpoint))
    assert store.get_endpoint(endpoint.endpoint_id).owner == "alice"


def test_listing_is_newest_first_and_owner_scoped(store):
    a1 = make_endpoint("alice", created_at=T0)
    b1 = make_endpoint("bob", created_at=T0 + timedelta(minutes=1))
    a2 = make_endpoint("alice", created_at=T0 + timedelta(minutes=2))
    for e in (a1, b1, a2):
        store.put_endpoint(e, created(e))
    assert [e.endpoint_id for e in store.list_endpoints("alice")] == [a2.endpoint_id, a1.endpoint_id]
    assert [e.endpoint_id for e in store.list_endpoints(None)] == [a2.endpoint_id, b1.endpoint_id, a1.endpoint_id]
    assert store.list_endpoints("carol") == []


def test_transitions_are_guarded_on_the_status_read_and_append_history(store):
    endpoint = make_endpoint()
    store.put_endpoint(endpoint, created(endpoint))
    live = store.apply_transition(endpoint, moved(endpoint, S.IN_SERVICE, url="http://127.0.0.1:1/"))
    assert live.status is S.IN_SERVICE and live.url == "http://127.0.0.1:1/"
    assert store.get_endpoint(endpoint.endpoint_id) == live
    with pytest.raises(StaleStateError):  # read CREATING, but it moved
        store.apply_transition(endpoint, moved(endpoint, S.FAILED))
    assert [(h.from_status, h.to_status) for h in store.history(endpoint.endpoint_id)] == [
        (None, S.CREATING),
        (S.CREATING, S.IN_SERVICE),
    ]


def test_update_endpoint_is_guarded_and_none_removes_a_field(store):
    endpoint = make_endpoint(url="http://127.0.0.1:1/")
    store.put_endpoint(endpoint, created(endpoint))
    spec = {**endpoint.spec, "idle_minutes": 5}
    updated = store.update_endpoint(endpoint, S.CREATING, url=None, version=2, spec=spec, operation="op/1")
    assert store.get_endpoint(endpoint.endpoint_id) == updated and updated.operation == "op/1"
    cleared = store.update_endpoint(updated, S.CREATING, operation=None)
    assert store.get_endpoint(endpoint.endpoint_id) == cleared and cleared.operation is None
    assert updated.url is None and updated.version == 2 and updated.idle_minutes == 5
    with pytest.raises(StaleStateError):
        store.update_endpoint(endpoint, S.IN_SERVICE, version=3)


def test_invocations_are_counted_and_a_missing_record_counts_nothing(store):
    endpoint = make_endpoint()
    store.put_endpoint(endpoint, created(endpoint))
    for minute in (1, 2, 3):
        store.record_invocation(endpoint.endpoint_id, T0 + timedelta(minutes=minute))
    got = store.get_endpoint(endpoint.endpoint_id)
    assert (got.invocations, got.last_invoked_at) == (3, T0 + timedelta(minutes=3))
    store.record_invocation(uuid.uuid4().hex, T0)
    assert len(store.list_endpoints(None)) == 1


def test_only_endpoints_that_may_be_billed_are_active(store):
    kept = {}
    for status in S:
        e = make_endpoint(status=status)
        store.put_endpoint(e, created(e))
        kept[status] = e.endpoint_id
    active = {e.endpoint_id for e in store.iter_active()}
    assert active == {kept[s] for s in (S.CREATING, S.IN_SERVICE, S.UPDATING, S.DELETING)}
    gone = store.get_endpoint(kept[S.IN_SERVICE])
    store.apply_transition(gone, moved(gone, S.DELETING))
    deleting = store.get_endpoint(gone.endpoint_id)
    store.apply_transition(deleting, moved(deleting, S.DELETED, minutes=2))
    assert gone.endpoint_id not in {e.endpoint_id for e in store.iter_active()}
