"""deploy/gcp/deploy.sh --dry-run prints every gcloud command it would run, and runs none."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from tests.factories import ROOT

SCRIPT = ROOT / "deploy" / "gcp" / "deploy.sh"
ROLE = "arn:aws:iam::123456789012:role/jobplane-test-gcp"


def dry_run(*extra: str) -> list[list[str]]:
    result = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--dry-run",
            "--project",
            "my-project",
            "--stage",
            "test",
            "--aws-role-arn",
            ROLE,
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},  # no gcloud needed (and none run) for a dry run
    )
    return [shlex.split(line) for line in result.stdout.splitlines()]


def test_dry_run_stages_chalicelib_and_prints_every_command():
    commands = dry_run()
    build = f"{ROOT}/build/gcp-functions-test"
    assert commands[:4] == [
        ["rm", "-rf", build],
        ["mkdir", "-p", build],
        ["cp", f"{ROOT}/gcp_functions/main.py", f"{ROOT}/gcp_functions/requirements.txt", f"{build}/"],
        ["cp", "-R", f"{ROOT}/chalicelib", f"{build}/chalicelib"],
    ]
    assert [c[:4] for c in commands[4:]] == [
        ["gcloud", "pubsub", "topics", "create"],
        ["gcloud", "pubsub", "topics", "create"],
        ["gcloud", "logging", "sinks", "create"],
        ["gcloud", "pubsub", "topics", "add-iam-policy-binding"],
        ["gcloud", "functions", "deploy", "jobplane-test-on_job_event"],
        ["gcloud", "functions", "deploy", "jobplane-test-on_gcs_upload"],
        ["gcloud", "functions", "deploy", "jobplane-test-reconcile"],
        ["gcloud", "scheduler", "jobs", "create"],
    ]
    on_job_event = commands[8]
    assert "--gen2" in on_job_event and "--entry-point=on_job_event" in on_job_event
    assert "--trigger-topic=jobplane-test-events" in on_job_event
    assert f"--source={build}" in on_job_event
    env = next(a for a in on_job_event if a.startswith("--set-env-vars="))[len("--set-env-vars=") :]
    assert env.startswith("^@^")
    assert dict(kv.split("=", 1) for kv in env[3:].split("@")) == {
        "JOBPLANE_STAGE": "test",
        "JOBPLANE_BACKENDS": "vertex,gce",
        "JOBPLANE_GCP_PROJECT": "my-project",
        "JOBPLANE_GCP_REGION": "us-central1",
        "JOBPLANE_GCP_STATUS_URI": "gs://jobplane-test-artifacts/status",
        "JOBPLANE_GCP_EVENTS_TOPIC": "projects/my-project/topics/jobplane-test-events",
        "JOBPLANE_AWS_ROLE_ARN": ROLE,
        "AWS_REGION": "us-east-1",
    }
    upload = commands[9]
    assert "--trigger-event-filters=type=google.cloud.storage.object.v1.finalized" in upload
    assert "--trigger-event-filters=bucket=jobplane-test-uploads" in upload
    sink = commands[6]
    assert sink[4:6] == [
        "jobplane-test-events",
        "pubsub.googleapis.com/projects/my-project/topics/jobplane-test-events",
    ]
    assert commands[-1][-4:] == [
        "--location=us-central1", "--schedule=*/5 * * * *", "--topic=jobplane-test-reconcile", "--message-body=tick"
    ]  # fmt: skip
    assert not (ROOT / "build" / "gcp-functions-test").exists()


def test_the_role_is_required():
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--project", "p"], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (2, "--project and --aws-role-arn are required\n")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (make system-deps)")
def test_the_deploy_script_passes_shellcheck():
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "")
