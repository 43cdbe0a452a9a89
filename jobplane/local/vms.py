"""Fake VMs for ec2 jobs in the local stack: each jobplane instance in the embedded AWS runs its user data.

The stack polls DescribeInstances for this stage's jobplane instances. Each new one boots as a local
process tree standing in for the machine: its UserData (base64-decoded, whatever the backend generated)
runs with bash, in a process group and a mount namespace of its own where `/var/lib` is the VM's disk
and `/tmp` its own, as the user local jobs run as. On its PATH: the real aws CLI pointed at the embedded
AWS (with credentials of the instance profile's role for a session named after the instance: the
instance's own, never the stack's), and `shutdown`/`poweroff`/`halt` shims that end the instance
through the EC2 API, as powering off a machine launched with InstanceInitiatedShutdownBehavior=terminate
does. The control plane sees the end as on AWS: the exit report in S3 and the instance's state.

The machine is its process tree: when the instance leaves `running` (cancel, the reaper) the tree is
stopped (TERM, then KILL), and when the tree ends by itself the machine has powered off and the
instance ends by its shutdown behaviour. Only DynamoDB and S3 outlive a stack restart, so each VM's
record (`vms/<instance-id>/vm.json`) lets the next stack put the instance back in the emulator under
its own id; the VM's aws calls wait for the emulator while the stack is down and then reach its new
address, so a job that ran across a restart ends as it would have without one.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chalicelib.backends.aws.base import KIND_DEVVM, TAG_KIND, TAG_MANAGED, TAG_STAGE

log = logging.getLogger("jobplane.local")

# Where the VM's disk and its parts appear inside it.
DISK = "/var/lib"
VM_DIR = f"{DISK}/jobplane-vm"  # the stack's shims and the emulator's current address (read-only to the VM)
USER_DATA = f"{DISK}/cloud/instance/user-data.txt"  # where cloud-init keeps it
VM_PATH = f"{VM_DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LIVE = ("pending", "running")
ENDED = ("shutting-down", "terminated", "stopping", "stopped")
POWER_OFF_GRACE = 5.0  # seconds between TERM and KILL, as a shutdown gives services
EMULATOR_WAIT = 600  # seconds a VM's aws call waits for a stack that is down

# Inside the new mount namespace: the VM's disk and /tmp over the host's, then the user data.
# Folders below the host's /tmp that the VM still needs (the aws CLI's environment when the project lives
# under /tmp, as a CI checkout may) are carried through: bound aside on the VM's disk before its own /tmp
# hides them, then bound back at the same paths inside it. Arguments: disk, tmp, N, N kept folders, argv.
_MOUNT_AND_RUN = """
disk=$1 tmp=$2 n=$3
shift 3
mount --bind "$disk" /var/lib || exit 1
i=0
for kept in "$@"; do
  [ "$i" -lt "$n" ] || break
  mkdir -p "/var/lib/jobplane-vm/kept/$i" && mount --bind "$kept" "/var/lib/jobplane-vm/kept/$i" || exit 1
  i=$((i + 1))
done
mount --bind "$tmp" /tmp || exit 1
i=0
while [ "$i" -lt "$n" ]; do
  mkdir -p "$1" && mount --bind "/var/lib/jobplane-vm/kept/$i" "$1" || exit 1
  shift
  i=$((i + 1))
