"""The endpoints' pure decide(): allowed moves only, repeats and stale reports decide nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chalicelib.endpoints.machine import ALLOWED, decide
from chalicelib.endpoints.model import EndpointEvent, EndpointStatus
from chalicelib.jobs.model import EventSource
from tests.factories import make_endpoint

S = EndpointStatus
T1 = datetime(2024, 5, 1, 13, 0, tzinfo=UTC)


def event(endpoint, status, **kw):
    return EndpointEvent(endpoint.endpoint_id, status, kw.pop("source", EventSource.BACKEND), T1, **kw)


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("target", list(S))
def test_only_the_allowed_moves_decide_anything(current, target):
    endpoint = make_endpoint(status=current)
    transition = decide(endpoint, event(endpoint, target))
    assert (transition is not None) == (target in ALLOWED[current])
    if transition is not None:
        assert (transition.from_status, transition.to_status, transition.at) == (current, target, T1)


def test_the_lifecycle_the_contract_names_is_allowed_and_deleted_is_final():
    path = [S.CREATING, S.IN_SERVICE, S.UPDATING, S.IN_SERVICE, S.DELETING, S.DELETED]
    for a, b in zip(path, path[1:], strict=False):
        assert b in ALLOWED[a]
    assert ALLOWED[S.DELETED] == frozenset()
    assert S.CREATING not in ALLOWED[S.IN_SERVICE]  # never backwards


def test_in_service_records_the_url_and_its_first_time_only():
    endpoint = make_endpoint(status=S.CREATING)
    t = decide(endpoint, event(endpoint, S.IN_SERVICE, url="http://127.0.0.1:5/", native_id="jpe-x"))
    assert t.changes == {"url": "http://127.0.0.1:5/", "native_id": "jpe-x", "in_service_at": T1}
    assert t.reason == "in_service (reported by backend)"
    again = make_endpoint(status=S.UPDATING, in_service_at=T1, url="http://127.0.0.1:5/", native_id="jpe-x")
    assert decide(again, event(again, S.IN_SERVICE, url="http://127.0.0.1:5/")).changes == {}


def test_failed_keeps_the_reason_and_deleted_clears_the_url():
    endpoint = make_endpoint(status=S.CREATING)
    assert decide(endpoint, event(endpoint, S.FAILED, reason="load raised")).changes["failure_reason"] == "load raised"
    assert decide(endpoint, event(endpoint, S.FAILED, native_status="Failed")).changes["failure_reason"] == "Failed"
    deleting = make_endpoint(status=S.DELETING, url="http://127.0.0.1:5/")
    assert decide(deleting, event(deleting, S.DELETED)).changes == {"deleted_at": T1, "url": None}


def test_an_update_waits_for_the_new_version_a_report_of_the_old_one_is_stale():
    endpoint = make_endpoint(status=S.UPDATING, version=3)
    assert decide(endpoint, event(endpoint, S.IN_SERVICE, version=2)) is None
    assert decide(endpoint, event(endpoint, S.IN_SERVICE, version=3)).to_status is S.IN_SERVICE
    assert decide(endpoint, event(endpoint, S.IN_SERVICE)).to_status is S.IN_SERVICE  # a provider without versions
