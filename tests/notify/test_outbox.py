"""The Slack outbox against a real local HTTP server: at most once per transition, and nothing dropped for good."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from chalicelib.jobs.model import utcnow
from chalicelib.notify.slack import Notifier, Pacer, drain_outbox
from chalicelib.store.slack import DynamoSlackStore, InMemorySlackStore, OutboxRecord, OutboxState
from tests.factories import JOB_ID, WEBHOOK, finished_job, make_settings, record, running_job

KEY = f"{JOB_ID}#SUCCEEDED#1"


@pytest.fixture
def settings(tmp_path, slack):
    return make_settings(tmp_path, JOBPLANE_SLACK_API_URL=f"{slack.url}/api/", JOBPLANE_SLACK_SEND_BUDGET_SECONDS="5")


@pytest.fixture
def codec(settings):
    from chalicelib.store.dynamo import DynamoJobStore

    return DynamoJobStore(settings)


@pytest.fixture(params=["memory", "dynamo"])
def store(request, tmp_path):
    if request.param == "memory":
        return InMemorySlackStore()
    store = DynamoSlackStore(make_settings(tmp_path, request.getfixturevalue("moto_endpoint")))
    store.create_tables()
    return store


def webhook_notifier(store, settings, codec, slack, **kw):
    return Notifier(store, settings, codec.job_from_image, f"{slack.url}{WEBHOOK}", **kw)


def one_per_second(slack) -> list[int]:
    """Make the fake webhook accept one message a second, as Slack does, and answer 429 Retry-After: 1 otherwise;
    the status of each request, in the order of slack.requests."""
    last = [float("-inf")]
    codes: list[int] = []

    def answer(path):
        now = time.monotonic()
        code = 200 if now - last[0] >= 1.0 else 429
        codes.append(code)
        if code == 200:
            last[0] = now
            return 200, b"ok", {}
        return 429, b"rate_limited", {"Retry-After": "1"}

    slack.default = answer  # called under the server's lock, right after the request is recorded
    return codes


def test_a_slow_answer_after_accepting_is_unknown_and_never_sent_again(slack_store, settings, codec, slack):
    slack.script(WEBHOOK, (200, b"ok", {}, 7.0))  # takes the message, answers after the 5 s per-try limit
    n = webhook_notifier(slack_store, settings, codec, slack)
    (result,) = n.handle([record(codec, finished_job(), running_job())])
    assert (result["outcome"], result["tries"]) == ("unknown", 1)
    assert "timed out" in result["detail"]
    assert slack_store.get_outbox(KEY).state is OutboxState.UNKNOWN
    # Neither a re-delivered batch nor the reconcile drain sends it again.
    assert n.handle([record(codec, finished_job(), running_job())])[0]["outcome"] == "duplicate"
    assert n.drain(2.0) == {"sent": 0, "unknown": 0, "gave_up": 0, "retry_later": 0, "pending": 0, "sending": 0}
    assert len(slack.bodies(WEBHOOK)) == 1


def test_a_drainer_that_died_mid_request_leaves_an_unknown_record(slack_store, settings, codec, slack):
    now = utcnow()
    slack_store.add_outbox(OutboxRecord(KEY, {"text": "x"}, "webhook", OutboxState.PENDING, now, now))
    slack_store.claim_outbox(KEY, now, now - timedelta(seconds=1))  # its lease is over: the drainer is gone
    counts = webhook_notifier(slack_store, settings, codec, slack).drain(1.0)
    assert (counts["unknown"], counts["sending"]) == (1, 0)
    assert slack_store.get_outbox(KEY).state is OutboxState.UNKNOWN
    assert slack.bodies(WEBHOOK) == []


def test_a_429_is_delivered_once_after_its_retry_after_by_a_later_drain(slack_store, tmp_path, codec, slack):
    short = make_settings(tmp_path, JOBPLANE_SLACK_SEND_BUDGET_SECONDS="1")
    slack.script(WEBHOOK, (429, b"rate_limited", {"Retry-After": "1"}))
    n = webhook_notifier(slack_store, short, codec, slack)
    start = time.monotonic()
    (result,) = n.handle([record(codec, finished_job(), running_job())])
    assert time.monotonic() - start < 1.5
    assert result["outcome"] == "pending"  # the wait did not fit in the budget: left for a later drain
    kept = slack_store.get_outbox(KEY)
    assert kept.next_try_at - utcnow() > timedelta(seconds=0.5)  # Retry-After honoured
    assert n.drain(5.0)["sent"] == 1
    sent = slack.requests
    assert len(sent) == 2 and sent[1]["body"] == sent[0]["body"]
    assert slack_store.get_outbox(KEY).state is OutboxState.SENT
    assert n.drain(1.0)["sent"] == 0


def test_a_429_is_waited_out_in_the_same_invocation_when_it_fits(slack_store, settings, codec, slack):
    slack.script(WEBHOOK, (429, b"rate_limited", {"Retry-After": "1"}))
    start = time.monotonic()
    (result,) = webhook_notifier(slack_store, settings, codec, slack).handle(
        [record(codec, finished_job(), running_job())]
    )
    assert (result["outcome"], result["tries"]) == ("sent", 2)
    assert time.monotonic() - start >= 1.0
    assert len(slack.bodies(WEBHOOK)) == 2


@pytest.mark.timeout(300)  # 100 messages at Slack's rate take 100 s of sleeping, whatever the design
def test_a_batch_of_100_at_one_message_a_second_delivers_all_100_once(slack_store, settings, codec, slack, capsys):
    codes = one_per_second(slack)
    jobs = [running_job(job_id=f"{i:032x}") for i in range(100)]
    batch = [record(codec, finished_job(job_id=j.job_id), j, seq=i + 1) for i, j in enumerate(jobs)]
    n = webhook_notifier(slack_store, settings, codec, slack)
    results = n.handle(batch, remaining_seconds=60.0)  # a 5 s budget: a few now, the rest queued
    assert sum(r["outcome"] == "sent" for r in results) <= 8
    assert {r["outcome"] for r in results} <= {"sent", "pending"}
    invocations = 1
    while slack_store.count_open_outbox(OutboxState.PENDING) and invocations < 20:
        counts = webhook_notifier(slack_store, settings, codec, slack).drain(20.0)  # reconcile, once a minute
        assert counts["unknown"] == counts["gave_up"] == 0
        invocations += 1
    accepted = [r["body"]["text"] for r, code in zip(slack.requests, codes, strict=True) if code == 200]
    assert len(accepted) == 100
    assert len(set(accepted)) == 100  # no duplicate
    assert all(slack_store.get_outbox(f"{j.job_id}#SUCCEEDED#1").state is OutboxState.SENT for j in jobs)
    with capsys.disabled():
        print(f"\n100 messages at 1/s: {len(accepted)} delivered once each, {invocations} invocations")


def test_two_concurrent_drainers_never_send_the_same_record(store, settings, codec, slack):
    now = utcnow()
    for i in range(30):
        store.add_outbox(
            OutboxRecord(f"{i:032x}#RUNNING#1", {"text": str(i)}, "webhook", OutboxState.PENDING, now, now)
        )
    drainers = [webhook_notifier(store, settings, codec, slack, pacer=Pacer(time.monotonic, interval=0)) for _ in "ab"]
    barrier = threading.Barrier(2)
    counts = []

    def run(n):
        barrier.wait()
        counts.append(n.drain(10.0))

    threads = [threading.Thread(target=run, args=(n,)) for n in drainers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    texts = [b["text"] for b in slack.bodies(WEBHOOK)]
    assert sorted(texts, key=int) == [str(i) for i in range(30)]  # each once, none twice
    assert sum(c["sent"] for c in counts) == 30
    assert store.count_open_outbox(OutboxState.PENDING) == 0


def test_reconcile_drains_the_outbox_and_reports_its_counts(monkeypatch, slack_store, settings, slack):
    from chalicelib import deps

    now = utcnow()
    slack_store.add_outbox(OutboxRecord(KEY, {"text": "late"}, "webhook", OutboxState.PENDING, now, now))
    monkeypatch.setattr(deps, "get_slack_store", lambda: slack_store)
    monkeypatch.setattr(deps, "get_settings", lambda: settings)
    monkeypatch.setattr(deps, "get_slack_webhook_url", lambda: f"{slack.url}{WEBHOOK}")
    monkeypatch.setattr(deps, "get_slack_bot_token", lambda: None)
    assert drain_outbox() == [
        {"outbox": {"sent": 1, "unknown": 0, "gave_up": 0, "retry_later": 0, "pending": 0, "sending": 0}}
    ]
    assert slack.bodies(WEBHOOK) == [{"text": "late"}]
    assert drain_outbox() == []  # nothing left: nothing to report


def test_a_message_undelivered_for_24_hours_is_given_up(slack_store, settings, codec, slack):
    old = utcnow() - timedelta(hours=24, minutes=1)
    slack_store.add_outbox(OutboxRecord(KEY, {"text": "x"}, "webhook", OutboxState.PENDING, old, old))
    assert webhook_notifier(slack_store, settings, codec, slack).drain(1.0)["gave_up"] == 1
    assert slack_store.get_outbox(KEY).state is OutboxState.GAVE_UP
    assert "not delivered within 24 hours" in slack_store.get_outbox(KEY).detail
    assert slack.bodies(WEBHOOK) == []


def test_the_pacer_allows_a_burst_then_one_a_second_counted_from_each_answer():
    now = [100.0]
    pacer = Pacer(lambda: now[0], interval=1.0, burst=3)
    for _ in range(3):
        assert pacer.ready_at("webhook") == now[0]
        pacer.spent("webhook")
    assert pacer.ready_at("webhook") == 101.0
    now[0] = 101.2  # sent at 101.0, answered 0.2 s later
    pacer.spent("webhook")
    assert pacer.ready_at("webhook") == pytest.approx(102.2)  # a whole second after the answer
    pacer.block("webhook", 5.0)
    assert pacer.ready_at("webhook") == pytest.approx(106.2)
    assert pacer.ready_at("chat") == now[0]  # per destination
