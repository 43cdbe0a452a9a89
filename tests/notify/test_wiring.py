"""The pieces around Slack: secrets (Secrets Manager, SSM), the real DynamoDB stream into `notify`,
the Lambda self-invocation, the user mapping, templates and settings."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib import deps
from chalicelib.auth import Principal
from chalicelib.errors import ConfigError, NotFoundError, ValidationError
from chalicelib.jobs.model import EventSource, JobEvent, JobStatus
from chalicelib.jobs.spec import parse_spec
from chalicelib.notify.invoke import LambdaInvoker, ThreadInvoker, invoker_for
from chalicelib.notify.messages import Kind, build_message
from chalicelib.notify.users import map_slack_user, principal_for, unmap_slack_user
from chalicelib.templates import render, template_names
from tests.factories import InstantBackend, make_settings, make_stores, use_stores

WEBHOOK = "/services/T000/B000/wiring"


def _aws(service, endpoint):
    return boto3.client(service, region_name="us-east-1", endpoint_url=endpoint)


def test_secrets_come_from_secrets_manager_or_ssm_and_are_read_once(tmp_path, moto_endpoint):
    name = f"jobplane/test/{uuid.uuid4().hex}/webhook"
    param = f"/jobplane/test/{uuid.uuid4().hex}/bot-token"
    _aws("secretsmanager", moto_endpoint).create_secret(Name=name, SecretString="https://hooks.example/1\n")
    _aws("ssm", moto_endpoint).put_parameter(Name=param, Value="xoxb-from-ssm", Type="SecureString")
    settings = make_settings(
        tmp_path,
        moto_endpoint,
        JOBPLANE_SLACK_WEBHOOK_SECRET=name,
        JOBPLANE_SLACK_BOT_TOKEN_SECRET=f"ssm:{param}",
    )
    deps.reset()
    deps.override(settings=settings)
    try:
        assert deps.get_slack_webhook_url() == "https://hooks.example/1"
        assert deps.get_slack_bot_token() == "xoxb-from-ssm"
        assert deps.get_slack_signing_secret() is None  # not configured
        _aws("secretsmanager", moto_endpoint).put_secret_value(SecretId=name, SecretString="https://hooks.example/2")
        assert deps.get_slack_webhook_url() == "https://hooks.example/1"  # once per container
    finally:
        deps.reset()


def _stream_records(endpoint, table):
    """Every record of the table's stream, as Lambda's event source would hand them over."""
    streams = _aws("dynamodbstreams", endpoint)
    arn = streams.list_streams(TableName=table)["Streams"][0]["StreamArn"]
    records = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        page = streams.get_records(ShardIterator=iterator, Limit=100)
        for record in page["Records"]:
            record["eventSourceARN"] = arn
            created = record["dynamodb"].get("ApproximateCreationDateTime")
            if isinstance(created, datetime):
                record["dynamodb"]["ApproximateCreationDateTime"] = created.timestamp()
            records.append(record)
    return json.loads(json.dumps(records))


def test_the_notify_function_posts_from_the_real_stream_once(tmp_path, moto_endpoint, slack):
    from chalice.test import Client

    from chalicelib.jobs.service import JobService

    name = f"jobplane/test/{uuid.uuid4().hex}/webhook"
    _aws("secretsmanager", moto_endpoint).create_secret(Name=name, SecretString=f"{slack.url}{WEBHOOK}")
    settings = make_settings(tmp_path, moto_endpoint, JOBPLANE_SLACK_WEBHOOK_SECRET=name)
    stores = make_stores(settings)
    store = stores["jobs"]
    backend = InstantBackend(settings)
    service = JobService(store, settings, backend_factory=lambda *_: backend)
    job, _ = service.submit(Principal("alice"), parse_spec({"name": "train", "backend": "local", "command": ["true"]}))
    service.apply_event(JobEvent(job.job_id, JobStatus.RUNNING, EventSource.BACKEND, attempt=1))
    done = service.apply_event(JobEvent(job.job_id, JobStatus.SUCCEEDED, EventSource.BACKEND, attempt=1))
    event = {"Records": _stream_records(moto_endpoint, settings.jobs_table)}
    assert [r["eventName"] for r in event["Records"]] == ["INSERT", "MODIFY", "MODIFY", "MODIFY"]

    use_stores(settings, stores, service=service)
    import app as app_module

    try:
        with Client(app_module.app) as client:
            first = client.lambda_.invoke("notify", event).payload
            again = client.lambda_.invoke("notify", event).payload
    finally:
        deps.reset()
    assert [(r["kind"], r["outcome"]) for r in first] == [("started", "sent"), ("succeeded", "sent")]
    assert [(r["kind"], r["outcome"]) for r in again] == [("started", "duplicate"), ("succeeded", "duplicate")]
    running = done.with_changes(
        status=JobStatus.RUNNING, finished_at=None, status_reason="running (reported by backend)"
    )
    assert slack.bodies(WEBHOOK) == [
        build_message(running, Kind.STARTED, "us-east-1"),
        build_message(done, Kind.SUCCEEDED, "us-east-1"),
    ]


def test_slow_commands_are_handed_to_lambda_as_an_event_invocation(tmp_path):
    client = boto3.client("lambda", region_name="us-east-1")
    payload = {"words": ["cancel", "abc"], "user": "alice", "response_url": "https://hooks.slack.com/commands/1"}
    with Stubber(client) as stub:
        stub.add_response(
            "invoke",
            {"StatusCode": 202},
            {
                "FunctionName": "jobplane-dev-slack_worker",
                "InvocationType": "Event",
                "Payload": json.dumps(payload).encode(),
            },
        )
        LambdaInvoker("jobplane-dev-slack_worker", client).invoke(payload)
        stub.assert_no_pending_responses()


def test_the_invoker_follows_the_settings(tmp_path):
    local = invoker_for(make_settings(tmp_path, JOBPLANE_STAGE="local"), deps.run_slack_worker)
    assert isinstance(local, ThreadInvoker) and local.target is deps.run_slack_worker
    deployed = invoker_for(make_settings(tmp_path, JOBPLANE_STAGE="prod"), deps.run_slack_worker)
    assert isinstance(deployed, LambdaInvoker)
    assert deployed.function_name == "jobplane-prod-slack_worker"


# --- the user mapping (what `jobplane slack map` calls) -------------------------------------------
def test_can_map_a_slack_user_and_act_as_a_non_admin(slack_store):
    record = map_slack_user(slack_store, "U2CERLKJA", "alice")
    assert (record.slack_user_id, record.user) == ("U2CERLKJA", "alice")
    assert principal_for(slack_store, "U2CERLKJA") == Principal("alice", admin=False)
    assert unmap_slack_user(slack_store, "U2CERLKJA") is True
    assert principal_for(slack_store, "U2CERLKJA") is None


@pytest.mark.parametrize(("slack_user", "user"), [("u2cerlkja", "alice"), ("T1DC2JH3J", "alice"), ("U2C", "Alice")])
def test_a_mapping_needs_a_member_id_and_a_valid_user(slack_store, slack_user, user):
    with pytest.raises(ValidationError):
        map_slack_user(slack_store, slack_user, user)


# --- templates ------------------------------------------------------------------------------------
def test_templates_render_with_defaults_and_typed_values():
    assert template_names() == ["blobs-softmax", "resnet-cifar"]
    spec = render("resnet-cifar", {"gpus": "2", "bucket": "lab-data", "channel": "#vision"}).to_dict()
    assert spec["resources"]["gpus"] == 2
    assert spec["inputs"] == {"0": "s3://lab-data/datasets/cifar/"}
    assert spec["checkpoint_uri"] == "s3://lab-data/checkpoints/resnet-cifar/"
    assert spec["notify"] == {"slack_channel": "#vision"}
    assert spec["command"] == ["python", "train.py", "--epochs", "10"]
    assert spec["retries"] == {"max_attempts": 3, "on": ["interruption", "capacity"], "fatal_exit_codes": []}


@pytest.mark.parametrize("name", ["nope", "../config", "BLOBS"])
def test_an_unknown_template_is_not_found(name):
    with pytest.raises(NotFoundError) as info:
        render(name, {})
    assert info.value.details == [{"field": "template", "message": "templates: blobs-softmax, resnet-cifar"}]


def test_a_value_that_breaks_the_spec_names_the_field():
    with pytest.raises(ValidationError) as info:
        render("resnet-cifar", {"gpus": "lots"})
    assert info.value.details[0]["field"] == "resources.gpus"


# --- settings -------------------------------------------------------------------------------------
def test_slack_settings_have_defaults_and_round_trip(tmp_path):
    from chalicelib.config import Settings

    settings = make_settings(tmp_path, JOBPLANE_STAGE="prod", JOBPLANE_TABLE_PREFIX="jp-prod")
    assert (settings.slack_table, settings.slack_api_url, settings.slack_async) == (
        "jp-prod-slack",
        "https://slack.com/api/",
        "lambda",
    )
    assert settings.slack_send_budget_seconds == 20
    full = make_settings(
        tmp_path,
        JOBPLANE_SLACK_SIGNING_SECRET="jobplane/dev/slack-signing-secret",
        JOBPLANE_SLACK_BOT_TOKEN_SECRET="ssm:/jobplane/dev/slack-bot-token",
    )
    assert Settings.from_env(full.to_env()) == full
    with pytest.raises(ConfigError, match="JOBPLANE_SLACK_ASYNC"):
        make_settings(tmp_path, JOBPLANE_SLACK_ASYNC="carrier-pigeon")
