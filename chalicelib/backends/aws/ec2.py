"""Ad-hoc EC2 VMs: any image, any GPU, spot; the VM stops itself and the reaper stops it from outside."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

from chalicelib.backends.agent import HEARTBEAT_OBJECT, parse_heartbeat, parse_report
from chalicelib.backends.aws.base import (
    KIND_DEVVM,
    TAG_ATTEMPT,
    TAG_JOB_ID,
    TAG_KIND,
    TAG_MANAGED,
    TAG_NATIVE,
    TAG_STAGE,
    TAG_STOPPED_BY,
    AwsBackend,
    aws_quote,
    env_list,
    epoch_ms,
    instance_type_for,
)
from chalicelib.backends.aws.descriptors import EC2
from chalicelib.backends.aws.errors import aws_errors, error_code
from chalicelib.backends.aws.userdata import MAX_USER_DATA, VmJob, user_data
from chalicelib.backends.base import (
    Handle,
    LaunchResult,
    LogChunk,
    ManagedResource,
    Observation,
    Offset,
    PowerState,
    ResourceKind,
    Utilization,
    bad_offset,
    last_lines,
    parse_native_name,
)
from chalicelib.errors import BackendError, UnsupportedError
from chalicelib.jobs import contract
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.spec_types import JobSpec
from chalicelib.pricing.jobs import Usage

STATE_CHANGE = "EC2 Instance State-change Notification"
SPOT_WARNING = "EC2 Spot Instance Interruption Warning"
_LIVE = ("pending", "running", "stopping", "stopped")
_GONE = ("shutting-down", "terminated")
SPOT_REASON = "Server.SpotInstanceTermination"
LOG_OBJECT = "log.txt"  # the job's output, as the VM's agent ships it next to status.json
log = logging.getLogger(__name__)


def power_state(state: str) -> PowerState:
    """An instance's State.Name -> what it costs: a stopped instance keeps its volumes."""
    if state in ("pending", "running"):
        return PowerState.RUNNING
    if state in ("stopping", "stopped"):
        return PowerState.STOPPED
    return PowerState.GONE


