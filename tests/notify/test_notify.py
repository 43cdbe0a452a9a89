"""`notify` on DynamoDB stream records: one exact message per transition, at most once, whatever Slack does."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest

from chalicelib.jobs.model import JobStatus
from chalicelib.notify.messages import Kind, build_message
from chalicelib.notify.slack import Notifier, NotifyOutcome
from chalicelib.store.dynamo import DynamoJobStore
from tests.factories import JOB_ID, WEBHOOK, failed_job, finished_job, make_settings, record, running_job


@pytest.fixture
def settings(tmp_path, slack):
    return make_settings(tmp_path, JOBPLANE_SLACK_API_URL=f"{slack.url}/api/", JOBPLANE_SLACK_SEND_BUDGET_SECONDS="1")


@pytest.fixture
def codec(settings):
    """A DynamoDB store used only to turn jobs into stream images and back (no I/O)."""
    return DynamoJobStore(settings)


def lifecycle(codec):
    """Submit, launch, run, succeed: four records, two of them news."""
    queued = running_job(status=JobStatus.QUEUED, native_id=None, started_at=None)
    launching = running_job(status=JobStatus.LAUNCHING, started_at=None)
    running = running_job()
    done = finished_job()
    return [
        record(codec, queued, seq=1),
        record(codec, launching, queued, seq=2),
        record(codec, running, launching, seq=3),
        record(codec, done, running, seq=4),
    ]


def notifier(slack_store, settings, codec, slack, bot_token=None, webhook=WEBHOOK):
    url = f"{slack.url}{webhook}" if webhook else None
    return Notifier(slack_store, settings, codec.job_from_image, url, bot_token)


def test_can_post_each_transition_once_with_the_exact_json(slack_store, settings, codec, slack):
    results = notifier(slack_store, settings, codec, slack).handle(lifecycle(codec))
    assert [(r["status"], r["outcome"]) for r in results] == [("RUNNING", "sent"), ("SUCCEEDED", "sent")]
    assert {type(r["outcome"]) for r in results} == {str}  # the handler's JSON, not enum members
    assert [r["outcome"] for r in results] == [NotifyOutcome.SENT.value] * 2
    started, succeeded = slack.bodies(WEBHOOK)
    assert succeeded == {
        "text": f"resnet-cifar succeeded · job {JOB_ID} · owner alice · 1h 0m 5s · est. $1.23",
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": ":white_check_mark: resnet-cifar succeeded", "emoji": True},
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Job*\nresnet-cifar (`{JOB_ID}`)"},
                    {"type": "mrkdwn", "text": "*Owner*\nalice"},
                    {"type": "mrkdwn", "text": "*Backend*\nsagemaker, 1x A10G (spot)"},
                    {"type": "mrkdwn", "text": "*Duration*\n1h 0m 5s"},
                    {"type": "mrkdwn", "text": "*Estimated cost*\n$1.23"},
                ],
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": "<https://us-east-1.console.aws.amazon.com/sagemaker/home?region=us-east-1"
                        f"#/jobs/jp-{JOB_ID}|Open in the SageMaker console>",
                    }
                ],
            },
        ],
    }
    assert started == build_message(running_job(), Kind.STARTED, "us-east-1")


def test_a_redelivered_batch_posts_nothing_twice(slack_store, settings, codec, slack):
    batch = lifecycle(codec)
    notifier(slack_store, settings, codec, slack).handle(batch)
    again = notifier(slack_store, settings, codec, slack).handle(batch)
    assert [r["outcome"] for r in again] == ["duplicate", "duplicate"]
    assert len(slack.bodies(WEBHOOK)) == 2


def test_a_retry_and_its_second_start_are_separate_messages(slack_store, settings, codec, slack):
    running1 = running_job()
    queued2 = running_job(status=JobStatus.QUEUED, attempt=2, native_id=None, started_at=None)
    running2 = running_job(attempt=2, native_id=f"jp-{JOB_ID}-a2")
    batch = [record(codec, queued2, running1, seq=5), record(codec, running2, queued2, seq=6)]
    results = notifier(slack_store, settings, codec, slack).handle(batch)
    outcomes = [(r["kind"], r["attempt"], r["outcome"]) for r in results]
    assert outcomes == [("retrying", 2, "sent"), ("started", 2, "sent")]


def test_with_a_bot_token_posts_to_the_jobs_channel(slack_store, settings, codec, slack):
    job = failed_job(spec={"notify": {"slack_channel": "#ml-jobs"}})
    batch = [record(codec, job, running_job(spec={"notify": {"slack_channel": "#ml-jobs"}}))]
    results = notifier(slack_store, settings, codec, slack, bot_token="xoxb-test-token").handle(batch)
    assert results[0]["outcome"] == "sent"
    assert slack.bodies(WEBHOOK) == []
    (request,) = [r for r in slack.requests if r["path"] == "/api/chat.postMessage"]
    assert request["headers"]["Authorization"] == "Bearer xoxb-test-token"
    assert request["body"] == {"channel": "#ml-jobs", **build_message(job, Kind.FAILED, "us-east-1")}


def test_with_a_bot_token_a_job_without_channel_goes_to_the_webhook(slack_store, settings, codec, slack):
    batch = [record(codec, finished_job(), running_job())]
    notifier(slack_store, settings, codec, slack, bot_token="xoxb-test-token").handle(batch)
    assert slack.bodies(WEBHOOK) == [build_message(finished_job(), Kind.SUCCEEDED, "us-east-1")]


def test_with_no_destination_nothing_is_claimed(slack_store, settings, codec, slack):
    batch = [record(codec, finished_job(), running_job())]
    results = notifier(slack_store, settings, codec, slack, webhook=None).handle(batch)
    assert results[0]["outcome"] == "no_destination"
    assert slack_store.get_outbox(f"{JOB_ID}#SUCCEEDED#1") is None


def test_slack_answering_500_may_have_posted_so_it_is_not_retried(slack_store, settings, codec, slack, caplog):
    # A webhook's 500 (rollup_error) does not say the message was not posted: sending it again could post twice.
    slack.script(WEBHOOK, *[(500, b"internal_error", {})] * 10)
    caplog.set_level(logging.WARNING, "jobplane.notify")
    start = time.monotonic()
    results = notifier(slack_store, settings, codec, slack).handle([record(codec, finished_job(), running_job())])
    assert time.monotonic() - start < 1.5
    assert (results[0]["outcome"], results[0]["tries"]) == ("unknown", 1)
    assert results[0]["detail"] == "HTTP 500: internal_error"
    assert len(slack.bodies(WEBHOOK)) == 1
    assert slack_store.get_outbox(f"{JOB_ID}#SUCCEEDED#1").state.value == "UNKNOWN"
    assert f"Slack message {JOB_ID}#SUCCEEDED#1 may not have reached Slack (not sent again) to webhook" in caplog.text


def test_slack_refusing_connections_never_raises_and_keeps_the_messages(slack_store, settings, codec, caplog):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    n = Notifier(slack_store, settings, codec.job_from_image, f"http://127.0.0.1:{port}{WEBHOOK}")
    start = time.monotonic()
    results = n.handle(lifecycle(codec))
    assert time.monotonic() - start < 1.5
    assert [r["outcome"] for r in results] == ["pending", "pending"]  # refused: provably not posted
    assert "Connection refused" in results[0]["detail"]
    kept = slack_store.get_outbox(f"{JOB_ID}#RUNNING#1")
    assert (kept.state.value, kept.tries) == ("PENDING", 1)
    assert kept.next_try_at > kept.created_at  # backed off, for a later drain


def test_a_slow_slack_is_abandoned_within_the_budget(slack_store, settings, codec, slack):
    slack.script(WEBHOOK, (200, b"ok", {}, 3.0))
    start = time.monotonic()
    results = notifier(slack_store, settings, codec, slack).handle([record(codec, finished_job(), running_job())])
    assert time.monotonic() - start < 1.6
    assert results[0]["outcome"] == "unknown"
    assert "timed out" in results[0]["detail"]


def test_a_rate_limit_is_waited_out_when_there_is_time(slack_store, settings, codec, slack):
    slack.script(WEBHOOK, (429, b"rate_limited", {"Retry-After": "0"}))
    results = notifier(slack_store, settings, codec, slack).handle([record(codec, finished_job(), running_job())])
    assert (results[0]["outcome"], results[0]["tries"]) == ("sent", 2)
    assert slack.bodies(WEBHOOK) == [build_message(finished_job(), Kind.SUCCEEDED, "us-east-1")] * 2


def test_a_permanent_error_is_not_retried(slack_store, settings, codec, slack):
    slack.script(WEBHOOK, (404, b"no_service", {}))
    results = notifier(slack_store, settings, codec, slack).handle([record(codec, finished_job(), running_job())])
    assert (results[0]["outcome"], results[0]["tries"], results[0]["detail"]) == ("gave_up", 1, "HTTP 404: no_service")
    assert len(slack.bodies(WEBHOOK)) == 1


def test_a_channel_the_bot_cannot_post_to_is_not_retried(slack_store, settings, codec, slack):
    slack.script("/api/chat.postMessage", (200, {"ok": False, "error": "channel_not_found"}, {}))
    job = finished_job(spec={"notify": {"slack_channel": "#nowhere"}})
    bot = notifier(slack_store, settings, codec, slack, bot_token="xoxb-t")
    results = bot.handle([record(codec, job, running_job())])
    assert (results[0]["outcome"], results[0]["tries"]) == ("gave_up", 1)
    assert results[0]["detail"] == "HTTP 200: channel_not_found"


def test_unreadable_and_uninteresting_records_do_not_stop_the_batch(slack_store, settings, codec, slack):
    broken = record(codec, finished_job(), running_job(), seq=7)
    broken["dynamodb"]["NewImage"]["attempt"] = {"S": "not a number"}
    removed = record(codec, finished_job(), running_job(), seq=8, event_name="REMOVE")
    good = record(codec, finished_job(), running_job(), seq=9)
    results = notifier(slack_store, settings, codec, slack).handle([broken, removed, good])
    assert [r["outcome"] for r in results] == ["unreadable", "sent"]


def test_the_records_are_valid_json_like_lambda_delivers_them(codec):
    assert json.loads(json.dumps({"Records": lifecycle(codec)}))["Records"][3]["dynamodb"]["NewImage"]["status"] == {
        "S": "SUCCEEDED"
    }


def test_a_failure_message_carries_the_last_lines_the_tail_gives(slack_store, settings, codec, slack):
    seen = []

    def tail(job):
        seen.append(job.job_id)
        return ["loading data", "RuntimeError: CUDA out of memory"]

    n = Notifier(slack_store, settings, codec.job_from_image, f"{slack.url}{WEBHOOK}", tail=tail)
    results = n.handle(
        [record(codec, failed_job(), running_job(), seq=5), record(codec, finished_job(), running_job(), seq=6)]
    )
    assert [r["outcome"] for r in results] == ["sent", "sent"]
    assert seen == [JOB_ID]  # asked for the failure only
    failure, success = slack.bodies(WEBHOOK)
    assert failure["blocks"][-2]["text"]["text"] == (
        "*Last lines of the output*\n```\nloading data\nRuntimeError: CUDA out of memory\n```"
    )
    assert "Last lines" not in json.dumps(success)


def test_a_tail_that_fails_leaves_the_message_without_it_and_the_batch_whole(slack_store, settings, codec, slack):
    def tail(job):
        raise OSError("CloudWatch Logs unreachable")

    n = Notifier(slack_store, settings, codec.job_from_image, f"{slack.url}{WEBHOOK}", tail=tail)
    results = n.handle([record(codec, failed_job(), running_job(), seq=7)])
    assert [r["outcome"] for r in results] == ["sent"]
    [failure] = slack.bodies(WEBHOOK)
    assert failure == build_message(failed_job(), Kind.FAILED, "us-east-1")


def test_the_final_message_shows_the_metrics_on_the_record(slack_store, settings, codec, slack):
    done = finished_job(metrics={"val_accuracy": 0.87})
    notifier(slack_store, settings, codec, slack).handle([record(codec, done, running_job(), seq=8)])
    [message] = slack.bodies(WEBHOOK)
    assert {"type": "section", "text": {"type": "mrkdwn", "text": "*Metrics*\n`val_accuracy` 0.87"}} in message[
        "blocks"
    ]
