"""Dev VMs: the API, EC2 on moto, and the reaper's idle and max-hours stops."""

from __future__ import annotations

from datetime import timedelta

import boto3
import pytest

from chalicelib.backends.base import Utilization
from chalicelib.devvms import DevVm, DevVmAction, DevVmDecision, DevVmStatus, decide_devvm
from chalicelib.jobs.model import utcnow
from tests.factories import ApiClient, make_settings, make_stores, use_stores

NOW = utcnow()


def _vm(started_minutes_ago=60, idle=30, max_hours=8.0, status=DevVmStatus.RUNNING):
    spec = {
        "name": "box",
        "backend": "ec2",
        "gpu_type": "A10G",
        "gpus": 1,
        "spot": False,
        "idle_minutes": idle,
        "max_hours": max_hours,
    }
    return DevVm(
        "a" * 32,
        "alice",
        spec,
        status,
        NOW - timedelta(hours=9),
        native_id="i-0abc",
        started_at=NOW - timedelta(minutes=started_minutes_ago),
    )


@pytest.mark.parametrize(
    ("vm", "usage", "reason"),
    [
        (_vm(started_minutes_ago=480), Utilization(95.0, NOW), "reached max_hours (8 h)"),
        (_vm(), Utilization(0.0, NOW - timedelta(minutes=1)), "GPU idle for 30 min (0.0% utilisation)"),
        (_vm(), Utilization(None, None), "no heartbeat for 30 min"),
        (_vm(), Utilization(40.0, NOW - timedelta(minutes=31)), "no heartbeat for 30 min"),
        (_vm(), Utilization(40.0, NOW - timedelta(minutes=1)), None),
        (_vm(started_minutes_ago=10), Utilization(None, None), None),  # booting
        (_vm(), None, None),  # the provider cannot tell: only max_hours applies
        (_vm(status=DevVmStatus.STOPPED), Utilization(0.0, None), None),
    ],
)
def test_a_dev_vm_stops_when_idle_or_past_its_hours(vm, usage, reason):
    assert decide_devvm(vm, usage, NOW) == reason


@pytest.fixture
def ec2_api(tmp_path, moto_endpoint):
    """The Chalice app with the EC2 backend enabled, on moto."""
    from chalice.test import Client

    from chalicelib import deps
    from chalicelib.jobs.service import JobService

    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_endpoint)
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto_endpoint)
    profile = f"devvm-{tmp_path.name[-20:]}"
    iam.create_instance_profile(InstanceProfileName=profile)
    settings = make_settings(
        tmp_path,
        moto_endpoint,
        JOBPLANE_BACKENDS="local,ec2",
        JOBPLANE_EC2_AMI=ami,
        JOBPLANE_EC2_INSTANCE_PROFILE=profile,
    )
    stores = make_stores(settings)
    use_stores(settings, stores, service=JobService(stores["jobs"], settings))
    import app as app_module

    with Client(app_module.app) as client:
        api = ApiClient(client, stores)
        api.ec2 = ec2
        api.cloudwatch = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=moto_endpoint)
        yield api
    deps.reset()


