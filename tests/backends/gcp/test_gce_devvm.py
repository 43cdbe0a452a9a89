"""Dev VMs on GCE through the API: compute_v1 on the fake Compute REST API, the reaper's idle stops, the script."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta

import pytest

from chalicelib.backends.gcp.gce_script import devvm_startup_script
from chalicelib.devvms import DevVmAction, DevVmDecision, DevVmStatus
from chalicelib.jobs.model import iso, utcnow
from tests.factories import GCP_PROJECT, ApiClient, gcp_env, make_settings, make_stores, use_stores
from tests.vmharness import prepare, run

ZONE = "us-central1-a"


@pytest.fixture
def gce_api(tmp_path, moto_endpoint, fake_gcp):
    """The Chalice app of a GCP deployment (gce first, so dev VMs default to it), on the fake Google APIs."""
    from chalice.test import Client

    from chalicelib import deps

    env = {**gcp_env(fake_gcp.endpoint), "JOBPLANE_BACKENDS": "gce,vertex,local"}
    settings = make_settings(tmp_path, moto_endpoint, **env)
    stores = make_stores(settings)
    use_stores(settings, stores)
    import app as app_module

    with Client(app_module.app) as client:
        api = ApiClient(client, stores)
        api.fake = fake_gcp
        yield api
    deps.reset()


def create(api, token, **body):
    response = api.request("POST", "/instances", token, {"name": "notebook", **body})
    assert response.status_code == 201, response.json_body
    return response.json_body


def backdate(vm: dict, minutes: int) -> None:
    """Pretend the VM started `minutes` ago."""
    from chalicelib import deps

    store = deps.get_devvm_store()
    store.update_devvm(
        store.get_devvm(vm["vm_id"]), DevVmStatus.RUNNING, started_at=utcnow() - timedelta(minutes=minutes)
    )


def test_a_spot_gpu_dev_vm_is_inserted_labelled_and_its_zone_operation_read(gce_api):
    alice = gce_api.token("alice")
    vm = create(gce_api, alice, backend="gce", gpu_type="T4", spot=True, idle_minutes=20, max_hours=4)
    name = f"jpdev-{vm['vm_id']}"
    assert (vm["status"], vm["backend"], vm["native_id"], vm["instance_type"]) == (
        "RUNNING",
        "gce",
        name,
        "n1-standard-8",
    )
    [body] = gce_api.fake.bodies("POST", f"/projects/{GCP_PROJECT}/zones/{ZONE}/instances$")
    items = {i["key"]: i["value"] for i in body["metadata"]["items"]}
    assert items["enable-guest-attributes"] == "TRUE"
    assert items["startup-script"] == devvm_startup_script(idle_minutes=20, max_hours=4)
    assert body["name"] == name
    assert body["machineType"] == f"zones/{ZONE}/machineTypes/n1-standard-8"
    assert body["labels"] == {
        "jobplane-managed": "true",
        "jobplane-stage": "test",
        "jobplane-kind": "devvm",
        "jobplane-devvm-id": vm["vm_id"],
        "jobplane-owner": "alice",
    }
    assert body["guestAccelerators"] == [
        {"acceleratorType": f"zones/{ZONE}/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 1}
    ]
    assert body["scheduling"] == {
        "provisioningModel": "SPOT",
        "instanceTerminationAction": "STOP",
        "maxRunDuration": {"seconds": str(4 * 3600 + 600)},
        "onHostMaintenance": "TERMINATE",
        "automaticRestart": False,
    }
    # The insert's operation was read back (zoneOperations.get) before the API answered.
    [insert_op] = [op for op in gce_api.fake.operations.values() if op["operationType"] == "insert"]
    polled = [r["path"] for r in gce_api.fake.requests if r["method"] == "GET" and "/operations/" in r["path"]]
    assert polled == [f"/compute/v1/projects/{GCP_PROJECT}/zones/{ZONE}/operations/{insert_op['name']}"]


def test_a_gce_dev_vm_is_listed_stopped_and_started_by_its_owner_only(gce_api):
    alice, bob = gce_api.token("alice"), gce_api.token("bob")
    vm = create(gce_api, alice, backend="gce")
    instance = gce_api.fake.instances[(ZONE, vm["native_id"])]
    assert [v["vm_id"] for v in gce_api.request("GET", "/instances", alice).json_body["instances"]] == [vm["vm_id"]]
    assert gce_api.request("GET", "/instances", bob).json_body["instances"] == []
    assert gce_api.request("POST", f"/instances/{vm['vm_id']}/stop", bob).status_code == 404
    assert gce_api.request("POST", f"/instances/{vm['vm_id']}/start", bob).status_code == 404

    stopped = gce_api.request("POST", f"/instances/{vm['vm_id']}/stop", alice)
    assert stopped.status_code == 202 and stopped.json_body["status"] == "STOPPED"
    assert instance["status"] == "TERMINATED"  # GCE's word for a stopped VM: its disk is kept
    assert instance["labels"]["jobplane-stopped-by"] == "jobplane"
    assert instance["labels"]["jobplane-stop-reason"] == "stopped-by-alice"
    assert instance["labels"]["jobplane-devvm-id"] == vm["vm_id"]  # setLabels kept the VM's own

    started = gce_api.request("POST", f"/instances/{vm['vm_id']}/start", alice)
    assert started.status_code == 202 and started.json_body["status"] == "RUNNING"
    assert instance["status"] == "RUNNING"
    assert gce_api.fake.bodies("POST", f"/instances/{vm['native_id']}/start$") == [None]
    polled = [r["path"].rsplit("/", 1)[-1] for r in gce_api.fake.requests if "/operations/" in r["path"]]
    start_op = next(op["name"] for op in gce_api.fake.operations.values() if op["operationType"] == "start")
    assert polled[-1] == start_op


def test_the_backend_defaults_to_the_deployments_and_bad_ones_name_the_field(gce_api):
    alice = gce_api.token("alice")
    vm = create(gce_api, alice)
    # No backend named: the deployment's first dev VM backend, with that backend's default GPU (L4 on GCE).
    assert (vm["backend"], vm["gpu_type"], vm["instance_type"]) == ("gce", "L4", "g2-standard-8")
    [body] = gce_api.fake.bodies("POST", "/instances$")
    assert "guestAccelerators" not in body and body["scheduling"]["provisioningModel"] == "STANDARD"

    cases = [
        ({"backend": "ec2"}, "backend", "dev VMs on ec2 are not enabled in this deployment"),
        ({"backend": "vertex"}, "backend", None),
        ({"gpu_type": "A10G"}, "gpu_type", "GPU type A10G is not offered on Google Cloud"),
        ({"gpu_type": "T4", "gpus": 8}, "gpus", "T4 comes in counts of 1, 2, 4"),
    ]
    for extra, field, message in cases:
        response = gce_api.request("POST", "/instances", alice, {"name": "bad", **extra})
        assert response.status_code == 400, (extra, response.json_body)
        error = response.json_body["error"]
        assert error["details"][0]["field"] == field, error
        if message:
            assert error["message"] == message
    assert (
        "ec2"
        in gce_api.request("POST", "/instances", alice, {"name": "b", "backend": "nope"}).json_body["error"]["details"][
            0
        ]["message"]
    )
    # Nothing was recorded or inserted for the refused requests.
    assert len(gce_api.request("GET", "/instances", alice).json_body["instances"]) == 1
    assert len(gce_api.fake.bodies("POST", "/instances$")) == 1


def test_a_gpu_stockout_on_the_insert_operation_terminates_the_request_with_the_reason(gce_api):
    alice = gce_api.token("alice")
    gce_api.fake.stockout()
    vm = create(gce_api, alice, gpu_type="A100")
    assert vm["status"] == "TERMINATED" and vm["native_id"] is None
    assert vm["stop_reason"].startswith("launch failed: creating dev VM jpdev-")
    assert "does not have enough resources" in vm["stop_reason"]
    assert gce_api.fake.instances == {}


def test_an_insert_still_running_at_the_wait_limit_is_left_to_boot(gce_api, monkeypatch):
    from chalicelib.backends.gcp import gce_devvm

    monkeypatch.setattr(gce_devvm, "OPERATION_WAIT_SECONDS", 0)
    gce_api.fake.stockout()  # it would fail later; the request does not wait to hear it
    vm = create(gce_api, gce_api.token("alice"))
    assert vm["status"] == "RUNNING" and vm["native_id"] == f"jpdev-{vm['vm_id']}"
    assert not [r for r in gce_api.fake.requests if "/operations/" in r["path"]]
    # The insert failed after all (no instance): the reaper records it stopped instead of failing each run.
    from chalicelib import deps

    backdate(vm, minutes=31)
    assert deps.get_devvm_service().reap() == [DevVmDecision(vm["vm_id"], DevVmAction.STOP, "no heartbeat for 30 min")]


def attributes(api, vm, gpu: str, minutes_ago: int = 1) -> None:
    """What the VM's startup script has written as guest attributes."""
    api.fake.instances[(ZONE, vm["native_id"])]["status"] = "RUNNING"
    heartbeat = iso(utcnow() - timedelta(minutes=minutes_ago))
    api.fake.guest_attributes[vm["native_id"]] = {"gpu_percent": gpu, "heartbeat": heartbeat}


