"""Which transitions get a message, and exactly what each message says (pure)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.spec_types import JobSpec
from chalicelib.notify.console import console_url
from chalicelib.notify.messages import Kind, build_message, classify, dedup_key, machine
from tests.factories import JOB_ID, T0, failed_job, finished_job, running_job

SM_LINK = (
    f"<https://us-east-1.console.aws.amazon.com/sagemaker/home?region=us-east-1#/jobs/jp-{JOB_ID}"
    "|Open in the SageMaker console>"
)


def fields(*texts):
    return {"type": "section", "fields": [{"type": "mrkdwn", "text": t} for t in texts]}


def header(text):
    return {"type": "header", "text": {"type": "plain_text", "text": text, "emoji": True}}


def link(text=SM_LINK):
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


@pytest.mark.parametrize(
    ("job", "old", "kind"),
    [
        (running_job(), JobStatus.LAUNCHING, Kind.STARTED),
        (finished_job(), JobStatus.RUNNING, Kind.SUCCEEDED),
        (failed_job(), JobStatus.RUNNING, Kind.FAILED),
        (running_job(status=JobStatus.CANCELLED), JobStatus.CANCELLING, Kind.CANCELLED),
        (running_job(status=JobStatus.QUEUED, attempt=2), JobStatus.RUNNING, Kind.RETRYING),
        (running_job(status=JobStatus.QUEUED), None, None),  # a fresh submission
        (running_job(status=JobStatus.LAUNCHING), JobStatus.QUEUED, None),
        (running_job(status=JobStatus.CANCELLING), JobStatus.RUNNING, None),
        (running_job(), JobStatus.RUNNING, None),  # no status change
        (
            failed_job(status_reason="stopped by jobplane reaper: no heartbeat for 30 min"),
            JobStatus.RUNNING,
            Kind.AUTO_STOPPED,
        ),
        (failed_job(backend="ec2", failure_kind=FailureKind.TIMEOUT), JobStatus.RUNNING, Kind.AUTO_STOPPED),
        (failed_job(failure_kind=FailureKind.TIMEOUT), JobStatus.RUNNING, Kind.FAILED),  # SageMaker stops itself
    ],
)
def test_can_tell_which_transitions_deserve_a_message(job, old, kind):
    assert classify(job, old) is kind


def test_the_dedup_key_is_job_status_and_attempt():
    assert dedup_key(running_job(attempt=2)) == f"{JOB_ID}#RUNNING#2"


def test_a_success_message_says_who_what_where_how_long_and_how_much():
    assert build_message(finished_job(), Kind.SUCCEEDED, "us-east-1") == {
        "text": f"resnet-cifar succeeded · job {JOB_ID} · owner alice · 1h 0m 5s · est. $1.23",
        "blocks": [
            header(":white_check_mark: resnet-cifar succeeded"),
            fields(
                f"*Job*\nresnet-cifar (`{JOB_ID}`)",
                "*Owner*\nalice",
                "*Backend*\nsagemaker, 1x A10G (spot)",
                "*Duration*\n1h 0m 5s",
                "*Estimated cost*\n$1.23",
            ),
            link(),
        ],
    }


def test_a_failure_message_carries_the_reason_escaped_for_slack():
    job = failed_job(failure_reason="exit 1: x < y & <!channel>", cost_estimate_usd=0.004)
    assert build_message(job, Kind.FAILED, "us-east-1") == {
        "text": f"resnet-cifar failed (user_error) · job {JOB_ID} · owner alice · 1h 0m 5s · est. < $0.01",
        "blocks": [
            header(":x: resnet-cifar failed (user_error)"),
            fields(
                f"*Job*\nresnet-cifar (`{JOB_ID}`)",
                "*Owner*\nalice",
                "*Backend*\nsagemaker, 1x A10G (spot)",
                "*Duration*\n1h 0m 5s",
                "*Estimated cost*\n< $0.01",
            ),
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*Reason* (user_error)\nexit 1: x &lt; y &amp; &lt;!channel&gt;"},
            },
            link(),
        ],
    }


def test_a_retry_message_names_the_attempt_and_why():
    reason = "attempt 1 interrupted: spot reclaimed; retrying as attempt 2 of 3"
    job = running_job(status=JobStatus.QUEUED, attempt=2, native_id=None, started_at=None, status_reason=reason)
    assert build_message(job, Kind.RETRYING, "us-east-1") == {
        "text": f"resnet-cifar retrying: attempt 2 of 3 · job {JOB_ID} · owner alice",
        "blocks": [
            header(":repeat: resnet-cifar retrying: attempt 2 of 3"),
            fields(
                f"*Job*\nresnet-cifar (`{JOB_ID}`)",
                "*Owner*\nalice",
                "*Backend*\nsagemaker, 1x A10G (spot)",
                "*Duration*\n-",
                "*Estimated cost*\n-",
            ),
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Reason*\n{reason}"}},
        ],
    }


def test_a_local_job_started_message_has_no_console_link():
    job = running_job(
        backend="local",
        native_id=f"jp-{JOB_ID}",
        spec={"backend": "local", "resources": {"gpus": 0, "cpus": 1, "memory_gb": 1, "spot": False}},
    )
    assert build_message(job, Kind.STARTED, "us-east-1") == {
        "text": f"resnet-cifar started · job {JOB_ID} · owner alice",
        "blocks": [
            header(":arrow_forward: resnet-cifar started"),
            fields(
                f"*Job*\nresnet-cifar (`{JOB_ID}`)",
                "*Owner*\nalice",
                "*Backend*\nlocal, 1 vCPU, 1 GB",
                "*Duration*\n-",
                "*Estimated cost*\n-",
            ),
        ],
    }


def test_an_auto_stop_message_says_so():
    reason = "stopped by jobplane reaper: GPU utilisation 0.0% < 5% for 30 min"
    job = running_job(
        status=JobStatus.FAILED,
        backend="ec2",
        native_id="i-0abc123def4567890",
        finished_at=T0 + timedelta(minutes=32),
        spec={"resources": {"instance_type": "g5.xlarge", "spot": False}},
        status_reason=reason,
        failure_kind=FailureKind.USER_ERROR,
        failure_reason=reason,
    )
    url = "https://us-east-1.console.aws.amazon.com/ec2/home?region=us-east-1#InstanceDetails:instanceId=i-0abc123def4567890"
    assert build_message(job, Kind.AUTO_STOPPED, "us-east-1") == {
        "text": f"resnet-cifar: VM auto-stopped · job {JOB_ID} · owner alice · 30m 0s",
        "blocks": [
            header(":octagonal_sign: resnet-cifar: VM auto-stopped"),
            fields(
                f"*Job*\nresnet-cifar (`{JOB_ID}`)",
                "*Owner*\nalice",
                "*Backend*\nec2, g5.xlarge",
                "*Duration*\n30m 0s",
                "*Estimated cost*\n-",
            ),
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*Reason* (user_error)\n"
                    "stopped by jobplane reaper: GPU utilisation 0.0% &lt; 5% for 30 min",
                },
            },
            link(f"<{url}|Open in the EC2 console>"),
        ],
    }


@pytest.mark.parametrize(
    ("backend", "native_id", "url"),
    [
        (
            "sagemaker",
            "arn:aws:sagemaker:eu-west-1:123456789012:training-job/jp-abc",
            "https://eu-west-1.console.aws.amazon.com/sagemaker/home?region=eu-west-1#/jobs/jp-abc",
        ),
        (
            "aws-batch",
            "4c7d2a3e-1b2c-4d5e-8f90-0123456789ab",
            "https://us-east-1.console.aws.amazon.com/batch/home?region=us-east-1#jobs/detail/4c7d2a3e-1b2c-4d5e-8f90-0123456789ab",
        ),
        (
            "ecs",
            "arn:aws:ecs:us-west-2:123456789012:task/gpu-cluster/0f9e8d7c6b5a",
            "https://us-west-2.console.aws.amazon.com/ecs/v2/clusters/gpu-cluster/tasks/0f9e8d7c6b5a/configuration?region=us-west-2",
        ),
        ("ecs", "0f9e8d7c6b5a", None),  # a bare task id does not say which cluster
        (
            "vertex",
            "projects/123456/locations/us-central1/customJobs/987654321",
            "https://console.cloud.google.com/ai/platform/locations/us-central1/training/987654321?project=123456",
        ),
        (
            "gce",
            "projects/ml-lab/zones/us-central1-a/instances/jp-abc",
            "https://console.cloud.google.com/compute/instancesDetail/zones/us-central1-a/instances/jp-abc?project=ml-lab",
        ),
        ("gce", "jp-abc", None),
        ("kubernetes", "jp-abc", None),
        ("local", "jp-abc", None),
        ("sagemaker", None, None),
    ],
)
def test_can_link_to_each_providers_console(backend, native_id, url):
    assert console_url(running_job(backend=backend, native_id=native_id), "us-east-1") == url


def test_a_bare_gce_instance_name_is_found_in_the_deployments_project_and_zone():
    job = running_job(backend="gce", native_id="jp-abc")
    assert console_url(job, "us-east-1", "ml-lab", "europe-west4-a") == (
        "https://console.cloud.google.com/compute/instancesDetail/zones/europe-west4-a/instances/jp-abc?project=ml-lab"
    )


@pytest.mark.parametrize(
    ("resources", "text"),
    [
        ({"tpu": "v5litepod-8"}, "TPU v5litepod-8"),
        ({"gpus": 8, "gpu_type": "H100"}, "8x H100"),
        ({"instance_type": "ml.g5.xlarge", "gpus": 1, "spot": True}, "ml.g5.xlarge (spot)"),
        ({"cpus": 0.5, "memory_gb": 2.5}, "0.5 vCPU, 2.5 GB"),
    ],
)
def test_can_describe_the_machine(resources, text):
    assert machine(JobSpec.from_dict({"name": "n", "command": ["true"], "resources": resources})) == text


# --- what the job reported: metrics on final messages, last lines on failures ----------------
def _section(message, title):
    found = [b["text"]["text"] for b in message["blocks"] if b.get("text", {}).get("text", "").startswith(title)]
    return found[0] if found else None


def test_a_final_message_shows_the_latest_metrics_and_a_started_one_does_not():
    job = finished_job(metrics={"val_accuracy": 0.873123456, "epoch": 15.0, "loss": 1.2e-05})
    assert _section(build_message(job, Kind.SUCCEEDED, "us-east-1"), "*Metrics*") == (
        "*Metrics*\n`epoch` 15 · `loss` 1.2e-05 · `val_accuracy` 0.873123"
    )
    for kind in (Kind.FAILED, Kind.CANCELLED, Kind.AUTO_STOPPED):
        assert _section(build_message(job, kind, "us-east-1"), "*Metrics*") is not None
    assert _section(build_message(running_job(metrics={"loss": 1.0}), Kind.STARTED, "us-east-1"), "*Metrics*") is None
    assert _section(build_message(finished_job(), Kind.SUCCEEDED, "us-east-1"), "*Metrics*") is None


def test_a_failure_message_carries_the_last_lines_escaped_in_a_code_block_that_cannot_be_closed():
    lines = ["epoch 3", "x < y & <!channel>", "```", "*bold* ``` `code`", "Traceback: boom`"]
    text = _section(build_message(failed_job(), Kind.FAILED, "us-east-1", last_lines=lines), "*Last lines")
    title, body = text.split("\n", 1)
    assert title == "*Last lines of the output*"
    assert body.startswith("```\n") and body.endswith("\n```")
    inner = body[4:-4]
    assert "```" not in inner and "``" not in inner
    assert inner.splitlines()[1] == "x &lt; y &amp; &lt;!channel&gt;"
    assert inner.replace("\u200b", "").splitlines() == [
        "epoch 3",
        "x &lt; y &amp; &lt;!channel&gt;",
        "```",
        "*bold* ``` `code`",
        "Traceback: boom`",
    ]
    # Only failures carry them.
    assert _section(build_message(finished_job(), Kind.SUCCEEDED, "us-east-1", last_lines=lines), "*Last") is None
    assert _section(build_message(failed_job(), Kind.FAILED, "us-east-1", last_lines=[]), "*Last") is None


def test_the_last_lines_keep_their_end_within_slacks_section_limit():
    lines = [f"line {i} " + "<" * 200 for i in range(40)]  # escaping makes each about 800 characters
    text = _section(build_message(failed_job(), Kind.FAILED, "us-east-1", last_lines=lines), "*Last lines")
    assert len(text) <= 3000
    assert text.splitlines()[-2].startswith("line 39 ")  # the end is kept, the start dropped
    assert "line 0 " not in text
