"""`make package` produces every function, event source and resource a deployment needs."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = {"api_handler", "on_job_state_change", "on_upload", "reconcile", "notify", "slack_worker"}


@pytest.fixture(scope="module")
def package():
    result = subprocess.run(["make", "package", "STAGE=dev"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = ROOT / "build" / "package"
    return {
        "chalice": json.loads((out / "chalice.tf.json").read_text()),
        "extra": json.loads((out / "jobplane-resources.tf.json").read_text()),
        "zip": out / "deployment.zip",
    }


def test_every_function_is_packaged_with_the_checked_in_policy(package):
    resources = package["chalice"]["resource"]
    assert set(resources["aws_lambda_function"]) == FUNCTIONS
    policy = json.loads((ROOT / ".chalice" / "policy-dev.json").read_text())
    for role in resources["aws_iam_role_policy"].values():
        assert json.loads(role["policy"]) == policy


def test_every_event_source_is_wired(package):
    resources = package["chalice"]["resource"]
    rules = {
        name: json.loads(rule["event_pattern"]) if "event_pattern" in rule else rule["schedule_expression"]
        for name, rule in resources["aws_cloudwatch_event_rule"].items()
    }
    assert set(rules["on_job_state_change-event"]["source"]) >= {"aws.sagemaker", "aws.batch", "aws.ecs", "aws.ec2"}
    assert rules["reconcile-event"] == "rate(1 minute)"
    [notification] = resources["aws_s3_bucket_notification"].values()
    assert notification["lambda_function"][0]["events"] == ["s3:ObjectCreated:*"]
    [mapping] = resources["aws_lambda_event_source_mapping"].values()
    assert mapping["event_source_arn"] == "${aws_dynamodb_table.jobs.stream_arn}"
    assert "aws_api_gateway_rest_api" in resources


def test_the_tables_bucket_and_secrets_are_declared(package):
    extra = package["extra"]["resource"]
    tables = extra["aws_dynamodb_table"]
    assert set(tables) >= {"jobs", "job_events", "tokens", "idempotency", "capacity", "slack", "devvms"}
    jobs = tables["jobs"]
    assert jobs["stream_view_type"] == "NEW_AND_OLD_IMAGES" and jobs["billing_mode"] == "PAY_PER_REQUEST"
    assert {i["name"] for i in jobs["global_secondary_index"]} == {
        "owner-created",
        "all-created",
        "active-created",
        "queued-created",
    }
    assert tables["idempotency"]["ttl"] == {"attribute_name": "expires_at", "enabled": True}
    assert extra["aws_s3_bucket"]["uploads"]["bucket"] == "jobplane-dev-uploads"
    assert {s["name"] for s in extra["aws_secretsmanager_secret"].values()} >= {"jobplane/dev/slack-webhook-url"}


def test_the_lambda_bundle_holds_the_core_and_no_test_or_gcp_library(package):
    with zipfile.ZipFile(package["zip"]) as bundle:
        names = bundle.namelist()
    assert "app.py" in names and "chalicelib/jobs/service.py" in names
    assert "chalicelib/dashboard/index.html" in names
    tops = {n.split("/")[0] for n in names}
    # chalice (its runtime) and botocore (pinned by pynamodb) come along; boto3, test and GCP libraries do not.
    assert not tops & {"moto", "pytest", "hypothesis", "google", "functions_framework", "boto3", "schemathesis"}
    assert package["zip"].stat().st_size < 50 * 1024 * 1024  # Lambda's zipped deployment limit
