"""on_job_state_change's EventBridge rule: jobplane's own events match, other workloads' do not (a rule on moto's
EventBridge routing AWS's published payloads from tests/fixtures/events to a queue)."""

from __future__ import annotations

import copy
import json
import uuid

import boto3
import pytest

from chalicelib.backends.aws import batch, ec2, ecs, sagemaker
from chalicelib.backends.event_pattern import pattern_from_env, state_change_pattern
from chalicelib.backends.local.backend import EVENT_DETAIL_TYPE
from chalicelib.endpoints.backends import sagemaker as sagemaker_endpoints
from tests.factories import fixture_json

QUEUES = ["jobplane-test", "jobplane-test-gpu"]
CLUSTER = "jobplane-test"


@pytest.fixture
def matches(moto_endpoint):
    """Whether EventBridge routes an event to the rule: a rule with the pattern and an SQS target on moto, the
    event put on the bus, the queue read (moto implements no TestEventPattern)."""
    kw = {"region_name": "us-east-1", "endpoint_url": moto_endpoint}
    events, sqs = boto3.client("events", **kw), boto3.client("sqs", **kw)
    name = f"jp-pattern-{uuid.uuid4().hex[:8]}"
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=name, EventPattern=json.dumps(state_change_pattern(QUEUES, CLUSTER)))
    events.put_targets(Rule=name, Targets=[{"Id": "queue", "Arn": arn}])

    def check(event: dict) -> bool:
        entry = {
            "Source": event["source"],
            "DetailType": event["detail-type"],
            "Detail": json.dumps(event["detail"]),
            "Resources": event.get("resources", []),
        }
        assert events.put_events(Entries=[entry])["FailedEntryCount"] == 0
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        for message in got:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        return len(got) == 1

    yield check
    events.remove_targets(Rule=name, Ids=["queue"])
    events.delete_rule(Name=name)
    sqs.delete_queue(QueueUrl=queue)


def event(name: str, **detail) -> dict:
    raw = copy.deepcopy(fixture_json("events", name))
    raw["detail"].update(detail)
    return raw


def test_every_branch_is_a_detail_type_a_parser_reads():
    pattern = state_change_pattern(QUEUES, CLUSTER)
    types = {t for branch in pattern["$or"] for t in branch["detail-type"]}
    assert types == {
        sagemaker.DETAIL_TYPE,
        sagemaker_endpoints.DETAIL_TYPE,
        batch.DETAIL_TYPE,
        ecs.DETAIL_TYPE,
        ec2.STATE_CHANGE,
        ec2.SPOT_WARNING,
        EVENT_DETAIL_TYPE,
    }


def test_jobplanes_own_events_match(matches):
    assert matches(event("sagemaker-training-job-state-change.json"))
    assert matches(event("batch-job-state-change.json"))  # queue jobplane-test-gpu
    assert matches(event("ecs-task-state-change.json"))
    assert matches(event("ec2-instance-state-change.json"))  # EC2 events carry no tags: parse_event reads them
    assert matches(event("ec2-spot-instance-interruption-warning.json"))
    local = {
        "version": "0",
        "id": "1",
        "detail-type": EVENT_DETAIL_TYPE,
        "source": "jobplane.local",
        "account": "000000000000",
        "time": "2026-12-02T10:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {"native_name": "jp-0123456789abcdef0123456789abcdef"},
    }
    assert matches(local)


def test_other_workloads_events_do_not_invoke_it(matches):
    assert not matches(event("sagemaker-training-job-state-change.json", TrainingJobName="nightly-xgboost"))
    other_queue = "arn:aws:batch:us-east-1:123456789012:job-queue/genomics"
    assert not matches(event("batch-job-state-change.json", jobQueue=other_queue))
    other_cluster = "arn:aws:ecs:us-west-2:111122223333:cluster/web-services"
    assert not matches(event("ecs-task-state-change.json", clusterArn=other_cluster))
    # ...nor another detail-type of the same service
    service_action = event("ecs-task-state-change.json")
    service_action["detail-type"] = "ECS Service Action"
    assert not matches(service_action)
    autoscaling = event("ec2-instance-state-change.json")
    autoscaling["source"], autoscaling["detail-type"] = "aws.autoscaling", "EC2 Instance Launch Successful"
    assert not matches(autoscaling)


def test_the_queues_and_cluster_come_from_the_settings_and_may_be_arns():
    pattern = pattern_from_env(
        {
            "JOBPLANE_STAGE": "prod",
            "JOBPLANE_BACKENDS": "local",
            "JOBPLANE_ECS_CLUSTER": "arn:aws:ecs:us-east-1:123456789012:cluster/gpu",
            "JOBPLANE_BATCH_SPOT_JOB_QUEUE": "spot-q",
        }
    )
    [batch_branch] = [b for b in pattern["$or"] if b["source"] == ["aws.batch"]]
    assert batch_branch["detail"]["jobQueue"] == [
        {"suffix": ":job-queue/jobplane-prod"},
        {"suffix": ":job-queue/jobplane-prod-gpu"},
        {"suffix": ":job-queue/spot-q"},
    ]
    [ecs_branch] = [b for b in pattern["$or"] if b["source"] == ["aws.ecs"]]
    assert ecs_branch["detail"]["clusterArn"] == ["arn:aws:ecs:us-east-1:123456789012:cluster/gpu"]