def test_reconcile_stops_an_idle_gce_dev_vm_leaves_a_busy_one_and_the_job_sweep_neither(gce_api):
    from chalicelib import deps
    from chalicelib.reaper import reconcile_all

    alice = gce_api.token("alice")
    idle = create(gce_api, alice, name="idle-box", idle_minutes=10)
    busy = create(gce_api, alice, name="busy-box", idle_minutes=10)
    attributes(gce_api, idle, "0.0")
    attributes(gce_api, busy, "87.5")
    backdate(idle, minutes=15)
    backdate(busy, minutes=15)

    results = reconcile_all(deps.get_service(), deps.get_devvm_service_if_enabled())
    reason = "GPU idle for 10 min (0.0% utilisation)"
    assert {"vm_id": idle["vm_id"], "action": "stop_devvm", "reason": reason} in results
    # Neither dev VM is a job VM to the job sweep: no action names either instance.
    assert not [r for r in results if r.get("job_id") in (idle["native_id"], busy["native_id"])]
    assert not [r for r in results if r.get("vm_id") == busy["vm_id"]]
    assert gce_api.fake.instances[(ZONE, idle["native_id"])]["status"] == "TERMINATED"
    assert gce_api.fake.instances[(ZONE, busy["native_id"])]["status"] == "RUNNING"
    after = gce_api.request("GET", f"/instances/{idle['vm_id']}", alice).json_body
    assert (after["status"], after["stop_reason"]) == ("STOPPED", f"stopped by jobplane reaper: {reason}")
    read = [r["query"] for r in gce_api.fake.requests if r["path"].endswith("/getGuestAttributes")]
    assert read and all(q == {"queryPath": "jobplane/"} for q in read)


