"""GCE ad-hoc VMs: the insert request, describe from instance + exit status, preemption, the reaper's view."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib.backends.agent import StopCause, make_report
from chalicelib.backends.base import Handle, PowerState
from chalicelib.backends.gcp.gce import power_state
from chalicelib.jobs.model import FailureKind, JobStatus, iso, utcnow
from chalicelib.reaper import reconcile
from tests.factories import GCP_PROJECT, GCP_STATUS_URI, gcp_fixture, pubsub_data, submit

ZONE = "us-central1-a"
IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu123-debian-11-py310"


def _instance(fake, job, attempt_suffix=""):
    return fake.instances[(ZONE, f"jp-{job.job_id}{attempt_suffix}")]


def test_can_insert_a_spot_gpu_vm_with_the_exact_request(gcp_service, fake_gcp):
    job = submit(
        gcp_service,
        backend="gce",
        resources={"gpus": 1, "gpu_type": "T4", "spot": True, "cpus": 4},
        max_runtime_minutes=60,
        labels={"team": "vision"},
    )
    assert (job.status, job.native_id) == (JobStatus.LAUNCHING, f"jp-{job.job_id}")
    [body] = fake_gcp.bodies("POST", f"/projects/{GCP_PROJECT}/zones/{ZONE}/instances$")
    script = body["metadata"]["items"][0]
    assert script["key"] == "startup-script" and script["value"].startswith("#!/bin/bash\n")
    body["metadata"]["items"][0] = {"key": "startup-script", "value": "..."}
    assert body == {
        "name": f"jp-{job.job_id}",
        "machineType": f"zones/{ZONE}/machineTypes/n1-standard-8",
        "labels": {
            "team": "vision",
            "jobplane-managed": "true",
            "jobplane-stage": "test",
            "jobplane-job-id": job.job_id,
            "jobplane-attempt": "1",
        },
        "disks": [
            {
                "boot": True,
                "autoDelete": True,
                "initializeParams": {
                    "sourceImage": IMAGE,
                    "diskSizeGb": "200",
                },
            }
        ],
        "networkInterfaces": [
            {
                "network": "global/networks/default",
                "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}],
            }
        ],
        "guestAccelerators": [
            {"acceleratorType": f"zones/{ZONE}/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 1}
        ],
        "scheduling": {
            "provisioningModel": "SPOT",
            "instanceTerminationAction": "STOP",
            "maxRunDuration": {"seconds": str(60 * 60 + 25 * 60)},
            "onHostMaintenance": "TERMINATE",
            "automaticRestart": False,
        },
        "serviceAccounts": [{"email": "default", "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
        "metadata": {
            "items": [{"key": "startup-script", "value": "..."}, {"key": "enable-guest-attributes", "value": "TRUE"}]
        },
    }


def test_a_machine_type_with_its_own_gpus_gets_no_attached_accelerator(gcp_service, fake_gcp):
    submit(gcp_service, backend="gce", resources={"gpus": 1, "gpu_type": "A100"})
    [body] = fake_gcp.bodies("POST", "/instances$")
    assert (body["machineType"], "guestAccelerators" in body) == (f"zones/{ZONE}/machineTypes/a2-highgpu-1g", False)
    assert body["scheduling"]["provisioningModel"] == "STANDARD"


def test_a_retried_launch_of_the_same_attempt_creates_nothing_new(gcp_service, fake_gcp):
    job = submit(gcp_service, backend="gce")
    result = gcp_service.backend("gce").launch(job)
    assert (result.native_id, result.native_status) == (f"jp-{job.job_id}", "AlreadyExists")
    assert len(fake_gcp.instances) == 1


def test_describe_reads_the_instance_then_the_exit_status(gcp_service, fake_gcp):
    job = submit(gcp_service, backend="gce")
    backend = gcp_service.backend("gce")
    assert backend.describe(Handle.of(job)).status is JobStatus.LAUNCHING
    _instance(fake_gcp, job)["status"] = "RUNNING"
    _instance(fake_gcp, job)["lastStartTimestamp"] = "2025-01-01T00:01:00.000-00:00"
    obs = backend.describe(Handle.of(job))
    assert (obs.status, iso(obs.started_at)) == (JobStatus.RUNNING, "2025-01-01T00:01:00.000000Z")
    fake_gcp.set_status_object(
        GCP_STATUS_URI,
        job.native_id,
        make_report(
            job_id=job.job_id,
            attempt=1,
            exit_code=124,
            stopped_by=StopCause.TIMEOUT,
            started_at="2025-01-01T00:01:00Z",
            finished_at="2025-01-01T02:00:00Z",
        ),
    )
    _instance(fake_gcp, job)["status"] = "TERMINATED"
    obs = backend.describe(Handle.of(job))
    assert (obs.status, obs.failure_kind, obs.exit_code, obs.native_status) == (
        JobStatus.FAILED,
        FailureKind.TIMEOUT,
        124,
        "TERMINATED/TIMEOUT",
    )
    del fake_gcp.instances[(ZONE, job.native_id)]  # deleted, but the exit status remains the truth
    obs = backend.describe(Handle.of(job))
    assert (obs.status, obs.native_status) == (JobStatus.FAILED, "DELETED/TIMEOUT")
    fake_gcp.objects.clear()
    assert backend.describe(Handle.of(job)) is None


def test_a_vm_exit_message_succeeds_the_job_and_releases_the_vm(gcp_service, fake_gcp):
    from chalicelib.events.gcp import handle_job_event

    job = submit(gcp_service, backend="gce")
    _instance(fake_gcp, job)["status"] = "TERMINATED"
    fake_gcp.set_status_object(
        GCP_STATUS_URI,
        job.native_id,
        make_report(job_id=job.job_id, attempt=1, exit_code=0, started_at=None, finished_at="2025-01-01T02:00:00Z"),
    )
    message = {"state": "SUCCEEDED", "exit_code": 0, "native_id": job.native_id}
    attrs = {"jobplane-source": "jobplane.gce", "jobplane-native-id": job.native_id}
    result = handle_job_event(pubsub_data(message, attrs), gcp_service)
    assert (result.outcome, result.status) == ("applied", "SUCCEEDED")
    assert fake_gcp.instances == {}  # released in the same invocation
    labels = [b["labels"] for b in fake_gcp.bodies("POST", "/setLabels$")]
    assert labels[-1]["jobplane-stopped-by"] == "jobplane" and labels[-1]["jobplane-stop-reason"] == "job-succeeded"


def test_a_forged_exit_message_cannot_move_a_running_job(gcp_service, fake_gcp):
    from chalicelib.events.gcp import handle_job_event

    job = submit(gcp_service, backend="gce")
    _instance(fake_gcp, job)["status"] = "RUNNING"
    message = {"state": "SUCCEEDED", "exit_code": 0, "native_id": job.native_id}
    result = handle_job_event(pubsub_data(message, {"jobplane-source": "jobplane.gce"}), gcp_service)
    assert (result.outcome, result.status) == ("applied", "RUNNING")


def test_preemption_retries_as_attempt_two_and_removes_attempt_one(gcp_service, fake_gcp):
    from chalicelib.events.gcp import handle_job_event

    job = submit(
        gcp_service, backend="gce", resources={"spot": True}, retries={"max_attempts": 2, "on": ["interruption"]}
    )
    _instance(fake_gcp, job)["status"] = "TERMINATED"
    entry = gcp_fixture("logentry_gce_preempted.json")
    entry["protoPayload"]["resourceName"] = f"projects/{GCP_PROJECT}/zones/{ZONE}/instances/{job.native_id}"
    result = handle_job_event(pubsub_data(entry), gcp_service)
    after = gcp_service.store.get_job(job.job_id)
    # LAUNCHING again, as attempt 2: the same status, a new attempt, so the event counts as applied
    assert (result.outcome, after.status, after.attempt, after.native_id) == (
        "applied",
        JobStatus.LAUNCHING,
        2,
        f"jp-{job.job_id}-a2",
    )
    assert sorted(name for _, name in fake_gcp.instances) == [f"jp-{job.job_id}-a2"]
    reasons = [e.reason for e in gcp_service.store.history(job.job_id)]
    assert reasons[-2] == "attempt 1 interrupted: spot VM preempted before its job ended; retrying as attempt 2 of 2"


def test_preemption_without_retries_left_fails_as_interrupted(gcp_service, fake_gcp):
    from chalicelib.events.gcp import handle_job_event

    job = submit(gcp_service, backend="gce", resources={"spot": True})
    _instance(fake_gcp, job)["status"] = "TERMINATED"
    entry = gcp_fixture("logentry_gce_preempted.json")
    entry["protoPayload"]["resourceName"] = f"projects/{GCP_PROJECT}/zones/{ZONE}/instances/{job.native_id}"
    handle_job_event(pubsub_data(entry), gcp_service)
    after = gcp_service.store.get_job(job.job_id)
    assert (after.status, after.failure_kind) == (JobStatus.FAILED, FailureKind.INTERRUPTED)
    assert fake_gcp.instances == {}


def test_cancel_stops_the_vm_with_a_reason_and_the_job_ends_cancelled(gcp_service, fake_gcp):
    from chalicelib.auth import Principal

    job = submit(gcp_service, backend="gce")
    _instance(fake_gcp, job)["status"] = "RUNNING"
    gcp_service.cancel(Principal("alice"), job.job_id)
    inst = _instance(fake_gcp, job)
    assert (inst["status"], inst["labels"]["jobplane-stop-reason"]) == ("TERMINATED", "cancel-requested")
    reconcile(gcp_service)
    assert gcp_service.store.get_job(job.job_id).status is JobStatus.CANCELLED
    assert fake_gcp.instances == {}


def test_list_managed_is_one_filtered_aggregated_call_for_this_stage(gcp_service, fake_gcp):
    job = submit(gcp_service, backend="gce")
    other = dict(
        _instance(fake_gcp, job), name="jp-" + "b" * 32, labels={"jobplane-managed": "true", "jobplane-stage": "prod"}
    )
    fake_gcp.instances[("europe-west4-a", other["name"])] = other
    fake_gcp.requests.clear()
    resources = gcp_service.backend("gce").list_managed()
    assert [(r.resource_id, r.kind, r.running, r.job_id, r.attempt) for r in resources] == [
        (job.native_id, "vm", True, job.job_id, 1)
    ]
    [request] = fake_gcp.requests
    assert (request["path"], request["query"]["filter"]) == (
        f"/compute/v1/projects/{GCP_PROJECT}/aggregated/instances",
        'labels.jobplane-managed="true" AND labels.jobplane-stage="test"',
    )


def test_reconcile_stops_an_overdue_vm_and_an_orphan(gcp_service, fake_gcp):
    job = submit(gcp_service, backend="gce", max_runtime_minutes=60)
    inst = _instance(fake_gcp, job)
    inst["status"] = "RUNNING"
    inst["lastStartTimestamp"] = iso(utcnow() - timedelta(minutes=90))
    orphan = dict(inst, name="jp-" + "c" * 32, labels={**inst["labels"], "jobplane-job-id": "c" * 32})
    fake_gcp.instances[(ZONE, orphan["name"])] = orphan
    actions = {a.action: a.reason for a in reconcile(gcp_service)}
    assert actions["stop_overdue"] == "running 90 min, past max_runtime_minutes plus 15 min grace"
    assert actions["stop_orphan"] == f"orphaned: {orphan['name']} has no job behind it"
    assert fake_gcp.instances == {}
    after = gcp_service.store.get_job(job.job_id)
    assert (after.status, after.failure_kind) == (JobStatus.FAILED, FailureKind.TIMEOUT)


def test_reconcile_stops_an_idle_vm_from_its_guest_attributes(gcp_service, fake_gcp):
    job = submit(gcp_service, backend="gce", resources={"gpus": 1, "gpu_type": "T4"})
    inst = _instance(fake_gcp, job)
    inst["status"] = "RUNNING"
    inst["lastStartTimestamp"] = iso(utcnow() - timedelta(minutes=45))
    fake_gcp.guest_attributes[job.native_id] = {"heartbeat": iso(utcnow()), "gpu_percent": "1.5"}
    actions = {a.action: a.reason for a in reconcile(gcp_service)}
    assert actions["stop_idle"] == "GPU utilisation 1.5% < 5.0% for 30 min"
    after = gcp_service.store.get_job(job.job_id)
    assert (after.status, after.failure_kind) == (JobStatus.FAILED, FailureKind.IDLE)


def test_a_busy_vm_is_left_alone(gcp_service, fake_gcp):
    job = submit(gcp_service, backend="gce", resources={"gpus": 1, "gpu_type": "T4"})
    inst = _instance(fake_gcp, job)
    inst["status"] = "RUNNING"
    inst["lastStartTimestamp"] = iso(utcnow() - timedelta(minutes=45))
    fake_gcp.guest_attributes[job.native_id] = {"heartbeat": iso(utcnow()), "gpu_percent": "87.0"}
    actions = [a.to_dict() for a in reconcile(gcp_service)]
    assert actions == [{"job_id": job.job_id, "action": "apply", "reason": "backend reports RUNNING"}]
    assert (ZONE, job.native_id) in fake_gcp.instances
    assert gcp_service.store.get_job(job.job_id).status is JobStatus.RUNNING


@pytest.mark.parametrize(
    ("status", "power"),
    [
        ("PROVISIONING", PowerState.RUNNING),
        ("RUNNING", PowerState.RUNNING),
        ("STOPPING", PowerState.RUNNING),  # still billed until it is off
        ("TERMINATED", PowerState.STOPPED),  # GCE's word for powered off: the disk remains
        ("SUSPENDED", PowerState.STOPPED),
        ("DEPROVISIONING", PowerState.GONE),
    ],
)
def test_an_instance_status_says_what_the_instance_still_costs(status, power):
    assert power_state(status) is power


def test_an_insert_that_ends_in_a_stockout_fails_over_to_the_next_candidate(gcp_service, fake_gcp):
    job = submit(gcp_service, backend="gce", image="train:1", fallback=["vertex"], capacity_wait_minutes=60)
    assert job.launch_operation is not None  # the insert answered with its operation, recorded on the job
    handle = Handle.of(job)
    seen = gcp_service.backend("gce").describe(handle)
    assert (seen.status, seen.native_status) == (JobStatus.LAUNCHING, "PROVISIONING")
    fake_gcp.stockout_insert(ZONE, job.native_name)
    seen = gcp_service.backend("gce").describe(handle)
    assert (seen.status, seen.failure_kind, seen.native_status) == (
        JobStatus.FAILED,
        FailureKind.NO_CAPACITY,
        "insert DONE/ZONE_RESOURCE_POOL_EXHAUSTED",
    )
    assert seen.reason.startswith("ZONE_RESOURCE_POOL_EXHAUSTED: The zone 'projects/")
    # reconcile reads the finished operation and the job moves on to Vertex AI as attempt 2
    assert [d.action for d in reconcile(gcp_service)] == ["apply"]
    moved = gcp_service.store.get_job(job.job_id)
    assert (moved.status, moved.backend, moved.attempt, moved.launch_operation) == (
        JobStatus.LAUNCHING,
        "vertex",
        2,
        None,
    )
    assert [j["displayName"] for j in fake_gcp.custom_jobs.values()] == [f"jp-{job.job_id}-a2"]


def test_an_insert_still_running_keeps_the_job_launching_and_a_clean_one_leaves_the_lost_rules(gcp_service, fake_gcp):
    job = submit(gcp_service, backend="gce", image="train:1")
    fake_gcp.instances.pop((ZONE, job.native_name))  # the VM is not made yet: only its operation exists
    fake_gcp.operations[(ZONE, job.launch_operation)]["status"] = "RUNNING"
    seen = gcp_service.backend("gce").describe(Handle.of(job))
    assert (seen.status, seen.native_status) == (JobStatus.LAUNCHING, "insert RUNNING")
    fake_gcp.operations[(ZONE, job.launch_operation)]["status"] = "DONE"
    assert gcp_service.backend("gce").describe(Handle.of(job)) is None
