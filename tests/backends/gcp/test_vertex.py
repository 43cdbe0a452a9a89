"""Vertex AI custom jobs: requests as the library serialises them, the complete state table, hints re-read."""

from __future__ import annotations

import pytest
from google.cloud import aiplatform_v1

from chalicelib.backends.base import Handle
from chalicelib.backends.gcp.vertex import REJECTED_STATES, STATES, WRAPPER
from chalicelib.errors import BackendError, UnsupportedError
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.spec_types import JobSpec
from tests.factories import GCP_PROJECT, gcp_fixture, pubsub_data, submit

PARENT = f"projects/{GCP_PROJECT}/locations/us-central1"
IMAGE = "us-docker.pkg.dev/my-project/train/resnet:1"


def test_can_create_a_gpu_spot_custom_job_with_the_exact_request(gcp_service, fake_gcp):
    job = submit(
        gcp_service,
        image=IMAGE,
        backend="vertex",
        resources={"gpus": 2, "gpu_type": "L4", "spot": True},
        env={"LR": "0.1"},
        labels={"team": "vision"},
        max_runtime_minutes=90,
        outputs="gs://out/resnet/",
    )
    assert job.status is JobStatus.LAUNCHING
    assert job.native_id == f"{PARENT}/customJobs/1001"
    create = [r for r in fake_gcp.requests if r["method"] == "POST"]
    assert len(create) == 1 and create[0]["path"] == f"/v1/{PARENT}/customJobs"
    assert create[0]["body"] == {
        "displayName": f"jp-{job.job_id}",
        "labels": {
            "team": "vision",
            "jobplane-managed": "true",
            "jobplane-stage": "test",
            "jobplane-job-id": job.job_id,
            "jobplane-attempt": "1",
        },
        "jobSpec": {
            "workerPoolSpecs": [
                {
                    "machineSpec": {
                        "machineType": "g2-standard-24",
                        "acceleratorType": aiplatform_v1.AcceleratorType.NVIDIA_L4.value,
                        "acceleratorCount": 2,
                    },
                    "replicaCount": "1",
                    "containerSpec": {
                        "imageUri": IMAGE,
                        "command": ["/bin/sh", "-c", WRAPPER, "jobplane"],
                        "args": ["", "", "", "0", "2", "python", "train.py"],
                        "env": [
                            {"name": "JOBPLANE_ATTEMPT", "value": "1"},
                            {
                                "name": "JOBPLANE_CHECKPOINT_DIR",
                                "value": f"/gcs/jobplane-test-artifacts/checkpoints/{job.job_id}",
                            },
                            {"name": "JOBPLANE_INPUT_DIR", "value": "/tmp/jobplane/inputs"},
                            {"name": "JOBPLANE_JOB_ID", "value": job.job_id},
                            {"name": "JOBPLANE_OUTPUT_DIR", "value": f"/gcs/out/resnet/{job.job_id}"},
                            {"name": "JOBPLANE_OUTPUT_URI", "value": "gs://out/resnet/"},
                            {"name": "LR", "value": "0.1"},
                        ],
                    },
                }
            ],
            "scheduling": {"timeout": "5400s", "strategy": aiplatform_v1.Scheduling.Strategy.SPOT.value},
            "baseOutputDirectory": {"outputUriPrefix": f"gs://out/resnet/{job.job_id}/"},
        },
    }


def test_can_run_a_tpu_job_only_on_vertex(gcp_service, fake_gcp):
    job = submit(gcp_service, image=IMAGE, backend="auto", resources={"tpu": "v5litepod-4"})
    assert job.backend == "vertex"
    spec = fake_gcp.bodies("POST", "customJobs$")[0]["jobSpec"]
    assert spec["workerPoolSpecs"][0]["machineSpec"] == {"machineType": "ct5lp-hightpu-4t", "tpuTopology": "2x2"}
    assert spec["scheduling"] == {"timeout": "86400s", "strategy": aiplatform_v1.Scheduling.Strategy.ON_DEMAND.value}
    with pytest.raises(UnsupportedError) as err:
        gcp_service.backend("gce").validate(
            JobSpec.from_dict({"name": "x", "resources": {"tpu": "v5litepod-4"}, "command": ["x"]})
        )
    assert err.value.details == [
        {"field": "resources.tpu", "message": "TPUs run only through Vertex AI (backend vertex)"}
    ]


