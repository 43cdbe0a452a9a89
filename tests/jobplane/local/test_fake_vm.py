"""The local stack's fake VMs: a jobplane instance in the emulator runs its user data as a local process tree."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from chalicelib.backends.aws.base import TAG_JOB_ID, TAG_MANAGED, TAG_STAGE
from jobplane.local.cloud import provision
from jobplane.local.vms import USER_DATA, VmError, VmHost, find_aws_cli
from tests.factories import boto, make_settings

ACCOUNT = "123456789012"


@pytest.fixture
def vm_env(tmp_path, moto_endpoint):
    stage = f"v{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, moto_endpoint, JOBPLANE_STAGE=stage, JOBPLANE_BACKENDS="local,ec2")
    done = provision(settings, moto_endpoint, "us-east-1")
    ec2 = boto(settings, "ec2")

    def host() -> VmHost:
        return VmHost(tmp_path / "vms", moto_endpoint, "us-east-1", stage, ACCOUNT, None, grace=1)

    def launch(script: str, behaviour: str = "terminate", **tags: str) -> str:
        tag_list = [{"Key": k, "Value": v} for k, v in {TAG_MANAGED: "true", TAG_STAGE: stage, **tags}.items()]
        return ec2.run_instances(
            MinCount=1,
            MaxCount=1,
            LaunchTemplate={"LaunchTemplateName": done.env["JOBPLANE_EC2_LAUNCH_TEMPLATE"], "Version": "$Default"},
            IamInstanceProfile={"Name": settings.ec2_instance_profile},
            InstanceInitiatedShutdownBehavior=behaviour,
            UserData=script,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list}],
        )["Instances"][0]["InstanceId"]

    def state(instance_id: str) -> str:
        try:
            found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ec2.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
            return "missing"
        return found[0]["Instances"][0]["State"]["Name"]

    yield {"settings": settings, "host": host, "launch": launch, "state": state, "ec2": ec2, "dir": tmp_path / "vms"}
    for record in (tmp_path / "vms").glob("i-*/vm.json"):
        pid = json.loads(record.read_text()).get("pid")
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def _until(predicate, host: VmHost | None = None, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host is not None:
            host.poll()
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_aws_cli_is_installed_beside_the_stacks_python():
    cli = find_aws_cli()
    assert cli == str(Path(sys.executable).parent / "aws")
    version = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("aws-cli/1."), version.stderr


def test_the_user_data_runs_with_the_instances_own_credentials_and_its_shutdown_terminates_it(vm_env):
    script = "\n".join(
        [
            "#!/bin/bash",
            "aws sts get-caller-identity --query Arn --output text > /var/lib/jobplane/who",
            'echo "$0 $(pwd)" > /var/lib/jobplane/where',
            "echo private > /tmp/mine",
            "shutdown -h now",
            "echo never > /var/lib/jobplane/after",
        ]
    )
    host = vm_env["host"]()
    instance_id = vm_env["launch"](script)
    host.poll()
    disk = vm_env["dir"] / instance_id / "disk"
    assert (disk / "cloud" / "instance" / "user-data.txt").read_text() == script
    _until(lambda: vm_env["state"](instance_id) == "terminated", host, what="the shim to terminate the instance")
    who = (disk / "jobplane" / "who").read_text().strip()
    # The profile role's session, named after the instance: what its metadata service would hand it.
    assert who.endswith(f":assumed-role/{vm_env['settings'].ec2_instance_profile}/{instance_id}")
    assert (disk / "jobplane" / "where").read_text().split() == [USER_DATA, "/"]
    assert (vm_env["dir"] / instance_id / "tmp" / "mine").read_text() == "private\n"  # its own /tmp
    record = json.loads((vm_env["dir"] / instance_id / "vm.json").read_text())
    _until(lambda: _gone(record["pid"]), host, what="the VM's processes to end")
    assert not (disk / "jobplane" / "after").exists()  # nothing runs past the power-off


def test_a_vm_whose_processes_end_without_a_shutdown_has_powered_off(vm_env):
    host = vm_env["host"]()
    instance_id = vm_env["launch"]("#!/bin/bash\necho the script returns without shutting down\n")
    host.poll()
    _until(lambda: vm_env["state"](instance_id) == "terminated", host, what="the instance to end")
    assert "powered off" in json.loads((vm_env["dir"] / instance_id / "vm.json").read_text())["powered_off"]


def test_an_instance_terminated_from_outside_stops_its_vm(vm_env):
    host = vm_env["host"]()
    instance_id = vm_env["launch"]("#!/bin/bash\nsleep 300 &\nsleep 300\n")
    host.poll()
    record = json.loads((vm_env["dir"] / instance_id / "vm.json").read_text())
    assert not _gone(record["pid"])
    vm_env["ec2"].terminate_instances(InstanceIds=[instance_id])
    _until(lambda: _gone(record["pid"]), host, what="the VM's process group to end")


def test_only_this_stages_job_instances_boot(vm_env):
    host = vm_env["host"]()
    ec2 = vm_env["ec2"]
    image = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm*"]}])
    untagged = ec2.run_instances(ImageId=image["Images"][0]["ImageId"], MinCount=1, MaxCount=1, UserData="echo x")
    other = vm_env["launch"]("#!/bin/bash\nsleep 300\n", **{TAG_STAGE: "another-stage"})
    devvm = vm_env["launch"]("#!/bin/bash\nsleep 300\n", **{"jobplane:kind": "devvm"})
    host.poll()
    for instance_id in (untagged["Instances"][0]["InstanceId"], other, devvm):
        assert not (vm_env["dir"] / instance_id).exists()


def _drop_from_emulator(instance_id: str) -> None:
    """What a new stack's emulator is: an EC2 that never heard of the instance (only DynamoDB and S3 replay)."""
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[ACCOUNT]["us-east-1"]
    for reservation in backend.reservations.values():
        reservation.instances = [i for i in reservation.instances if i.id != instance_id]
    backend.tags.pop(instance_id, None)


