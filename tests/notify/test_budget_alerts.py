"""A budget's 80 % and 100 % messages reach Slack (a real local webhook) through the outbox, once each a month."""

from __future__ import annotations

from chalicelib.budgets.model import month_of
from chalicelib.jobs.model import utcnow
from chalicelib.notify.slack import WEBHOOK, Notifier
from chalicelib.store.slack import InMemorySlackStore, OutboxRecord, OutboxState
from tests.factories import BudgetWorld, make_settings


def test_slack_hears_of_80_and_100_percent_once_each_a_month(tmp_path, slack):
    world = BudgetWorld(make_settings(tmp_path))
    slack_fake, slack = slack, InMemorySlackStore()

    def enqueue(key, message):
        now = utcnow()
        return slack.add_outbox(OutboxRecord(key, message, WEBHOOK, OutboxState.PENDING, now, now))

    world.set(owner="alice", limit_usd=10)
    world.spent("alice", 8.5)
    assert world.budgets.evaluate(world.service, [], enqueue) == [
        {"budget": "owner:alice", "alert": 80, "spent_usd": 8.5}
    ]
    assert world.budgets.evaluate(world.service, [], enqueue) == []  # the outbox key is taken: once
    world.spent("alice", 2.0)
    world.budgets._cache.clear()  # a later tick (the spend is read again after SPEND_TTL_SECONDS)
    assert world.budgets.evaluate(world.service, [], enqueue) == [
        {"budget": "owner:alice", "alert": 100, "spent_usd": 10.5}
    ]
    notifier = Notifier(slack, world.settings, None, f"{slack_fake.url}/hook")
    notifier.drain(5.0)
    texts = [body["text"] for body in slack_fake.wait_for("/hook", 2)]
    month = month_of(utcnow())
    assert texts == [
        f":warning: Budget owner:alice reached 80 %: $8.50 of $10.00 in {month}, 1 jobs.",
        f":no_entry: Budget owner:alice is at 100 %: $10.50 of $10.00 in {month}, 2 jobs. New jobs are refused.",
    ]
    notifier.drain(1.0)
    assert len(slack_fake.bodies("/hook")) == 2


def test_budget_alerts_are_queued_for_the_webhook_the_outbox_drains(tmp_path, slack):
    from chalicelib import deps
    from chalicelib.budgets.model import Budget, OnExceed, Scope
    from chalicelib.budgets.service import Spend, budget_message

    assert deps.SLACK_WEBHOOK == WEBHOOK
    store = InMemorySlackStore()
    deps.reset()
    deps.override(slack_store=store, **{"settings": make_settings(tmp_path, JOBPLANE_SLACK_WEBHOOK_SECRET="hook")})
    try:
        spend = Spend(Budget(Scope.OWNER, "a", 1.0, OnExceed.REFUSE, False, utcnow(), "root"), "2026-12", 0.9, 1, 0)
        deps.override(**{"secret:hook": f"{slack.url}/hook"})
        assert deps.enqueue_slack("budget#owner:a#2026-12#80", budget_message(spend, 80)) is True
        assert deps.enqueue_slack("budget#owner:a#2026-12#80", budget_message(spend, 80)) is False
        assert store.get_outbox("budget#owner:a#2026-12#80").destination == WEBHOOK
        deps.override(**{"secret:hook": ""})
        assert deps.enqueue_slack("budget#owner:a#2026-12#100", budget_message(spend, 100)) is None
    finally:
        deps.reset()