class Ec2Backend(AwsBackend):
    descriptor = EC2
    services = ("ec2",)

    def roles(self) -> tuple[tuple[str, str], ...]:
        # The instance profile's role (same name by convention) is passed to EC2.
        return ((self.settings.ec2_instance_profile, "ec2.amazonaws.com"),)

    def job_role_policy(self) -> dict[str, Any]:
        """The job VM's instance role: the job role's artifact-store access (code, outputs, checkpoints), and what
        the user data itself does with it: put the exit report and the log under the stage's status prefix
        (read back by jobplane, never by the VM) and pull a private ECR image."""
        from chalicelib.backends.aws.staging import job_role_policy

        policy = job_role_policy(self.settings.artifacts_bucket)
        status = f"arn:aws:s3:::{self.settings.artifacts_bucket}/jobplane/{self.settings.stage}/jobs/*"
        policy["Statement"] += [
            {"Sid": "ReportAndLog", "Effect": "Allow", "Action": ["s3:PutObject"], "Resource": [status]},
            {"Sid": "EcrLogin", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
            {
                "Sid": "EcrPull",
                "Effect": "Allow",
                "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                "Resource": "*",
            },
        ]
        return policy

    def status_uri(self, handle: Handle) -> str:
        return f"s3://{self.settings.artifacts_bucket}/jobplane/{self.settings.stage}/jobs/{handle.job_id}/{handle.native_name}/"

    def vm_job(self, job, handle: Handle) -> VmJob:
        spec = job.spec
        bucket = self.settings.artifacts_bucket
        return VmJob(
            job_id=handle.job_id,
            native_id=handle.native_name,  # the VM agent's NATIVE_ID is our name: its status path uses it
            name=job.name,
            command=spec.command,
            env=tuple(env_list(spec, handle)),
            max_runtime_seconds=spec.max_runtime_minutes * 60,
            status_uri=self.status_uri(handle),
            region=self.settings.region,
            image=spec.image,
            gpus=spec.resources.gpus,
            setup=spec.setup,
            code_uri=spec.code_uri,
            code_sha256=spec.code_sha256,
            inputs=tuple(spec.inputs.items()),
            artifacts_uri=contract.artifacts_uri(spec, handle.job_id, bucket),
            checkpoint_uri=contract.checkpoint_location(spec, handle.job_id, bucket),
            checkpoint_interval_seconds=self.settings.ec2_checkpoint_seconds,
            heartbeat_interval_seconds=self.settings.ec2_heartbeat_seconds,
            idle_samples=math.ceil(self.settings.idle_minutes * 60 / self.settings.ec2_heartbeat_seconds),
        )

    def _validate_impl(self, spec: JobSpec) -> None:
        instance_type_for(spec.resources)
        foreign = contract.foreign_uri(spec, "s3")
        if foreign is not None:
            field, uri = foreign
            raise UnsupportedError(
                f"EC2 VMs read and write S3 only: {field} is {uri}",
                [{"field": field, "message": "an s3:// URI on this backend"}],
            )
        from chalicelib.jobs.model import Job, JobStatus, utcnow

        probe = Job("0" * 32, spec.name, "", JobStatus.QUEUED, self.name, spec, utcnow())
        size = len(user_data(self.vm_job(probe, Handle.of(probe))).encode())
        if size > MAX_USER_DATA:
            raise UnsupportedError(
                f"the job's command, setup, inputs and env make a {size}-byte EC2 user data script "
                f"(limit {MAX_USER_DATA})",
                [{"field": "env", "message": "keep them under ~5 KiB together for ec2, or pass data through S3"}],
            )

    def run_request(self, job, handle: Handle) -> dict[str, Any]:
        spec = job.spec
        tags = self.job_tags(handle, job)
        tags["Name"] = f"jobplane-{job.name}"[:255]
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        request: dict[str, Any] = {
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": instance_type_for(spec.resources),
            "ClientToken": handle.native_name,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "UserData": user_data(self.vm_job(job, handle)),
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            **self.placement(),
        }
        if spec.resources.spot:
            request["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        return request

    def placement(self) -> dict[str, Any]:
        """Image, network and instance profile from settings: the same for job VMs and dev VMs."""
        profile = self.settings.ec2_instance_profile
        placed: dict[str, Any] = {
            "IamInstanceProfile": {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
        }
        template = self.settings.ec2_launch_template
        if template:
            key = "LaunchTemplateId" if template.startswith("lt-") else "LaunchTemplateName"
            placed["LaunchTemplate"] = {key: template, "Version": "$Default"}
        if self.settings.ec2_ami:
            placed["ImageId"] = self.settings.ec2_ami
        if not template and not self.settings.ec2_ami:
            raise BackendError("ec2 is not configured: set JOBPLANE_EC2_LAUNCH_TEMPLATE or JOBPLANE_EC2_AMI")
        if self.settings.ec2_subnet:
            placed["SubnetId"] = self.settings.ec2_subnet
        if self.settings.ec2_security_groups:
            placed["SecurityGroupIds"] = list(self.settings.ec2_security_groups)
        return placed

    def _launch_request_impl(self, job, handle: Handle) -> dict[str, Any]:
        return {"service": "ec2", "calls": [{"operation": "RunInstances", "request": self.run_request(job, handle)}]}

    def _launch_impl(self, job, handle: Handle) -> LaunchResult:
        # EC2 honours ClientToken, but emulators do not, and a token alone cannot see a launch
        # that another request made: an instance tagged with this attempt's name is that launch.
        existing = self._instances_of(handle.native_name)
        if existing:
            return LaunchResult(existing[0]["InstanceId"], "AlreadyLaunched")
        with aws_errors("ec2", "RunInstances"):
            response = self.client().run_instances(**self.run_request(job, handle))
        instance = response["Instances"][0]
        return LaunchResult(instance["InstanceId"], instance.get("State", {}).get("Name", "pending"))

    def find_instances(self, *filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Every instance of this stage that matches `filters` (all pages)."""
        stage = {"Name": f"tag:{TAG_STAGE}", "Values": [self.settings.stage]}
        with aws_errors("ec2", "DescribeInstances"):
            pages = self.client().get_paginator("describe_instances").paginate(Filters=[*filters, stage])
            return [i for page in pages for r in page.get("Reservations", []) for i in r.get("Instances", [])]

    def _instances_of(self, native: str) -> list[dict[str, Any]]:
        """Instances tagged with this attempt's native name, newest first (all states)."""
        found = self.find_instances({"Name": f"tag:{TAG_NATIVE}", "Values": [native]})
        return sorted(found, key=lambda i: str(i.get("LaunchTime", "")), reverse=True)

    def _instance(self, instance_id: str) -> dict[str, Any] | None:
        try:
            with aws_errors("ec2", "DescribeInstances"):
                response = self.client().describe_instances(InstanceIds=[instance_id])
        except BackendError as exc:
            if error_code(exc) in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                return None
            raise
        found = [i for r in response.get("Reservations", []) for i in r.get("Instances", [])]
        return found[0] if found else None

    def _resolve(self, handle: Handle) -> dict[str, Any] | None:
        if handle.native_id is not None:
            return self._instance(handle.native_id)
        found = self._instances_of(handle.native_name)
        return found[0] if found else None

    def exit_status(self, job_id: str, native: str) -> bytes | None:
        """The exit report (status.json) the VM uploaded before shutting down, as uploaded, or None."""
        uri = self.status_uri(Handle(job_id, native, parse_native_name(native)[1]))
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        try:
            with aws_errors("s3", "GetObject"):
                return self.client("s3").get_object(Bucket=bucket, Key=prefix + "status.json")["Body"].read()
        except BackendError as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NoSuchBucket"):
                return None
            raise

    def _logs_impl(self, handle: Handle, offset: Offset, limit: int) -> LogChunk:
        # The VM's agent uploads its whole log to <status_uri>log.txt every minute and when the job ends
        # (before status.json), so a byte offset into that object is stable across uploads.
        if not isinstance(offset, int):
            raise bad_offset("an EC2 job's log offset is a byte count: pass the next_offset it returned, or 0")
        bucket, _, prefix = self.status_uri(handle)[len("s3://") :].partition("/")
        try:
            with aws_errors("s3", "GetObject"):
                got = self.client("s3").get_object(
                    Bucket=bucket, Key=prefix + LOG_OBJECT, Range=f"bytes={offset}-{offset + limit - 1}"
                )
        except BackendError as exc:
            code = error_code(exc)
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                ended = self.exit_status(handle.job_id, handle.native_name) is not None
                note = "the VM shipped no log" if ended else "the VM has not shipped a log yet (it uploads each minute)"
                return LogChunk("", offset, ended, note)
            if code in ("InvalidRange", "416"):  # nothing past `offset` yet
                return LogChunk("", offset, self.exit_status(handle.job_id, handle.native_name) is not None)
            raise
        data = got["Body"].read()
        total = int(str(got.get("ContentRange", "")).rpartition("/")[2] or offset + len(data))
        end = offset + len(data)
        ended = end >= total and self.exit_status(handle.job_id, handle.native_name) is not None
        return LogChunk(data.decode("utf-8", errors="replace"), end, ended)

    def _tail_impl(self, handle: Handle, max_lines: int, max_bytes: int) -> list[str] | None:
        # One Range GET of the log object's last bytes (a suffix range), however long the log: never the whole
        # object, and never None for a long one. One byte more than the tail can hold says whether the first
        # line read starts inside a line.
        bucket, _, prefix = self.status_uri(handle)[len("s3://") :].partition("/")
        try:
            with aws_errors("s3", "GetObject"):
                got = self.client("s3").get_object(
                    Bucket=bucket, Key=prefix + LOG_OBJECT, Range=f"bytes=-{max_bytes + 1}"
                )
        except BackendError as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NoSuchBucket", "InvalidRange", "416"):
                return []  # no log shipped yet, or an empty one
            raise
        data = got["Body"].read()
        start = str(got.get("ContentRange", "")).removeprefix("bytes ").partition("-")[0]
        cut = start.isdigit() and int(start) > 0
        return last_lines(data.decode("utf-8", errors="replace"), max_lines, max_bytes, cut=cut)

    def hourly_quote(self, spec, region, usage=None):
        usage = usage or Usage()
        sku = usage.instance_type or instance_type_for(spec.resources)
        spot = spec.resources.spot if usage.spot is None else usage.spot
        return aws_quote(self.catalog, "ec2", region or self.settings.region, sku, spot)

    def observe(self, instance: dict[str, Any], at=None) -> Observation:
        """One instance (DescribeInstances) -> Observation, with the type and market it runs on."""
        seen = self._observe(instance, at)
        if not instance.get("InstanceType"):
            return seen
        # InstanceLifecycle is "spot" on a spot instance and absent on an on-demand one.
        usage = Usage(instance["InstanceType"], 1, instance.get("InstanceLifecycle") == "spot")
        return replace(seen, usage=usage)

    def _observe(self, instance: dict[str, Any], at=None) -> Observation:
        """One instance -> Observation; a gone instance is judged by its exit status."""
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        ours = self.ours(tags)
        job_id, attempt = ours if ours else (None, None)
        state = instance.get("State", {}).get("Name", "")
        instance_id = instance.get("InstanceId")
        reason = (instance.get("StateReason") or {}).get("Code", "")
        if state == "pending":
            return Observation(JobStatus.LAUNCHING, state, instance_id, job_id, attempt, at=at)
        if state in ("running", "stopping", "stopped"):
            launched = epoch_ms(instance.get("LaunchTime"))
            return Observation(JobStatus.RUNNING, state, instance_id, job_id, attempt, at=at, started_at=launched)
        if state == "shutting-down":
            # Not over until terminated: the exit status may still be on its way.
            return Observation(JobStatus.RUNNING, state, instance_id, job_id, attempt, at=at)
        return self._ended(instance_id, job_id, attempt, tags.get(TAG_NATIVE), reason, at)

    def _ended(self, instance_id, job_id, attempt, native, reason: str, at=None) -> Observation:
        report = self.exit_status(job_id, native) if job_id and native else None
        seen = parse_report(report, job_id=job_id, attempt=attempt)
        if seen is not None:
            return replace(
                seen, native_status=f"terminated/{seen.native_status}", native_id=instance_id, at=at or seen.at
            )
        if reason == SPOT_REASON:
            return Observation(
                JobStatus.FAILED,
                "terminated",
                instance_id,
                job_id,
                attempt,
                "spot instance reclaimed by EC2",
                FailureKind.INTERRUPTED,
                at=at,
            )
        return Observation(
            JobStatus.FAILED,
            "terminated",
            instance_id,
            job_id,
            attempt,
            f"instance terminated without an exit status ({reason or 'no state reason'})",
            FailureKind.BACKEND_ERROR,
            at=at,
        )

    def _describe_impl(self, handle: Handle) -> Observation | None:
        instance = self._resolve(handle)
        if instance is None:
            return None
        return self.observe(instance)

    def _cancel_impl(self, handle: Handle) -> None:
        instance = self._resolve(handle)
        if instance is None or instance.get("State", {}).get("Name") in _GONE:
            return
        self._terminate(instance["InstanceId"], "cancelled through jobplane")

    def _terminate(self, instance_id: str, reason: str) -> None:
        with aws_errors("ec2", "CreateTags"):
            self.client().create_tags(Resources=[instance_id], Tags=[{"Key": TAG_STOPPED_BY, "Value": reason[:255]}])
        with aws_errors("ec2", "TerminateInstances"):
            self.client().terminate_instances(InstanceIds=[instance_id])

    def _release_impl(self, handle: Handle, reason: str) -> None:
        instance = self._resolve(handle)
        if instance is not None and instance.get("State", {}).get("Name") in _LIVE:
            self._terminate(instance["InstanceId"], f"released: {reason}")

    def _parse_event_impl(self, raw: dict[str, Any]) -> Observation | None:
        if raw.get("source") != "aws.ec2" or raw.get("detail-type") not in (STATE_CHANGE, SPOT_WARNING):
            return None
        detail = raw.get("detail") or {}
        instance_id = detail.get("instance-id")
        at = epoch_ms(raw.get("time"))
        if not instance_id:
            return None
        # EC2 events carry no tags: the instance's own tags say whose it is.
        instance = self._instance(instance_id)
        tags = {t["Key"]: t["Value"] for t in (instance or {}).get("Tags", [])}
        ours = self.ours(tags)
        if ours is None:
            return None  # not tagged as this deployment's
        job_id, attempt = ours
        if raw["detail-type"] == SPOT_WARNING:
            action = detail.get("instance-action", "terminate")
            return Observation(
                JobStatus.FAILED,
                f"spot-interruption/{action}",
                instance_id,
                job_id,
                attempt,
                f"spot interruption warning: EC2 will {action} {instance_id} in two minutes",
                FailureKind.INTERRUPTED,
                at=at,
            )
        state = str(detail.get("state") or "")
        if state == "pending":
            return Observation(JobStatus.LAUNCHING, state, instance_id, job_id, attempt, at=at)
        if state in ("running", "stopping", "stopped", "shutting-down"):
            return Observation(
                JobStatus.RUNNING,
                state,
                instance_id,
                job_id,
                attempt,
                at=at,
                started_at=at if state == "running" else None,
            )
        reason = ((instance or {}).get("StateReason") or {}).get("Code", "")
        return self._ended(instance_id, job_id, attempt, tags.get(TAG_NATIVE), reason, at)

    # --- the reaper's view ----------------------------------------------------------------
    def _list_managed_impl(self) -> list[ManagedResource]:
        instances = self.find_instances(
            {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
            {"Name": "instance-state-name", "Values": list(_LIVE)},
        )
        found = []
        for instance in instances:
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            state = instance.get("State", {}).get("Name", "")
            attempt = tags.get(TAG_ATTEMPT)
            found.append(
                ManagedResource(
                    backend=self.name,
                    resource_id=instance["InstanceId"],
                    # dev VMs have their own rules (idle_minutes, max_hours): the job sweep skips them
                    kind=ResourceKind.DEVVM if tags.get(TAG_KIND) == KIND_DEVVM else ResourceKind.VM,
                    state=state,
                    power=power_state(state),
                    stage=tags.get(TAG_STAGE),
                    native_name=tags.get(TAG_NATIVE),
                    job_id=tags.get(TAG_JOB_ID),
                    attempt=int(attempt) if attempt and attempt.isdigit() else None,
                    launched_at=epoch_ms(instance.get("LaunchTime")),
                )
            )
        return found

    def _stop_resource_impl(self, resource: ManagedResource, reason: str) -> None:
        self._terminate(resource.resource_id, reason)

    def utilization(self, resource: ManagedResource, window_minutes: float) -> Utilization | None:
        """The agent's heartbeat.json next to the exit report (one S3 GetObject, with the s3:GetObject the
        exit report needs already): its time is S3's LastModified, its GPU use the busiest sample of the
        window. None when it cannot be read (the idle rule is left out this tick)."""
        parsed = parse_native_name(resource.native_name)
        if parsed is None or resource.job_id != parsed[0]:
            return None
        handle = Handle(parsed[0], resource.native_name, parsed[1])
        bucket, _, prefix = self.status_uri(handle)[len("s3://") :].partition("/")
        try:
            with aws_errors("s3", "GetObject"):
                got = self.client("s3").get_object(Bucket=bucket, Key=prefix + HEARTBEAT_OBJECT)
                raw = got["Body"].read()
        except BackendError as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return Utilization(None, None)  # no heartbeat yet
            log.warning("reading the heartbeat of %s failed: %s", resource.resource_id, exc.message)
            return None
        return parse_heartbeat(
            raw,
            job_id=handle.job_id,
            attempt=handle.attempt,
            received_at=got.get("LastModified"),
            window_minutes=window_minutes,
        )

    # --- reconcile at scale: one tag-filtered DescribeInstances, 1,000 instances a page ----------
    describes_by_listing = True

    def _describe_many_impl(self, handles: list[Handle]) -> dict[str, Observation | None]:
        # The stage's instances in every state (a terminated one stays listed for about an hour), the
        # same set describe searches by name; a handle whose instance id is not among them is described
        # alone, as describe would (an instance without the stage's tag, or gone).
        stage = {"Name": f"tag:{TAG_STAGE}", "Values": [self.settings.stage]}
        with aws_errors("ec2", "DescribeInstances"):
            pages = (
                self.client()
                .get_paginator("describe_instances")
                .paginate(Filters=[stage], PaginationConfig={"PageSize": 1000})
            )
            listed = [i for page in pages for r in page.get("Reservations", []) for i in r.get("Instances", [])]
        by_id = {i.get("InstanceId"): i for i in listed}
        by_native: dict[str, list[dict[str, Any]]] = {}
        for instance in listed:
            native = next((t["Value"] for t in instance.get("Tags", []) if t.get("Key") == TAG_NATIVE), None)
            if native:
                by_native.setdefault(native, []).append(instance)
        found: dict[str, Observation | None] = {}
        for h in handles:
            if h.native_id is not None:
                instance = by_id.get(h.native_id)
                found[h.job_id] = self.observe(instance) if instance is not None else self.describe(h)
                continue
            named = sorted(by_native.get(h.native_name, []), key=lambda i: str(i.get("LaunchTime", "")), reverse=True)
            found[h.job_id] = self.observe(named[0]) if named else None
        return found