def test_a_new_stack_puts_a_running_vms_instance_back_under_its_id(vm_env):
    first = vm_env["host"]()
    instance_id = vm_env["launch"]("#!/bin/bash\nsleep 300\n", **{TAG_JOB_ID: "j1"})
    first.poll()
    launched = vm_env["ec2"].describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    first.close()
    _drop_from_emulator(instance_id)
    assert vm_env["state"](instance_id) == "missing"
    second = vm_env["host"]()
    assert second.adopt() == {"restored": 1, "running": 1, "ended": 0}
    restored = vm_env["ec2"].describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert restored["State"]["Name"] == "running"
    assert {t["Key"]: t["Value"] for t in restored["Tags"]}[TAG_JOB_ID] == "j1"
    assert restored["LaunchTime"] == launched["LaunchTime"]
    assert restored["IamInstanceProfile"]["Arn"] == launched["IamInstanceProfile"]["Arn"]
    assert (vm_env["dir"] / instance_id / "disk" / "jobplane-vm" / "endpoint").exists()
    second.poll()  # adopted: no second boot of the same instance
    record = json.loads((vm_env["dir"] / instance_id / "vm.json").read_text())
    vm_env["ec2"].terminate_instances(InstanceIds=[instance_id])
    # The first host's child: reaped here, as the first stack's process would be gone in a real restart.
    child = first._procs[instance_id]
    _until(lambda: child.poll() is not None and _gone(record["pid"]), second, what="the adopted VM to stop")


def test_a_vm_that_ended_while_the_stack_was_down_leaves_no_running_instance(vm_env):
    first = vm_env["host"]()
    instance_id = vm_env["launch"]("#!/bin/bash\nsleep 300\n")
    first.poll()
    record = json.loads((vm_env["dir"] / instance_id / "vm.json").read_text())
    first.close()
    os.killpg(record["pid"], signal.SIGKILL)  # the machine went away with no stack to see it
    first._procs[instance_id].wait()
    _drop_from_emulator(instance_id)
    second = vm_env["host"]()
    assert second.adopt() == {"restored": 1, "running": 0, "ended": 1}
    assert vm_env["state"](instance_id) == "terminated"


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running a VM as another user needs a root stack")


