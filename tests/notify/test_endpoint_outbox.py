"""Endpoint Slack messages go through the jobs' outbox (a real local HTTP Slack): one record per transition,
posted once; one Slack did not take waits for the reconcile drain; one that may have reached Slack is never
posted again."""

from __future__ import annotations

import dataclasses

import pytest

from chalicelib.endpoints.model import EndpointStatus
from chalicelib.endpoints.notify import outbox_key, send
from chalicelib.notify.slack import Notifier
from chalicelib.store.slack import OutboxState
from tests.factories import WEBHOOK, make_endpoint, make_settings


@pytest.fixture
def settings(tmp_path, slack):
    return make_settings(tmp_path, JOBPLANE_SLACK_API_URL=f"{slack.url}/api/", JOBPLANE_SLACK_SEND_BUDGET_SECONDS="1")


def notifier(slack_store, settings, slack, bot_token=None):
    """The jobs' Notifier: its outbox drain is what the reconcile schedule runs."""
    return Notifier(slack_store, settings, None, f"{slack.url}{WEBHOOK}", bot_token)


def post(slack_store, settings, slack, endpoint, kind, bot_token=None):
    return send(slack_store, settings, endpoint, kind, f"{slack.url}{WEBHOOK}", bot_token)


def serving(**changes):
    return make_endpoint(status=EndpointStatus.IN_SERVICE, url="http://127.0.0.1:5000", **changes)


def test_a_transition_is_posted_once_even_when_its_message_is_sent_again(slack_store, settings, slack):
    endpoint = serving(cost_per_hour_usd=0.5)
    assert post(slack_store, settings, slack, endpoint, "in_service")["outcome"] == "sent"
    assert (
        post(slack_store, settings, slack, endpoint, "in_service")["outcome"] == "duplicate"
    )  # a second process, a retried request
    [body] = slack.bodies(WEBHOOK)
    assert "is in service at http://127.0.0.1:5000" in body["text"] and "$0.50/h" in body["text"]
    record = slack_store.get_outbox(outbox_key(endpoint, "in_service"))
    assert record.state is OutboxState.SENT and record.tries == 1
    # another kind of the same endpoint is its own transition
    assert (
        post(slack_store, settings, slack, endpoint.with_changes(failure_reason="boom"), "failed")["outcome"] == "sent"
    )
    assert len(slack.bodies(WEBHOOK)) == 2


def test_a_rate_limited_message_waits_for_the_reconcile_drain_then_goes_once(slack_store, settings, slack):
    endpoint = serving()
    slack.script(WEBHOOK, (429, b"rate_limited", {"Retry-After": "1"}))
    assert post(slack_store, settings, slack, endpoint, "in_service")["outcome"] == "pending"  # due in 1 s
    n = notifier(slack_store, settings, slack)
    n.drain(2.0)  # what the minute's drain (reaper's drain_outbox) does
    assert slack_store.get_outbox(outbox_key(endpoint, "in_service")).state is OutboxState.SENT
    assert len(slack.bodies(WEBHOOK)) == 2  # the refused try and the one that was taken
    n.drain(1.0)
    assert len(slack.bodies(WEBHOOK)) == 2


def test_a_message_that_may_have_reached_slack_is_never_sent_again(slack_store, settings, slack):
    endpoint = serving()
    slack.script(WEBHOOK, (500, b"rollup_error", {}))  # a 5xx: Slack may have posted it
    assert post(slack_store, settings, slack, endpoint, "in_service")["outcome"] == "unknown"
    notifier(slack_store, settings, slack).drain(1.0)
    assert len(slack.bodies(WEBHOOK)) == 1


def test_with_a_bot_token_the_endpoints_own_channel_gets_it(slack_store, settings, slack):
    endpoint = serving(body={"notify": {"slack_channel": "#ml-serving"}})
    result = post(slack_store, settings, slack, endpoint, "in_service", bot_token="xoxb-test")
    assert result["outcome"] == "sent"
    [posted] = slack.bodies("/api/chat.postMessage")
    assert posted["channel"] == "#ml-serving" and "is in service" in posted["text"]
    assert slack.bodies(WEBHOOK) == []


def test_the_deployments_endpoint_notifier_queues_in_the_outbox_and_reconcile_drains_it(
    monkeypatch, slack_store, settings, slack
):
    """deps.notify_endpoint, as EndpointService calls it on IN_SERVICE: the record is in the outbox (the
    first try refused), and reaper's drain_outbox posts it once."""
    from chalicelib import deps
    from chalicelib.notify.slack import drain_outbox

    monkeypatch.setattr(deps, "get_slack_store", lambda: slack_store)
    monkeypatch.setattr(deps, "get_settings", lambda: settings)
    monkeypatch.setattr(deps, "get_slack_webhook_url", lambda: f"{slack.url}{WEBHOOK}")
    monkeypatch.setattr(deps, "get_slack_bot_token", lambda: None)
    slack.script(WEBHOOK, (429, b"rate_limited", {"Retry-After": "2"}))
    endpoint = serving()
    deps.notify_endpoint(endpoint, "in_service")
    deps.notify_endpoint(endpoint, "in_service")  # a duplicate: nothing more is queued
    assert slack_store.get_outbox(outbox_key(endpoint, "in_service")).state is OutboxState.PENDING
    assert slack_store.count_open_outbox(OutboxState.PENDING) == 1
    longer = dataclasses.replace(settings, slack_send_budget_seconds=3)  # the retry is due within it
    monkeypatch.setattr(deps, "get_settings", lambda: longer)
    drain_outbox()
    assert slack_store.get_outbox(outbox_key(endpoint, "in_service")).state is OutboxState.SENT
    assert len(slack.bodies(WEBHOOK)) == 2  # the refused try, then the one Slack took


def test_the_webhook_destination_is_the_one_the_jobs_outbox_drains():
    from chalicelib.endpoints import notify
    from chalicelib.notify import slack

    assert notify.WEBHOOK == slack.WEBHOOK
