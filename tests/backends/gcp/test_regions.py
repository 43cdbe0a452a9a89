"""GCP clients per region: a Vertex job in another region goes to that region's endpoint and location, a GCE job
to a zone of its region (regions.get); both are read back there by describe and by reconcile."""

from __future__ import annotations

from chalicelib.backends.base import Handle
from chalicelib.backends.gcp import rest, vertex
from chalicelib.jobs.model import JobStatus
from chalicelib.reaper import Action, reconcile
from tests.factories import GCP_PROJECT, submit

IMAGE = "us-docker.pkg.dev/my-project/train/resnet:1"


def test_a_vertex_job_in_another_region_uses_that_regions_endpoint_and_location(gcp_service, fake_gcp, monkeypatch):
    hosts: list[str] = []
    made = vertex.client_kwargs

    def recording(settings, host):
        hosts.append(host)
        return made(settings, host)

    monkeypatch.setattr(vertex, "client_kwargs", recording)
    here = submit(gcp_service, image=IMAGE, backend="vertex")
    there = submit(gcp_service, image=IMAGE, backend="vertex", regions=["europe-west4"])
    assert (here.region, there.region) == (None, "europe-west4")
    assert here.native_id.startswith(f"projects/{GCP_PROJECT}/locations/us-central1/customJobs/")
    assert there.native_id.startswith(f"projects/{GCP_PROJECT}/locations/europe-west4/customJobs/")
    creates = [r["path"] for r in fake_gcp.requests if r["method"] == "POST"]
    assert creates == [
        f"/v1/projects/{GCP_PROJECT}/locations/us-central1/customJobs",
        f"/v1/projects/{GCP_PROJECT}/locations/europe-west4/customJobs",
    ]
    # one client per region, each built for its region's endpoint
    assert hosts == ["us-central1-aiplatform.googleapis.com", "europe-west4-aiplatform.googleapis.com"]
    backend = gcp_service.backend("vertex")
    assert backend.describe(Handle.of(there)).status is JobStatus.LAUNCHING
    fake_gcp.requests.clear()
    decisions = reconcile(gcp_service)
    assert {d.job_id: d.action for d in decisions if d.job_id in (here.job_id, there.job_id)} == {
        here.job_id: Action.NONE,
        there.job_id: Action.NONE,
    }
    lists = {r["path"] for r in fake_gcp.requests if r["method"] == "GET" and r["path"].endswith("/customJobs")}
    assert f"/v1/projects/{GCP_PROJECT}/locations/europe-west4/customJobs" in lists  # its region's list


def test_a_custom_job_read_by_rest_goes_to_its_own_regions_endpoint(gcp_settings, monkeypatch):
    urls: list[str] = []
    monkeypatch.setattr(rest, "request", lambda settings, method, url, **_: urls.append(url))
    settings = gcp_settings.__class__(**{**gcp_settings.__dict__, "gcp_api_endpoint": None})
    rest.get_custom_job(settings, f"projects/{GCP_PROJECT}/locations/asia-east1/customJobs/77")
    assert urls == [
        f"https://asia-east1-aiplatform.googleapis.com/v1/projects/{GCP_PROJECT}/locations/asia-east1/customJobs/77"
    ]


def test_a_gce_job_in_another_region_is_made_and_read_in_a_zone_compute_engine_lists_there(gcp_service, fake_gcp):
    fake_gcp.region_zones["us-east1"] = ["us-east1-d", "us-east1-b", "us-east1-c"]  # us-east1 has no zone a
    job = submit(gcp_service, backend="gce", regions=["us-east1"], resources={"gpus": 1, "gpu_type": "T4"})
    assert (job.status, job.region) == (JobStatus.LAUNCHING, "us-east1")
    [body] = fake_gcp.bodies("POST", f"/projects/{GCP_PROJECT}/zones/us-east1-b/instances$")
    assert body["machineType"].startswith("zones/us-east1-b/machineTypes/")
    assert body["guestAccelerators"][0]["acceleratorType"] == "zones/us-east1-b/acceleratorTypes/nvidia-tesla-t4"
    assert ("us-east1-b", job.native_id) in fake_gcp.instances
    observed = gcp_service.backend("gce").describe(Handle.of(job))
    assert observed is not None and observed.native_id == job.native_id
    region_reads = [r for r in fake_gcp.requests if r["path"].endswith("/regions/us-east1")]
    assert len(region_reads) == 1  # read once per region