done
exec "$@"
"""

_AWS_SHIM = """#!/bin/bash
# jobplane local stack: the real aws CLI on this fake VM, pointed at the stack's embedded AWS wherever it
# listens now (a restarted stack listens on another port). While the stack is down a call waits for it
# (up to {wait} s), and a call that failed because the stack stopped under it (its address no longer
# answers, or the endpoint file names another) is made again once the stack is back: to the VM, AWS never
# goes away. The VM's calls are idempotent (s3 cp/sync of files, terminate/stop-instances).
reachable() {{
  local address=${{1#*://}}
  address=${{address%%/*}}
  [ -n "$1" ] && (exec 3<>"/dev/tcp/${{address%:*}}/${{address##*:}}") 2>/dev/null
}}
for ((waited = 0; ; waited++)); do
  endpoint=$(cat {vm_dir}/endpoint 2>/dev/null)
  if reachable "$endpoint"; then
    AWS_ENDPOINT_URL=$endpoint {aws} "$@"
    status=$?
    now=$(cat {vm_dir}/endpoint 2>/dev/null)
    if [ "$status" -eq 0 ] || {{ [ "$now" = "$endpoint" ] && reachable "$endpoint"; }}; then
      exit "$status"
    fi
    echo "aws: the local stack stopped during the call; calling again when it is back" >&2
  fi
  if [ "$waited" -ge {wait} ]; then
    echo "aws: the local stack's embedded AWS is unreachable (waited {wait} s)" >&2
    exit 255
  fi
  sleep 1
done
"""

_SHUTDOWN_SHIM = """#!/bin/bash
# jobplane local stack: powering off this fake VM. EC2 ends an instance whose machine powers off
# (InstanceInitiatedShutdownBehavior: {behaviour}); then nothing on the machine runs any more.
trap '' TERM
aws ec2 {call} --instance-ids {instance} --output text >/dev/null || echo "$0: {call} failed" >&2
kill -TERM 0
sleep {grace}
kill -KILL 0
"""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): with the pid, it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":
        return None  # a zombie has ended
    return int(fields[19])


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode), "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def find_aws_cli() -> str | None:
    """The aws CLI next to the stack's Python (the `local` extra installs it), else the one on PATH."""
    beside = Path(sys.executable).parent / "aws"
    if beside.exists():
        return str(beside)
    return shutil.which("aws")


class VmError(RuntimeError):
    """The stack cannot run fake VMs here (no aws CLI, no mount namespaces, a user that cannot run it)."""


class VmHost:
    """Boots, watches and powers off the fake VMs of one stack; `root` is its `vms/` folder."""

    def __init__(
        self,
        root: Path,
        endpoint: str,
        region: str,
        stage: str,
        account: str,
        run_as: pwd.struct_passwd | None,
        aws_cli: str | None = None,
        grace: float = POWER_OFF_GRACE,
        emulator_wait: int = EMULATOR_WAIT,
        tools: Path | None = None,
    ) -> None:
        import boto3

        self.root = root
        self.endpoint = endpoint
        self.region = region
        self.stage = stage
        self.account = account
        self.run_as = run_as
        self.grace = grace
        self.emulator_wait = emulator_wait
        # The machine image's own programs (nvidia-smi on a GPU image): each file here is on every VM's PATH.
        self.tools = tools
        self.aws_cli = aws_cli or find_aws_cli()
        if not self.aws_cli:
            raise VmError(
                "the ec2 backend in the local stack runs each job's user data with the aws CLI, and there is none: "
                "install jobplane's `local` extra (pip install 'jobplane[local]')"
            )
        kw = {"region_name": region, "endpoint_url": endpoint}
        self.ec2 = boto3.client("ec2", **kw)
        self.iam = boto3.client("iam", **kw)
        self.sts = boto3.client("sts", **kw)
        self.records: dict[str, dict[str, Any]] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)

    # --- checks ------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail now, with the reason, rather than at the first ec2 job: namespaces and the CLI work for the VM user."""
        # The same namespace and user as a VM, without the mounts (there is no disk yet).
        probe = self._command([self.aws_cli, "--version"])
        result = subprocess.run(probe, capture_output=True, text=True, timeout=60, env={"PATH": VM_PATH})
        if result.returncode != 0:
            who = self.run_as.pw_name if self.run_as else "the stack's user"
            raise VmError(
                f"a fake VM for ec2 jobs cannot start here: running {self.aws_cli} as {who} in a new mount "
                f"namespace failed ({(result.stderr or result.stdout).strip()[:300]}); "
                "JOBPLANE_LOCAL_RUN_AS=self runs VMs (and local jobs) as the stack's user"
            )

    # --- the loop ------------------------------------------------------------------------------
    def instances(self) -> list[dict[str, Any]]:
        filters = [
            {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
            {"Name": f"tag:{TAG_STAGE}", "Values": [self.stage]},
        ]
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        found = [i for page in pages for r in page.get("Reservations", []) for i in r.get("Instances", [])]
        # Dev VMs run an interactive machine's script, not a job's: the fake VM is for jobs.
        return [i for i in found if _tags(i).get(TAG_KIND) != KIND_DEVVM]

    def poll(self) -> None:
        """One pass: boot new instances, stop the trees of ended ones, end the instances of ended trees."""
        for instance in self.instances():
            instance_id = instance["InstanceId"]
            state = instance.get("State", {}).get("Name", "")
            record = self.records.get(instance_id)
            try:
                if record is None:
                    if state in LIVE:
                        self.boot(instance)
                elif state in ENDED:
                    if not record.get("powered_off"):
                        self.power_off(instance_id, f"instance {state}")
                elif not self.alive(instance_id) and record.get("pid"):
                    self._machine_off(instance_id)
            except Exception:  # one VM must not stop the others
                log.exception("fake VM %s", instance_id)

    def loop(self, stop: threading.Event, interval: float = 0.5) -> None:
        while not stop.wait(interval):
            try:
                self.poll()
            except Exception:  # the emulator is going away (stop) or answered badly: try again
                log.exception("fake VM poll failed")

    # --- one machine ---------------------------------------------------------------------------
    def folder(self, instance_id: str) -> Path:
        if not instance_id.startswith("i-") or "/" in instance_id:
            raise ValueError(f"not an instance id: {instance_id!r}")
        return self.root / instance_id

    def boot(self, instance: dict[str, Any]) -> None:
        instance_id = instance["InstanceId"]
        folder = self.folder(instance_id)
        folder.mkdir(mode=0o700, exist_ok=True)
        user_data = self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        script = base64.b64decode(user_data.get("UserData", {}).get("Value", "") or b"")
        behaviour = self.ec2.describe_instance_attribute(
            InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
        )["InstanceInitiatedShutdownBehavior"]["Value"]
        record = {
            "instance_id": instance_id,
            "tags": _tags(instance),
            "image_id": instance.get("ImageId"),
            "instance_type": instance.get("InstanceType"),
            "profile_arn": (instance.get("IamInstanceProfile") or {}).get("Arn"),
            "shutdown_behaviour": behaviour,
            "spot": instance.get("InstanceLifecycle") == "spot",
            "launch_time": _iso(instance.get("LaunchTime")),
            "booted_at": _now(),
            "pid": None,
            "start_ticks": None,
            "powered_off": None,
        }
        self.records[instance_id] = record
        disk, tmp = self._disk(folder, instance_id, script, behaviour)
        self._save(instance_id)
        if not script.strip():
            self._machine_off(instance_id, "no user data to run")
            return
        env = {
            "PATH": VM_PATH,
            "HOME": "/tmp",  # noqa: S108 - the VM's own /tmp (a private mount)
            "LANG": "C.UTF-8",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            # No instance metadata service here: the instance's credentials come in the environment.
            "AWS_EC2_METADATA_DISABLED": "true",
            **self._credentials(instance_id, record["profile_arn"]),
        }
        with open(os.open(folder / "console.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600), "ab") as console:
            proc = subprocess.Popen(
                self._command(["/bin/bash", USER_DATA], disk, tmp),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
                cwd="/",
            )
        self._procs[instance_id] = proc
        record.update(pid=proc.pid, start_ticks=_start_ticks(proc.pid))
        self._save(instance_id)
        log.info("fake VM %s booted (pid %s)", instance_id, proc.pid)

    def _disk(self, folder: Path, instance_id: str, script: bytes, behaviour: str) -> tuple[Path, Path]:
        """The VM's /var/lib (its disk: jobplane/ is the job user's, the rest root's) and its /tmp."""
        disk, tmp = folder / "disk", folder / "tmp"
        vm_dir = disk / "jobplane-vm"
        (vm_dir / "bin").mkdir(parents=True, exist_ok=True)
        (disk / "cloud" / "instance").mkdir(parents=True, exist_ok=True)
        (disk / "jobplane").mkdir(mode=0o700, exist_ok=True)
        tmp.mkdir(exist_ok=True)
        for path in (disk, vm_dir, vm_dir / "bin", disk / "cloud", disk / "cloud" / "instance"):
            os.chmod(path, 0o755)  # noqa: S103 - the VM's user reads its disk; the folder above is 0700
        os.chmod(tmp, 0o1777)  # noqa: S103 - a machine's /tmp, inside the 0700 folder
        if self.run_as:
            os.chown(disk / "jobplane", self.run_as.pw_uid, self.run_as.pw_gid)
        user_data = disk / "cloud" / "instance" / "user-data.txt"
        user_data.write_bytes(script)
        os.chmod(user_data, 0o644)  # the VM's user runs it, so reads it
        call = "stop-instances" if behaviour == "stop" else "terminate-instances"
        shims = {
            "aws": _AWS_SHIM.format(vm_dir=VM_DIR, wait=int(self.emulator_wait), aws=shlex.quote(self.aws_cli)),
            "shutdown": _SHUTDOWN_SHIM.format(
                behaviour=behaviour, call=call, instance=shlex.quote(instance_id), grace=int(self.grace)
            ),
        }
        shims["poweroff"] = shims["halt"] = shims["shutdown"]
        if self.tools is not None:
            for tool in sorted(p for p in self.tools.iterdir() if p.is_file()):
                shims.setdefault(tool.name, tool.read_text())
        for name, text in shims.items():
            _write_private(vm_dir / "bin" / name, text, 0o755)
        self._write_endpoint(folder)
        return disk, tmp

    def _write_endpoint(self, folder: Path) -> None:
        vm_dir = folder / "disk" / "jobplane-vm"
        if vm_dir.is_dir():
            _write_private(vm_dir / "endpoint", self.endpoint + "\n", 0o644)

    def _command(self, argv: list[str], disk: Path | None = None, tmp: Path | None = None) -> list[str]:
        unshare = ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            unshare[1:1] = ["--user", "--map-root-user"]  # a user namespace lets an unprivileged stack mount
        drop = []
        if self.run_as:
            drop = ["setpriv", f"--reuid={self.run_as.pw_uid}", f"--regid={self.run_as.pw_gid}", "--clear-groups"]
            drop.append("--")
        mounts = []
        if disk and tmp:
            kept = self._kept_below_tmp()
            mounts = ["/bin/sh", "-c", _MOUNT_AND_RUN, "sh", str(disk), str(tmp), str(len(kept)), *kept]
        return [*unshare, "--", *mounts, *drop, *argv]

    def _kept_below_tmp(self) -> list[str]:
        """The folders the VM's tools run from that the VM's own /tmp would hide: the aws CLI's environment
        (its folder's parent: a venv) and the interpreters it runs on, when they live below /tmp."""
        found: list[str] = []
        candidates = [Path(sys.prefix), Path(sys.base_prefix)]
        if self.aws_cli:
            candidates += [Path(self.aws_cli).parent.parent, Path(self.aws_cli).resolve().parent.parent]
        for path in candidates:
            text = str(path.resolve())
            if (text == "/tmp" or text.startswith("/tmp/")) and text not in found:  # noqa: S108 - the host's /tmp
                found.append(text)
        return found

    def _credentials(self, instance_id: str, profile_arn: str | None) -> dict[str, str]:
        """What the instance metadata service would hand the instance: its profile role's session credentials."""
        if not profile_arn:
            return {}
        profile = self.iam.get_instance_profile(InstanceProfileName=profile_arn.rsplit("/", 1)[-1])
        roles = profile["InstanceProfile"].get("Roles", [])
        if not roles:
            return {}
        creds = self.sts.assume_role(RoleArn=roles[0]["Arn"], RoleSessionName=instance_id)["Credentials"]
        return {
            "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"],
        }

    def alive(self, instance_id: str) -> bool:
        record = self.records.get(instance_id) or {}
        proc = self._procs.get(instance_id)
        if proc is not None and proc.poll() is not None:
            return False  # our child, reaped
        pid, ticks = record.get("pid"), record.get("start_ticks")
        return bool(pid) and ticks is not None and _start_ticks(int(pid)) == ticks

    def power_off(self, instance_id: str, why: str) -> None:
        """The instance ended from outside: its machine stops (TERM to the tree, KILL after the grace)."""
        record = self.records[instance_id]
        record["powered_off"] = why
        self._save(instance_id)
        if not self.alive(instance_id):
            return
        pgid = int(record["pid"])
        _killpg(pgid, signal.SIGTERM)

        def finish() -> None:
            deadline = time.monotonic() + self.grace
            while time.monotonic() < deadline and self.alive(instance_id):
                time.sleep(0.1)
            _killpg(pgid, signal.SIGKILL)
            proc = self._procs.get(instance_id)
            if proc is not None:
                proc.wait()

        threading.Thread(target=finish, name=f"power-off-{instance_id}", daemon=True).start()
        log.info("fake VM %s powered off: %s", instance_id, why)

    def _machine_off(self, instance_id: str, why: str = "the machine powered off") -> None:
        """The tree ended by itself: the machine is off, and EC2 ends the instance by its shutdown behaviour."""
        record = self.records[instance_id]
        if record.get("pid"):
            _killpg(int(record["pid"]), signal.SIGKILL)  # anything it left behind in its group
        record["powered_off"] = why
        self._save(instance_id)
        if record.get("shutdown_behaviour") == "stop":
            self.ec2.stop_instances(InstanceIds=[instance_id])
        else:
            self.ec2.terminate_instances(InstanceIds=[instance_id])

    def _save(self, instance_id: str) -> None:
        _write_private(self.folder(instance_id) / "vm.json", json.dumps(self.records[instance_id], indent=1))

    # --- restarts -----------------------------------------------------------------------------
    def adopt(self) -> dict[str, int]:
        """At start: put every recorded instance the (new) emulator lacks back under its id, then point
        the running VMs at the emulator's new address. Returns counts, for the banner."""
        known = {
            i["InstanceId"]: i
            for page in self.ec2.get_paginator("describe_instances").paginate()
            for r in page.get("Reservations", [])
            for i in r.get("Instances", [])
        }
        counts = {"restored": 0, "running": 0, "ended": 0}
        for path in sorted(self.root.glob("i-*/vm.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("fake VM record %s is unreadable; skipped", path)
                continue
            instance_id = record["instance_id"]
            self.records[instance_id] = record
            restored = instance_id not in known
            if restored:
                self._restore(record)  # running again, as RunInstances leaves it
                counts["restored"] += 1
            if self.alive(instance_id):
                if record.get("powered_off"):  # the instance ended, the tree had not yet
                    self.power_off(instance_id, record["powered_off"])
                else:
                    counts["running"] += 1
            elif record.get("pid"):
                counts["ended"] += 1
                if restored or not record.get("powered_off"):
                    self._machine_off(instance_id, record.get("powered_off") or "powered off while the stack was down")
            self._write_endpoint(path.parent)
        return counts

    def _restore(self, record: dict[str, Any]) -> None:
        """The instance again, under its own id: RunInstances as the backend made it, then moto's record renamed."""
        folder = self.folder(record["instance_id"])
        user_data = (folder / "disk" / "cloud" / "instance" / "user-data.txt").read_bytes()
        tags = [{"Key": k, "Value": v} for k, v in record.get("tags", {}).items() if not k.startswith("aws:")]
        request: dict[str, Any] = {
            "MinCount": 1,
            "MaxCount": 1,
            "ImageId": record["image_id"],
            "InstanceType": record["instance_type"],
            "UserData": user_data.decode("utf-8", "replace"),
            "InstanceInitiatedShutdownBehavior": record.get("shutdown_behaviour") or "terminate",
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
        }
        if record.get("profile_arn"):
            request["IamInstanceProfile"] = {"Arn": record["profile_arn"]}
        if record.get("spot"):
            request["InstanceMarketOptions"] = {"MarketType": "spot"}
        made = self.ec2.run_instances(**request)["Instances"][0]["InstanceId"]
        _rename_instance(self.account, self.region, made, record["instance_id"], record.get("launch_time"))

    def close(self) -> None:
        """The stack stops: the VMs go on, and their aws calls wait for the next stack (its new address)."""
        for folder in self.root.glob("i-*"):
            (folder / "disk" / "jobplane-vm" / "endpoint").unlink(missing_ok=True)


def _rename_instance(account: str, region: str, made: str, instance_id: str, launch_time: str | None) -> None:
    """moto picks instance ids at random and has no API to choose one; the emulator runs in this process."""
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[account][region]
    instance = backend.get_instance(made)
    instance.id = instance_id
    backend.tags[instance_id] = backend.tags.pop(made, {})
    association = backend.iam_instance_profile_associations.pop(made, None)
    if association is not None:
        backend.iam_instance_profile_associations[instance_id] = association
    if launch_time:
        # moto keeps naive UTC times
        instance.launch_time = datetime.fromisoformat(launch_time.replace("Z", "+00:00")).astimezone(UTC)
        instance.launch_time = instance.launch_time.replace(tzinfo=None)


def _tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value) if value else None


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