def test_refuses_gpu_types_and_counts_google_does_not_offer(gcp_service):
    backend = gcp_service.backend("vertex")
    with pytest.raises(UnsupportedError) as err:
        backend.validate(
            JobSpec.from_dict(
                {"name": "x", "image": IMAGE, "command": ["x"], "resources": {"gpus": 1, "gpu_type": "A10G"}}
            )
        )
    assert err.value.details[0]["field"] == "resources.gpu_type"
    with pytest.raises(UnsupportedError) as err:
        backend.validate(
            JobSpec.from_dict(
                {"name": "x", "image": IMAGE, "command": ["x"], "resources": {"gpus": 3, "gpu_type": "T4"}}
            )
        )
    assert err.value.details == [{"field": "resources.gpus", "message": "one of 1, 2, 4"}]


def test_every_job_state_is_mapped_or_rejected():
    names = {s.name for s in aiplatform_v1.JobState}
    assert set(STATES) | set(REJECTED_STATES) == names
    assert not set(STATES) & set(REJECTED_STATES)


def _job_with_state(gcp_service, fake_gcp, state, error=None):
    job = submit(gcp_service, image=IMAGE, backend="vertex")
    fake_gcp.custom_jobs[job.native_id]["state"] = state
    if error:
        fake_gcp.custom_jobs[job.native_id]["error"] = error
    return job


@pytest.mark.parametrize(
    ("state", "error", "status", "kind"),
    [
        ("JOB_STATE_QUEUED", None, JobStatus.LAUNCHING, None),
        ("JOB_STATE_PENDING", None, JobStatus.LAUNCHING, None),
        ("JOB_STATE_RUNNING", None, JobStatus.RUNNING, None),
        ("JOB_STATE_SUCCEEDED", None, JobStatus.SUCCEEDED, None),
        (
            "JOB_STATE_FAILED",
            {"code": 3, "message": "The replica workerpool0-0 exited with a non-zero status of 1."},
            JobStatus.FAILED,
            FailureKind.USER_ERROR,
        ),
        (
            "JOB_STATE_FAILED",
            {"code": 8, "message": "Resources are insufficient in region: us-central1."},
            JobStatus.FAILED,
            FailureKind.NO_CAPACITY,
        ),
        (
            "JOB_STATE_FAILED",
            {
                "code": 8,
                "message": "The following quota metrics exceed quota limits: custom_model_training_nvidia_l4_gpus",
            },
            JobStatus.FAILED,
            FailureKind.QUOTA,
        ),
        (
            "JOB_STATE_FAILED",
            {"code": 14, "message": "The VM was preempted."},
            JobStatus.FAILED,
            FailureKind.INTERRUPTED,
        ),
        ("JOB_STATE_EXPIRED", None, JobStatus.FAILED, FailureKind.TIMEOUT),
        ("JOB_STATE_CANCELLED", {"code": 1, "message": "CANCELED"}, JobStatus.CANCELLED, None),
    ],
)
def test_can_describe_each_state(gcp_service, fake_gcp, state, error, status, kind):
    job = _job_with_state(gcp_service, fake_gcp, state, error)
    obs = gcp_service.backend("vertex").describe(Handle.of(job))
    assert (obs.status, obs.failure_kind, obs.native_status, obs.job_id) == (status, kind, state, job.job_id)
    # queued or pending: Vertex is still finding the machines, which reconcile waits capacity_wait_minutes for
    assert obs.waiting_for_capacity is (state in ("JOB_STATE_QUEUED", "JOB_STATE_PENDING"))


def test_an_unspecified_or_unknown_state_is_an_error(gcp_service, fake_gcp):
    job = _job_with_state(gcp_service, fake_gcp, "JOB_STATE_UNSPECIFIED")
    with pytest.raises(BackendError, match="JOB_STATE_UNSPECIFIED, which jobplane does not map"):
        gcp_service.backend("vertex").describe(Handle.of(job))
    fake_gcp.custom_jobs[job.native_id]["state"] = 42
    with pytest.raises(BackendError, match="42, which jobplane does not map"):
        with pytest.warns(UserWarning, match="Unrecognized JobState enum value: 42"):
            gcp_service.backend("vertex").describe(Handle.of(job))