def test_a_gce_dev_vm_without_heartbeat_or_past_its_hours_is_stopped(gce_api):
    from chalicelib import deps

    alice = gce_api.token("alice")
    silent = create(gce_api, alice, name="silent", idle_minutes=10)
    attributes(gce_api, silent, "55.0", minutes_ago=12)
    backdate(silent, minutes=15)
    long = create(gce_api, alice, name="long", max_hours=2)
    attributes(gce_api, long, "99.0")
    backdate(long, minutes=121)
    results = sorted(deps.get_devvm_service().reap(), key=lambda d: d.reason)
    assert results == [
        DevVmDecision(silent["vm_id"], DevVmAction.STOP, "no heartbeat for 10 min"),
        DevVmDecision(long["vm_id"], DevVmAction.STOP, "reached max_hours (2 h)"),
    ]


def test_a_gce_dev_vm_that_stopped_itself_is_recorded_stopped(gce_api):
    from chalicelib import deps

    alice = gce_api.token("alice")
    vm = create(gce_api, alice, idle_minutes=10)
    instance = gce_api.fake.instances[(ZONE, vm["native_id"])]
    instance["status"] = "TERMINATED"  # its startup script powered it off after 10 idle minutes
    backdate(vm, minutes=15)
    calls = len(gce_api.fake.requests)
    assert deps.get_devvm_service().reap() == [DevVmDecision(vm["vm_id"], DevVmAction.STOP, "no heartbeat for 10 min")]
    assert not [r for r in gce_api.fake.requests[calls:] if r["path"].endswith(("/stop", "/getGuestAttributes"))]
    assert instance["labels"]["jobplane-stopped-by"] == "jobplane"
    assert gce_api.request("GET", f"/instances/{vm['vm_id']}", alice).json_body["status"] == "STOPPED"


