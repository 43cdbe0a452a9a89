"""The REST calls of a cold event (rest.py) against the loopback fake: paths, JSON, 404s, errors as the libraries'."""

from __future__ import annotations

import json

import pytest
from google.api_core import exceptions as g

from chalicelib.backends.gcp import rest
from chalicelib.backends.gcp.errors import map_gcp_errors
from chalicelib.backends.gcp.vertex import CustomJobState
from chalicelib.errors import ThrottledError
from chalicelib.jobs.model import FailureKind, JobStatus, iso
from tests.factories import GCP_PROJECT as PROJECT
from tests.factories import GCP_STATUS_URI as STATUS_URI
from tests.factories import gcp_fixture as load
from tests.factories import pubsub_data, submit

ZONE = "us-central1-a"


def test_instances_get_reads_an_instance_and_none_when_there_is_none(gcp_settings, fake_gcp):
    fake_gcp.instances[(ZONE, "jp-x")] = {
        "name": "jp-x",
        "id": "4242",
        "status": "TERMINATED",
        "labels": {"jobplane-job-id": "x"},
        "labelFingerprint": "fp-3",
        "lastStartTimestamp": "2025-01-01T00:01:00.000-00:00",
        "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP"},
    }
    instances = rest.Instances(gcp_settings)
    assert instances.get(project=PROJECT, zone=ZONE, instance="jp-x") == rest.Instance(
        name="jp-x",
        id="4242",
        status="TERMINATED",
        labels={"jobplane-job-id": "x"},
        label_fingerprint="fp-3",
        last_start_timestamp="2025-01-01T00:01:00.000-00:00",
        provisioning_model="SPOT",
    )
    assert instances.get(project=PROJECT, zone=ZONE, instance="jp-gone") is None
    assert [(r["method"], r["path"]) for r in fake_gcp.requests] == [
        ("GET", f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/jp-x"),
        ("GET", f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/jp-gone"),
    ]


def test_an_instance_without_the_optional_fields_reads_as_proto3_defaults():
    found = rest.Instance.from_json({"name": "jp-x", "status": "RUNNING"})
    assert (found.labels, found.label_fingerprint, found.provisioning_model, found.last_start_timestamp) == (
        {},
        "",
        "",
        "",
    )


def test_set_labels_stop_and_delete_send_the_documented_requests(gcp_settings, fake_gcp):
    fake_gcp.instances[(ZONE, "jp-x")] = {"name": "jp-x", "status": "RUNNING", "labelFingerprint": "fp-0"}
    instances = rest.Instances(gcp_settings)
    instances.set_labels(project=PROJECT, zone=ZONE, instance="jp-x", labels={"a": "b"}, label_fingerprint="fp-0")
    assert fake_gcp.bodies("POST", "/setLabels$") == [{"labels": {"a": "b"}, "labelFingerprint": "fp-0"}]
    assert instances.stop(project=PROJECT, zone=ZONE, instance="jp-x")["operationType"] == "stop"
    assert instances.delete(project=PROJECT, zone=ZONE, instance="jp-x")["operationType"] == "delete"
    assert instances.delete(project=PROJECT, zone=ZONE, instance="jp-x") is None  # already gone
    assert [r["method"] for r in fake_gcp.requests] == ["POST", "POST", "DELETE", "DELETE"]


def test_an_http_error_is_the_api_core_exception_the_libraries_raise_and_translates_the_same(gcp_settings, fake_gcp):
    fake_gcp.instances[(ZONE, "jp-x")] = {"name": "jp-x", "status": "RUNNING", "labelFingerprint": "fp-1"}
    instances = rest.Instances(gcp_settings)
    with pytest.raises(g.PreconditionFailed, match="Labels fingerprint"):
        instances.set_labels(project=PROJECT, zone=ZONE, instance="jp-x", labels={}, label_fingerprint="stale")
    fake_gcp.fail_next.append(
        (429, {"error": {"code": 429, "message": "Rate Limit Exceeded", "status": "RESOURCE_EXHAUSTED"}})
    )
    with pytest.raises(ThrottledError) as info, map_gcp_errors("getting instance jp-x"):
        instances.get(project=PROJECT, zone=ZONE, instance="jp-x")
    assert isinstance(info.value.__cause__, g.TooManyRequests) and info.value.retryable
    message = info.value.message  # from_http_response names the request, as in the libraries' errors
    assert message.startswith("getting instance jp-x: GET http") and message.endswith(": Rate Limit Exceeded")


def test_get_custom_job_reads_the_job_and_none_for_an_unknown_one(gcp_settings, fake_gcp):
    name = f"projects/{PROJECT}/locations/us-central1/customJobs/1001"
    fake_gcp.custom_jobs[name] = {"name": name, "displayName": "jp-x", "state": "JOB_STATE_RUNNING"}
    assert rest.get_custom_job(gcp_settings, name)["state"] == "JOB_STATE_RUNNING"
    assert rest.get_custom_job(gcp_settings, name.replace("1001", "1002")) is None
    assert [r["path"] for r in fake_gcp.requests] == [f"/v1/{name}", f"/v1/{name.replace('1001', '1002')}"]
    assert fake_gcp.requests[0]["query"] == {}  # enums as names: the API's default JSON


def test_download_reads_an_object_by_its_encoded_name_and_none_when_missing(gcp_settings, fake_gcp):
    fake_gcp.objects[("jp-status", "test/jp-x/exit.json")] = b'{"state": "SUCCEEDED"}'
    assert rest.download(gcp_settings, "jp-status", "test/jp-x/exit.json") == b'{"state": "SUCCEEDED"}'
    assert rest.download(gcp_settings, "jp-status", "test/jp-y/exit.json") is None
    assert fake_gcp.requests[0]["query"] == {"alt": "media"}


def test_a_custom_jobs_json_reads_as_the_library_type_does():
    state = CustomJobState.from_json(
        {
            "name": "projects/p/locations/l/customJobs/7",
            "displayName": "jp-abc",
            "state": "JOB_STATE_FAILED",
            "labels": {"jobplane-job-id": "abc"},
            "error": {"code": 14, "message": "The spot VM was reclaimed."},
            "jobSpec": {"scheduling": {"strategy": "SPOT"}},
            "startTime": "2025-01-01T00:01:00.123456789Z",
            "endTime": "2025-01-01T02:00:00Z",
        }
    )
    assert (state.state, state.error_code, state.spot, iso(state.start_time), iso(state.end_time)) == (
        "JOB_STATE_FAILED",
        14,
        True,
        "2025-01-01T00:01:00.123456Z",
        "2025-01-01T02:00:00.000000Z",
    )
    assert CustomJobState.from_json({"name": "x"}).state == "JOB_STATE_UNSPECIFIED"  # unset, as proto3 reads it


def test_a_reclaimed_spot_custom_job_fails_as_interrupted_through_the_event(gcp_service, fake_gcp):
    from chalicelib.events.gcp import handle_job_event

    job = submit(gcp_service, image="us-docker.pkg.dev/p/r/i:1", backend="vertex", resources={"spot": True})
    stored = fake_gcp.custom_jobs[job.native_id]
    # What the API answers (enums as names), not what the client library sent.
    stored["jobSpec"]["scheduling"]["strategy"] = "SPOT"
    stored.update(state="JOB_STATE_FAILED", error={"code": 14, "message": "The spot VM was reclaimed."})
    entry = load("logentry_vertex_ml_job.json")
    entry["resource"]["labels"]["job_id"] = job.native_id.rsplit("/", 1)[1]
    result = handle_job_event(pubsub_data(entry), gcp_service)
    assert (result.outcome, result.status) == ("applied", "FAILED")
    assert gcp_service.store.get_job(job.job_id).failure_kind is FailureKind.INTERRUPTED
    assert [r["method"] for r in fake_gcp.requests][-1] == "GET"  # the event read the job, nothing else


def test_a_vm_exit_status_is_read_by_rest_on_the_event(gcp_service, fake_gcp):
    from chalicelib.backends.agent import make_report
    from chalicelib.events.gcp import handle_job_event

    job = submit(gcp_service, backend="gce")
    fake_gcp.instances[(ZONE, job.native_id)]["status"] = "TERMINATED"
    report = make_report(job_id=job.job_id, attempt=1, exit_code=0, started_at=None, finished_at="2025-01-01T02:00:00Z")
    fake_gcp.set_status_object(STATUS_URI, job.native_id, report)
    message = {"state": "SUCCEEDED", "exit_code": 0, "native_id": job.native_id}
    attrs = {"jobplane-source": "jobplane.gce", "jobplane-native-id": job.native_id}
    fake_gcp.requests.clear()
    assert handle_job_event(pubsub_data(message, attrs), gcp_service).status == JobStatus.SUCCEEDED.value
    paths = [(r["method"], r["path"].split("/")[-1]) for r in fake_gcp.requests]
    assert paths == [
        ("GET", job.native_id),
        ("GET", "exit.json"),
        ("GET", job.native_id),
        ("POST", "setLabels"),
        ("DELETE", job.native_id),
    ]
    assert json.loads(fake_gcp.objects[("jp-status", f"test/{job.native_id}/exit.json")])["exit_code"] == 0