@needs_root
def test_a_vm_runs_as_the_local_jobs_user_and_cannot_read_the_stacks_state(vm_env, request):
    import pwd

    # The stack's state folder is 0700 (here outside /tmp, which the VM has its own of).
    state = Path(tempfile.mkdtemp(dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(state, ignore_errors=True))
    secret = state / "admin-token"
    secret.write_text("jp_secret\n")
    os.chmod(secret, 0o600)
    script = "\n".join(
        [
            "#!/bin/bash",
            "id -un > /var/lib/jobplane/who",
            f"cat {secret} > /var/lib/jobplane/leak 2>&1",
            "touch /var/lib/not-the-jobs 2>/dev/null && echo yes > /var/lib/jobplane/wrote-outside",
            "shutdown -h now",
        ]
    )
    nobody = pwd.getpwnam("nobody")
    host = VmHost(vm_env["dir"], vm_env["host"]().endpoint, "us-east-1", vm_env["settings"].stage, ACCOUNT, nobody)
    instance_id = vm_env["launch"](script)
    host.poll()
    # Ended either way: the shim's own call, or (an aws CLI that user cannot run) the machine's power-off.
    _until(lambda: vm_env["state"](instance_id) == "terminated", host, what="the instance to end")
    disk = vm_env["dir"] / instance_id / "disk" / "jobplane"
    assert (disk / "who").read_text().strip() == "nobody"
    assert "Permission denied" in (disk / "leak").read_text()
    assert not (disk / "wrote-outside").exists()
    assert disk.stat().st_uid == nobody.pw_uid


@needs_root
def test_a_user_who_cannot_run_the_aws_cli_is_refused_at_start_naming_the_setting(vm_env):
    import pwd

    nobody = pwd.getpwnam("nobody")
    host = VmHost(vm_env["dir"], vm_env["host"]().endpoint, "us-east-1", vm_env["settings"].stage, ACCOUNT, nobody)
    drop = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    probe = subprocess.run([*drop, host.aws_cli, "--version"], capture_output=True, timeout=60)
    if probe.returncode == 0:
        host.check()  # this machine's aws CLI is open to nobody: VMs run as nobody
        return
    with pytest.raises(VmError, match="JOBPLANE_LOCAL_RUN_AS=self"):
        host.check()


def test_a_vm_launched_to_stop_on_shutdown_is_stopped_not_terminated(vm_env):
    host = vm_env["host"]()
    instance_id = vm_env["launch"]("#!/bin/bash\npoweroff\n", behaviour="stop")
    host.poll()
    _until(lambda: vm_env["state"](instance_id) == "stopped", host, what="the instance to stop")


def test_folders_below_the_hosts_tmp_the_vm_needs_stay_visible_under_its_own_tmp(tmp_path):
    """A checkout under /tmp (as CI's may be) holds the venv with the aws CLI: the VM's private /tmp must not
    hide it, while the rest of the host's /tmp stays hidden."""
    import os
    import subprocess

    from jobplane.local.vms import _MOUNT_AND_RUN

    assert str(tmp_path).startswith("/tmp/")  # pytest's folders are below the host's /tmp here
    disk, vm_tmp, venv = tmp_path / "disk", tmp_path / "vm-tmp", tmp_path / "checkout" / ".venv"
    (disk / "jobplane-vm").mkdir(parents=True)
    vm_tmp.mkdir()
    venv.mkdir(parents=True)
    (venv / "aws").write_text("the aws CLI\n")
    (tmp_path / "secret").write_text("the host's\n")
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare[1:1] = ["--user", "--map-root-user"]
    probe = f"cat {venv}/aws; test ! -e {tmp_path}/secret && echo hidden"
    done = subprocess.run(
        [
            *unshare,
            "--",
            "/bin/sh",
            "-c",
            _MOUNT_AND_RUN,
            "sh",
            str(disk),
            str(vm_tmp),
            "1",
            str(venv),
            "/bin/sh",
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the aws CLI\nhidden\n"


# --- idle stop: the real EC2 user data's heartbeat, read by reconcile ---------------------------------------
IDLE = {"JOBPLANE_IDLE_MINUTES": "0.15", "JOBPLANE_EC2_HEARTBEAT_SECONDS": "2"}  # a 9 s window, 5 beats


@pytest.fixture
def idle_env(vm_env, tmp_path, memory_store, moto_endpoint):
    """A JobService on the provisioned stage whose ec2 jobs boot as fake VMs; `gpu` puts an nvidia-smi on them."""
    from chalicelib.jobs.service import JobService

    base = vm_env["settings"]
    done = provision(base, moto_endpoint, "us-east-1")
    settings = make_settings(
        tmp_path, moto_endpoint, JOBPLANE_STAGE=base.stage, JOBPLANE_BACKENDS="local,ec2", **done.env, **IDLE
    )
    tools = tmp_path / "image-tools"
    tools.mkdir()

    def gpu(percent: str) -> None:
        (tools / "nvidia-smi").write_text(f"#!/bin/bash\necho {percent}\necho 3\n")  # two GPUs: the busiest counts

    host = VmHost(vm_env["dir"], moto_endpoint, "us-east-1", base.stage, ACCOUNT, None, grace=1, tools=tools)
    return {"service": JobService(memory_store, settings), "host": host, "gpu": gpu, "s3": boto(settings, "s3")}


def _ec2_job(env, command):
    from tests.factories import submit

    job = submit(env["service"], backend="ec2", command=command)
    assert job.native_id, job.status_reason
    env["host"].poll()
    return job


def _beats(env, job) -> dict:
    from chalicelib.backends.aws.ec2 import Ec2Backend
    from chalicelib.backends.base import Handle

    backend = env["service"].backend("ec2")
    assert isinstance(backend, Ec2Backend)
    bucket, _, prefix = backend.status_uri(Handle.of(job))[len("s3://") :].partition("/")
    try:
        return json.loads(env["s3"].get_object(Bucket=bucket, Key=prefix + "heartbeat.json")["Body"].read())
    except env["s3"].exceptions.NoSuchKey:
        return {}


def _reconcile(env, job):
    from chalicelib.reaper import reconcile

    decisions = [d for d in reconcile(env["service"]) if d.job_id == job.job_id]
    return decisions, env["service"].store.get_job(job.job_id)


def test_a_vm_reporting_zero_gpu_for_the_window_is_terminated_by_reconcile_with_the_reason(idle_env, vm_env):
    idle_env["gpu"]("0")
    job = _ec2_job(idle_env, ["sleep", "300"])
    beat = _until(lambda: (b := _beats(idle_env, job)).get("gpu_samples", 0) >= 5 and b, idle_env["host"], 60, "beats")
    assert (beat["job_id"], beat["attempt"], beat["gpu_percent"], beat["interval_seconds"]) == (job.job_id, 1, 3, 2)
    decisions, after = _reconcile(idle_env, job)
    assert [(d.action.value, d.reason) for d in decisions][-1] == (
        "stop_idle",
        "GPU utilisation 3.0% < 5.0% for 0.15 min",
    )
    assert (after.status.value, after.failure_kind.value) == ("FAILED", "idle")
    assert "GPU utilisation 3.0% < 5.0%" in after.failure_reason
    _until(lambda: vm_env["state"](job.native_id) == "terminated", idle_env["host"], what="the instance to end")


def test_a_vm_whose_agent_stops_heartbeating_is_terminated_by_reconcile(idle_env, vm_env):
    # The job stops the agent's heartbeat (SIGSTOP), as a wedged machine would.
    job = _ec2_job(
        idle_env, ["sh", "-c", 'kill -STOP "$(cat ../heartbeat.pid)" && touch ../heartbeat.stopped; sleep 300']
    )
    stopped = vm_env["dir"] / job.native_id / "disk" / "jobplane" / "heartbeat.stopped"
    _until(stopped.exists, idle_env["host"], 60, "the job to stop the heartbeat")
    beats = _beats(idle_env, job).get("gpu_samples")
    time.sleep(10)  # past the 9 s window: the VM is old enough to judge, its last beat older than the window
    assert _beats(idle_env, job).get("gpu_samples") == beats  # no beat since
    decisions, after = _reconcile(idle_env, job)
    assert [(d.action.value, d.reason) for d in decisions][-1] == ("stop_idle", "no heartbeat for 0.15 min")
    assert (after.status.value, after.failure_kind.value) == ("FAILED", "idle")
    _until(lambda: vm_env["state"](job.native_id) == "terminated", idle_env["host"], what="the instance to end")


def test_a_busy_vm_survives_reconcile(idle_env, vm_env):
    idle_env["gpu"]("87")
    job = _ec2_job(idle_env, ["sleep", "300"])
    _until(lambda: _beats(idle_env, job).get("gpu_samples", 0) >= 5, idle_env["host"], 60, "beats")
    assert _beats(idle_env, job)["gpu_percent"] == 87
    decisions, after = _reconcile(idle_env, job)
    assert "stop_idle" not in [d.action.value for d in decisions]
    assert after.status.value == "RUNNING" and vm_env["state"](job.native_id) == "running"


# --- the aws shim across a stack restart (the cause of the old restart flake) ---------------------------------


def _shim(tmp_path, fake_aws: str) -> tuple[Path, Path]:
    """The VM's aws shim with `fake_aws` standing in for the CLI, and its endpoint file."""
    import shlex

    from jobplane.local.vms import _AWS_SHIM

    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    cli = tmp_path / "real-aws"
    cli.write_text("#!/bin/bash\n" + fake_aws)
    cli.chmod(0o755)
    shim = vm_dir / "aws"
    shim.write_text(_AWS_SHIM.format(vm_dir=vm_dir, wait=20, aws=shlex.quote(str(cli))))
    shim.chmod(0o755)
    return shim, vm_dir / "endpoint"


def _listener():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_call_the_stopping_stack_cut_off_is_made_again_at_the_stacks_new_address(tmp_path):
    """The restart flake: the VM's first call (the checkpoint restore) was in flight when the test stopped the
    stack, failed with "Could not connect", and the job ended FAILED in staging. The call is now retried."""
    old, old_url = _listener()
    new, new_url = _listener()
    calls = tmp_path / "calls"
    # The first call: the stack stops under it (its port closes) and the next stack writes its address.
    fake = f"""echo "$AWS_ENDPOINT_URL" >> {calls}
if [ "$AWS_ENDPOINT_URL" = {old_url} ]; then
  kill -USR1 {os.getpid()}; sleep 1; echo 'fatal error: Could not connect to the endpoint URL' >&2; exit 255
fi
echo "restored from $AWS_ENDPOINT_URL"
"""
    shim, endpoint = _shim(tmp_path, fake)
    endpoint.write_text(old_url + "\n")

    def restart(*_):
        old.close()
        endpoint.write_text(new_url + "\n")

    previous = signal.signal(signal.SIGUSR1, restart)
    try:
        done = subprocess.run([str(shim), "s3", "sync", "s3://b/ck/", "ck"], capture_output=True, text=True, timeout=60)
    finally:
        signal.signal(signal.SIGUSR1, previous)
        new.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"restored from {new_url}"
    assert calls.read_text().split() == [old_url, new_url]
    assert "calling again" in done.stderr


def test_a_call_that_fails_while_the_stack_stays_up_fails_once(tmp_path):
    up, url = _listener()
    calls = tmp_path / "calls"
    shim, endpoint = _shim(tmp_path, f"echo x >> {calls}; echo 'An error occurred (NoSuchBucket)' >&2; exit 1\n")
    endpoint.write_text(url + "\n")
    try:
        done = subprocess.run([str(shim), "s3", "cp", "s3://b/k", "k"], capture_output=True, text=True, timeout=60)
    finally:
        up.close()
    assert done.returncode == 1 and "NoSuchBucket" in done.stderr
    assert calls.read_text().split() == ["x"]