def test_a_gce_dev_vm_whose_guest_attributes_cannot_be_read_stays_up(gce_api):
    from chalicelib import deps

    alice = gce_api.token("alice")
    vm = create(gce_api, alice, idle_minutes=10)
    gce_api.fake.instances[(ZONE, vm["native_id"])]["status"] = "RUNNING"
    backdate(vm, minutes=15)
    gce_api.fake.guest_attributes.clear()  # nothing written yet: NotFound, which is no heartbeat
    assert deps.get_devvm_service().reap()[0].reason == "no heartbeat for 10 min"


# --- the startup script, run for real under bash ---------------------------------------------------
@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (make system-deps)")
def test_the_dev_vm_script_passes_shellcheck(tmp_path):
    path = tmp_path / "devvm.sh"
    path.write_text(devvm_startup_script(idle_minutes=30, max_hours=8))
    result = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def boot(tmp_path, gpu_lines: str, **limits):
    """Run the dev VM script with an nvidia-smi that prints `gpu_lines` and a curl that records its calls."""
    vm, env = prepare(tmp_path)
    (tmp_path / "bin" / "nvidia-smi").write_text(f"#!/bin/bash\nprintf '{gpu_lines}'\n")
    (tmp_path / "bin" / "curl").write_text(
        f'#!/bin/bash\nprintf "%s\\t" "$@" >>"{tmp_path}/curl.log"\necho >>"{tmp_path}/curl.log"\n'
    )
    for tool in ("nvidia-smi", "curl"):
        (tmp_path / "bin" / tool).chmod(0o755)
    run(vm, devvm_startup_script(sample_seconds=1, **limits), env, timeout=30)
    puts: dict[str, list[str]] = {}
    for line in (tmp_path / "curl.log").read_text().splitlines():
        argv = line.rstrip("\t").split("\t")
        puts.setdefault(argv[-1].rsplit("/", 1)[-1], []).append(argv[argv.index("--data") + 1])
    return puts


def test_the_dev_vm_script_powers_off_after_its_idle_window_without_gpu_activity(tmp_path):
    puts = boot(tmp_path, "0\\n0.5\\n", idle_minutes=3, max_hours=1)
    assert (tmp_path / "shutdown.called").exists()
    assert puts["stop_reason"] == ["GPU idle for 3 min"]
    # One sample a period: it judged only once the window held three, every one under 1 %.
    assert puts["gpu_percent"] == ["0.5", "0.5", "0.5"] and len(puts["heartbeat"]) == 3


def test_a_busy_dev_vm_script_powers_off_at_max_hours_and_not_before(tmp_path):
    puts = boot(tmp_path, "80\\n95\\n", idle_minutes=2, max_hours=3 / 3600)
    assert (tmp_path / "shutdown.called").exists()
    assert puts["stop_reason"] == ["reached max_hours"]
    # Busy throughout (its busiest GPU's), so only the clock stopped it: three seconds, a sample each.
    assert set(puts["gpu_percent"]) == {"95.0"} and len(puts["gpu_percent"]) >= 3