def _state(api, instance_id):
    reservations = api.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    instance = reservations[0]["Instances"][0]
    return instance["State"]["Name"], {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def test_a_dev_vm_is_created_tagged_listed_stopped_and_started_by_its_owner_only(ec2_api):
    alice, bob = ec2_api.token("alice"), ec2_api.token("bob")
    created = ec2_api.request(
        "POST", "/instances", alice, {"name": "notebook", "gpu_type": "A10G", "idle_minutes": 20, "max_hours": 4}
    )
    assert created.status_code == 201, created.json_body
    vm = created.json_body
    assert vm["status"] == "RUNNING" and vm["instance_type"] == "g5.xlarge"
    state, tags = _state(ec2_api, vm["native_id"])
    assert state in ("pending", "running")
    assert tags["jobplane:kind"] == "devvm" and tags["jobplane:managed"] == "true"
    assert tags["jobplane:devvm-id"] == vm["vm_id"] and tags["jobplane:stage"] == "test"

    assert [v["vm_id"] for v in ec2_api.request("GET", "/instances", alice).json_body["instances"]] == [vm["vm_id"]]
    assert ec2_api.request("GET", "/instances", bob).json_body["instances"] == []
    assert ec2_api.request("POST", f"/instances/{vm['vm_id']}/stop", bob).status_code == 404

    stopped = ec2_api.request("POST", f"/instances/{vm['vm_id']}/stop", alice)
    assert stopped.status_code == 202 and stopped.json_body["status"] == "STOPPED"
    assert stopped.json_body["stop_reason"] == "stopped by alice"
    state, tags = _state(ec2_api, vm["native_id"])
    assert state in ("stopping", "stopped") and tags["jobplane:stopped-by"] == "stopped by alice"

    started = ec2_api.request("POST", f"/instances/{vm['vm_id']}/start", alice)
    assert started.status_code == 202 and started.json_body["status"] == "RUNNING"
    assert _state(ec2_api, vm["native_id"])[0] in ("pending", "running")


def test_bad_dev_vm_requests_name_the_field(ec2_api):
    alice = ec2_api.token("alice")
    response = ec2_api.request("POST", "/instances", alice, {"name": "x", "idle_minutes": 1})
    assert response.status_code == 400
    assert response.json_body["error"]["details"][0]["field"] == "idle_minutes"
    for body, field in (({"backend": "gce"}, "backend"), ({"gpu_type": "K80"}, "gpu_type")):
        response = ec2_api.request("POST", "/instances", alice, {"name": "x", **body})
        assert response.status_code == 400, response.json_body
        assert response.json_body["error"]["details"][0]["field"] == field
    assert ec2_api.request("GET", "/instances", alice).json_body["instances"] == []  # nothing recorded
    assert ec2_api.request("POST", "/instances", alice, "{not json").status_code == 400
    assert ec2_api.request("POST", "/instances", None, {"name": "x"}).status_code == 401


def test_reconcile_stops_an_idle_dev_vm_but_the_job_sweep_never_touches_it(ec2_api):
    from chalicelib import deps
    from chalicelib.reaper import reconcile

    alice = ec2_api.token("alice")
    vm = ec2_api.request("POST", "/instances", alice, {"name": "idle-box", "idle_minutes": 10}).json_body
    # The job sweep lists every tagged instance of the stage; a dev VM is not an orphaned job VM.
    actions = reconcile(deps.get_service())
    assert [a for a in actions if a.job_id == vm["native_id"]] == []
    assert _state(ec2_api, vm["native_id"])[0] in ("pending", "running")
    # The VM's agent reports an idle GPU every minute.
    for minutes in range(1, 8):
        ec2_api.cloudwatch.put_metric_data(
            Namespace="jobplane",
            MetricData=[
                {
                    "MetricName": "GPUUtilization",
                    "Dimensions": [{"Name": "InstanceId", "Value": vm["native_id"]}],
                    "Timestamp": utcnow() - timedelta(minutes=minutes),
                    "Value": 0.0,
                    "Unit": "Percent",
                }
            ],
        )
    service = deps.get_devvm_service()
    _backdate(vm, minutes=15)
    results = service.reap()
    assert results == [DevVmDecision(vm["vm_id"], DevVmAction.STOP, "GPU idle for 10 min (0.0% utilisation)")]
    assert results[0].to_dict() == {
        "vm_id": vm["vm_id"],
        "action": "stop_devvm",
        "reason": "GPU idle for 10 min (0.0% utilisation)",
    }
    after = ec2_api.request("GET", f"/instances/{vm['vm_id']}", alice).json_body
    assert after["status"] == "STOPPED"
    assert after["stop_reason"] == "stopped by jobplane reaper: GPU idle for 10 min (0.0% utilisation)"
    assert service.reap() == []  # stopped VMs are not read again


def test_a_busy_dev_vm_still_stops_at_max_hours(ec2_api):
    from chalicelib import deps

    alice = ec2_api.token("alice")
    vm = ec2_api.request("POST", "/instances", alice, {"name": "busy", "max_hours": 2}).json_body
    ec2_api.cloudwatch.put_metric_data(
        Namespace="jobplane",
        MetricData=[
            {
                "MetricName": "GPUUtilization",
                "Dimensions": [{"Name": "InstanceId", "Value": vm["native_id"]}],
                "Timestamp": utcnow() - timedelta(minutes=2),
                "Value": 97.0,
                "Unit": "Percent",
            }
        ],
    )
    service = deps.get_devvm_service()
    _backdate(vm, minutes=90)
    assert service.reap() == []
    _backdate(vm, minutes=121)
    assert service.reap()[0].reason == "reached max_hours (2 h)"


def test_a_dev_vm_whose_metrics_cannot_be_read_is_an_error_result_and_stays_up(ec2_api):
    from botocore.awsrequest import AWSResponse

    from chalicelib import deps

    alice = ec2_api.token("alice")
    vm = ec2_api.request("POST", "/instances", alice, {"name": "denied", "idle_minutes": 10}).json_body
    service = deps.get_devvm_service()
    _backdate(vm, minutes=15)
    cloudwatch = service.provider("ec2").client("cloudwatch")
    message = "User is not authorized to perform: cloudwatch:GetMetricStatistics"

    def denied(**_):
        error = {"Error": {"Code": "AccessDenied", "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 403}}
        return AWSResponse("https://monitoring.invalid", 403, {}, None), error

    event = f"before-call.{cloudwatch.meta.service_model.service_id.hyphenize()}.GetMetricStatistics"
    cloudwatch.meta.events.register(event, denied)
    try:
        (result,) = service.reap()
    finally:
        cloudwatch.meta.events.unregister(event, denied)
    assert (result.vm_id, result.action) == (vm["vm_id"], DevVmAction.ERROR)
    assert result.to_dict()["action"] == "error" and "GetMetricStatistics" in result.reason
    assert ec2_api.request("GET", f"/instances/{vm['vm_id']}", alice).json_body["status"] == "RUNNING"


def _backdate(vm: dict, minutes: int) -> None:
    """Pretend the VM started `minutes` ago."""
    from chalicelib import deps

    store = deps.get_devvm_store()
    record = store.get_devvm(vm["vm_id"])
    store.update_devvm(record, DevVmStatus.RUNNING, started_at=utcnow() - timedelta(minutes=minutes))


def test_the_heartbeat_script_passes_shellcheck(tmp_path):
    import shutil
    import subprocess

    from chalicelib.backends.aws.ec2_devvm import devvm_user_data

    assert shutil.which("shellcheck"), "shellcheck is installed by `make system-deps`"
    script = tmp_path / "devvm.sh"
    script.write_text(devvm_user_data(30, 8))
    result = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_ec2_dev_vm_publishes_its_busiest_gpu_and_stops_itself_when_idle(tmp_path):
    from chalicelib.backends.aws.ec2_devvm import devvm_user_data
    from tests.vmharness import Vm, prepare, run

    vm, env = prepare(tmp_path)
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/bash\nprintf '0\\n0.4\\n'\n")
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    run(vm, devvm_user_data(2, 1, sample_seconds=1), env, timeout=30)
    published = [c["argv"] for c in Vm(tmp_path, tmp_path / "vm").calls("aws")]
    assert len(published) == 2 and all(a[:2] == ["cloudwatch", "put-metric-data"] for a in published)
    assert [a[a.index("--value") + 1] for a in published] == ["0.4", "0.4"]
    assert (tmp_path / "shutdown.called").exists()  # the instance stops (InstanceInitiatedShutdownBehavior)


def test_a_dev_vm_error_is_the_same_word_as_a_reconcile_error():
    from chalicelib.reaper import Action

    assert DevVmAction.ERROR.value == Action.ERROR.value  # one reconcile output, one word per outcome
    assert {a.value for a in DevVmAction} - {a.value for a in Action} == {"stop_devvm"}
