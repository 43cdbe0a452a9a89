"""Slack messages for endpoints: in service, failed, deleted for idleness, with the cost when a price is known."""

from __future__ import annotations

from datetime import timedelta

from chalicelib.endpoints.model import EndpointStatus
from chalicelib.notify.messages import endpoint_message
from tests.factories import make_endpoint


def test_in_service_names_the_url_and_the_cost_per_hour_and_so_far():
    endpoint = make_endpoint(status=EndpointStatus.IN_SERVICE, url="http://127.0.0.1:5000", cost_per_hour_usd=2.0)
    later = endpoint.created_at + timedelta(minutes=90)
    endpoint = endpoint.with_changes(deleted_at=later)  # the cost stops at deletion: 1.5 h
    text = endpoint_message(endpoint, "in_service")["text"]
    assert "is in service at http://127.0.0.1:5000" in text and "cost: $2.00/h, $3.00 so far" in text


def test_failed_gives_the_reason_and_an_unknown_price_is_said_not_invented():
    endpoint = make_endpoint(
        status=EndpointStatus.FAILED,
        failure_reason="load() raised OSError: no weights",
        cost_unknown_reason="the price catalog holds SageMaker training rates only, not real-time hosting rates",
    )
    text = endpoint_message(endpoint, "failed")["text"]
    assert "failed: load() raised OSError: no weights" in text
    assert "cost: unknown (the price catalog holds SageMaker training rates only" in text and "$" not in text
    bare = endpoint_message(make_endpoint(status=EndpointStatus.FAILED), "failed")["text"]
    assert "cost: unknown (no hosting price for this backend)" in bare


def test_deleted_for_idleness_says_who_and_why():
    endpoint = make_endpoint(
        status=EndpointStatus.DELETED,
        deleted_by="jobplane reconcile",
        deleted_reason="deleted for idleness: no invocation for 60 min",
        cost_per_hour_usd=0.0,
    )
    text = endpoint_message(endpoint, "deleted_idle")["text"]
    assert "deleted for idleness: no invocation for 60 min by jobplane reconcile" in text
    assert "cost: $0.00/h" in text