def test_a_retried_launch_finds_the_job_instead_of_creating_a_second(gcp_service, fake_gcp):
    job = submit(gcp_service, image=IMAGE, backend="vertex")
    lost = job.with_changes(native_id=None)  # the create's response never reached the store
    result = gcp_service.backend("vertex").launch(lost)
    assert result.native_id == job.native_id
    assert len(fake_gcp.bodies("POST", "customJobs$")) == 1


def test_can_cancel_and_ignores_a_finished_job(gcp_service, fake_gcp):
    job = submit(gcp_service, image=IMAGE, backend="vertex")
    backend = gcp_service.backend("vertex")
    backend.cancel(Handle.of(job))
    assert fake_gcp.custom_jobs[job.native_id]["state"] == "JOB_STATE_CANCELLING"
    fake_gcp.custom_jobs[job.native_id]["state"] = "JOB_STATE_SUCCEEDED"
    backend.cancel(Handle.of(job))  # FAILED_PRECONDITION from the API: nothing to stop
    assert [r["path"] for r in fake_gcp.requests if r["path"].endswith(":cancel")] == [
        f"/v1/{job.native_id}:cancel"
    ] * 2


def test_a_log_entry_is_a_hint_and_the_state_comes_from_the_api(gcp_service, fake_gcp):
    from chalicelib.events.gcp import handle_job_event

    job = _job_with_state(gcp_service, fake_gcp, "JOB_STATE_SUCCEEDED")
    entry = gcp_fixture("logentry_vertex_ml_job.json")  # says "Job failed."; the API says SUCCEEDED
    entry["resource"]["labels"]["job_id"] = job.native_id.rsplit("/", 1)[1]
    entry["resource"]["labels"]["project_id"] = GCP_PROJECT
    result = handle_job_event(pubsub_data(entry), gcp_service)
    assert result.to_dict() == {
        "outcome": "applied",
        "job_id": job.job_id,
        "status": "SUCCEEDED",
        "detail": "JOB_STATE_SUCCEEDED",
    }
    assert handle_job_event(pubsub_data(entry), gcp_service).outcome == "unchanged"  # a duplicate


def test_a_custom_job_of_another_stage_is_ignored(gcp_service, fake_gcp):
    from chalicelib.events.gcp import handle_job_event

    job = _job_with_state(gcp_service, fake_gcp, "JOB_STATE_FAILED")
    fake_gcp.custom_jobs[job.native_id]["labels"]["jobplane-stage"] = "prod"
    entry = gcp_fixture("logentry_vertex_ml_job.json")
    entry["resource"]["labels"]["job_id"] = job.native_id.rsplit("/", 1)[1]
    result = handle_job_event(pubsub_data(entry), gcp_service)
    assert result.outcome == "ignored"
    assert gcp_service.store.get_job(job.job_id).status is JobStatus.LAUNCHING


def test_a_stockout_after_vertex_accepted_the_job_fails_it_over_to_gce(gcp_service, fake_gcp):
    from chalicelib.jobs.model import utcnow
    from chalicelib.reaper import heal

    job = submit(gcp_service, image=IMAGE, backend="vertex", fallback=["gce"], capacity_wait_minutes=60)
    fake_gcp.custom_jobs[job.native_id]["state"] = "JOB_STATE_FAILED"
    fake_gcp.custom_jobs[job.native_id]["error"] = {
        "code": 8,
        "message": "Resources are insufficient in region: us-central1. Please try a different region.",
    }
    # reconcile's healing half (its sweep would stop the fake's VM, created "in 2025", as overdue)
    assert [d.action for d in heal(gcp_service, [job], utcnow())] == ["apply"]
    moved = gcp_service.store.get_job(job.job_id)
    assert (moved.status, moved.backend, moved.attempt, moved.failure_kind) == (JobStatus.LAUNCHING, "gce", 2, None)
    assert sorted(name for _, name in fake_gcp.instances) == [f"jp-{job.job_id}-a2"]
