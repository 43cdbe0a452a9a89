"""Upload triggers: rules from YAML, URL-decoded keys, one job per upload however often S3 says so, no loops."""

from __future__ import annotations

import copy
import json
import time
import uuid

import pytest
import yaml

from chalicelib.auth import Principal
from chalicelib.errors import ConfigError
from chalicelib.jobs.service import JobService
from chalicelib.store.memory import InMemoryJobStore
from chalicelib.triggers import handle_s3_event, load_rules, parse_rules
from tests.factories import FIXTURES, ScriptedBackend, make_settings

FIXTURE = FIXTURES / "events" / "s3-object-created.json"
RULES = {
    "rules": [
        {
            "name": "ingest",
            "bucket": "jobplane-test-uploads",
            "prefix": "datasets/",
            "glob": "datasets/**.csv",
            "outputs": ["outputs/"],
            "owner": "uploads",
            "job": {
                "name": "ingest-{stem}",
                "backend": "local",
                "command": ["python", "ingest.py", "s3://{bucket}/{key}"],
                "env": {"STEM": "{stem}"},
            },
        },
        {
            "name": "loop",
            "bucket": "jobplane-test-uploads",
            "prefix": "",
            "outputs": ["results/"],
            "owner": "uploads",
            "job": {"name": "anything", "backend": "local", "command": ["python", "x.py", "{key}"]},
        },
    ]
}


@pytest.fixture
def service(tmp_path):
    path = tmp_path / "triggers.yaml"
    path.write_text(yaml.safe_dump(RULES))
    settings = make_settings(tmp_path, JOBPLANE_TRIGGERS_FILE=str(path))
    backend = ScriptedBackend(settings)
    return JobService(InMemoryJobStore(), settings, backend_factory=lambda _name, _s: backend)


def event(key: str | None = None, sequencer: str | None = None) -> dict:
    data = json.loads(FIXTURE.read_text())
    if key is not None:
        data["Records"][0]["s3"]["object"]["key"] = key
    if sequencer is not None:
        data["Records"][0]["s3"]["object"]["sequencer"] = sequencer
    return data


def test_a_matching_upload_starts_one_job_from_the_template_with_the_decoded_key(service):
    [result] = handle_s3_event(event(), service)
    assert (result["outcome"], result["rule"], result["key"]) == (
        "started",
        "ingest",
        "datasets/cifar small/My Data+1.csv",
    )
    job = service.store.get_job(result["job_id"])
    assert (job.name, job.owner) == ("ingest-my-data-1", "uploads")
    assert job.spec.to_dict()["command"] == [
        "python",
        "ingest.py",
        "s3://jobplane-test-uploads/datasets/cifar small/My Data+1.csv",
    ]
    assert job.spec.to_dict()["env"] == {"STEM": "My Data+1"}
    assert job.spec.to_dict()["labels"] == {"trigger": "ingest"}


def test_the_same_s3_event_delivered_twice_starts_one_job_and_a_new_upload_another(service):
    first = handle_s3_event(event(), service)[0]
    again = handle_s3_event(copy.deepcopy(event()), service)[0]
    assert (again["outcome"], again["job_id"]) == ("duplicate", first["job_id"])
    overwritten = handle_s3_event(event(sequencer="0055AED6DCD90281F0"), service)[0]
    assert overwritten["outcome"] == "started" and overwritten["job_id"] != first["job_id"]
    jobs, _ = service.list(Principal("root", admin=True))
    assert len(jobs) == 2


def test_outputs_never_trigger_and_unmatched_objects_do_nothing(service):
    results = [
        handle_s3_event(event(key), service)[0]["outcome"]
        for key in ("outputs/ingest-x/model.csv", "results/x.csv", "datasets/readme.txt")
    ]
    # results/ is the second rule's output; readme.txt fails the first rule's glob, then matches the catch-all.
    assert results == ["output", "output", "started"]
    other_bucket = event()
    other_bucket["Records"][0]["s3"]["bucket"]["name"] = "someone-elses-bucket"
    assert handle_s3_event(other_bucket, service)[0]["outcome"] == "no_rule"
    removed = event()
    removed["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    assert handle_s3_event(removed, service) == []


def test_a_hostile_key_is_substituted_once_as_plain_text(service):
    [result] = handle_s3_event(event("datasets/%7Bbucket%7D%24%28touch+x%29%7Bkey%7D.csv"), service)
    job = service.store.get_job(result["job_id"])
    assert job.spec.to_dict()["command"][2] == "s3://jobplane-test-uploads/datasets/{bucket}$(touch x){key}.csv"
    assert job.name == "ingest-bucket-touch-x-key"


def test_the_checked_in_rules_are_valid_and_a_bad_rule_is_named():
    rules = load_rules("chalicelib/triggers.yaml")
    assert [r.name for r in rules] == ["local-datasets", "dev-train-on-upload"]
    assert rules[0].bucket == "jobplane-local-uploads"
    bad = copy.deepcopy(RULES)
    bad["rules"][1]["job"]["resources"] = {"gpus": 99}
    with pytest.raises(ConfigError) as err:
        parse_rules(bad, "triggers.yaml")
    assert err.value.message.startswith("triggers.yaml: rules[1] (loop): the job template is not a valid spec")


def test_on_upload_through_the_chalice_app_uses_the_checked_in_rules(api, tmp_path):
    from chalicelib import deps

    settings = make_settings(tmp_path)
    backend = ScriptedBackend(settings)
    deps.override(service=JobService(api.store, settings, backend_factory=lambda _n, _s: backend))
    s3_event = api.events.generate_s3_event(bucket="jobplane-local-uploads", key="datasets/mnist%20v2.csv")
    response = api.lambda_.invoke("on_upload", s3_event)
    [result] = response.payload
    assert (result["outcome"], result["rule"], result["key"]) == ("started", "local-datasets", "datasets/mnist v2.csv")
    assert api.store.get_job(result["job_id"]).spec.to_dict()["env"] == {"UPLOAD_KEY": "datasets/mnist v2.csv"}


def test_a_real_upload_to_the_emulated_s3_arrives_through_sqs_and_starts_the_job(moto_endpoint, service):
    import boto3

    kw = {"region_name": "us-east-1", "endpoint_url": moto_endpoint}
    sqs, s3 = boto3.client("sqs", **kw), boto3.client("s3", **kw)
    bucket = "jobplane-test-uploads"
    queue = sqs.create_queue(QueueName=f"uploads-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    key = f"datasets/run {uuid.uuid4().hex[:6]}.csv"
    s3.put_object(Bucket=bucket, Key=key, Body=b"a,b\n1,2\n")
    results, deadline = [], time.monotonic() + 10
    while not results and time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", []):
            body = json.loads(message["Body"])
            if "Records" in body:  # the first message is s3:TestEvent
                results += handle_s3_event(body, service)
                results += handle_s3_event(body, service)  # delivered twice
    assert [r["outcome"] for r in results] == ["started", "duplicate"]
    assert results[0]["key"] == key
