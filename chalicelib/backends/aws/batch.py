"""AWS Batch: queues and pipelines; one job definition per image, registered on demand."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from typing import Any

from chalicelib.backends import rendezvous
from chalicelib.backends.aws import staging
from chalicelib.backends.aws.base import AwsBackend, aws_quote, container_instance_type, env_list, epoch_ms
from chalicelib.backends.aws.cwlogs import Stream, read_streams
from chalicelib.backends.aws.descriptors import BATCH
from chalicelib.backends.aws.errors import aws_errors
from chalicelib.backends.base import (
    Handle,
    LaunchResult,
    LogChunk,
    ManagedResource,
    Observation,
    Offset,
    PowerState,
    ResourceKind,
    parse_native_name,
)
from chalicelib.errors import BackendError, UnsupportedError
from chalicelib.jobs import contract
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.spec_types import JobSpec
from chalicelib.pricing import Unknown
from chalicelib.pricing.jobs import Usage

log = logging.getLogger(__name__)

DETAIL_TYPE = "Batch Job State Change"
CANCEL_REASON = "cancelled through jobplane"
LOG_GROUP = "/aws/batch/job"  # where Batch's awslogs default writes, unless the definition names another
_LAUNCHING = {"SUBMITTED", "PENDING", "RUNNABLE", "STARTING"}
_ALL_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
CONTAINER = "job"
# The helpers run the AWS CLI image as it is (Batch's containers take no entryPoint, and that image's is `aws`):
# stage-tools downloads jobplane's AWS CLI alias file; stage-in (the alias running staging.STAGE_IN) restores the
# checkpoint and downloads code and inputs; stage-out (staging.STAGE_OUT) syncs checkpoints while the job runs
# and uploads outputs and the last checkpoint when it ends or is stopped.
STAGE_TOOLS = "stage-tools"
STAGE_IN = "stage-in"
STAGE_OUT = "stage-out"
DEFINITION_VERSION = "staged-2"
HELPER_MEMORY_MIB = "128"
ALIAS_FILE = f"{staging.CLI_HOME}/.aws/cli/alias"


def definition_name(image: str, multinode: bool = False) -> str:
    """One job definition per image (every per-job value comes at SubmitJob): a stable name; a multi-node
    parallel one of its own per image (its node count, too, comes at SubmitJob)."""
    key = f"{image}\0{DEFINITION_VERSION}" + ("\0multinode" if multinode else "")
    return "jp-img-" + hashlib.sha256(key.encode()).hexdigest()[:20]


#: every node of a multi-node parallel job runs the same containers: one open node range (open, so SubmitJob's
#: numNodes may set the count)
ALL_NODES = "0:"


class BatchBackend(AwsBackend):
    descriptor = BATCH
    services = ("batch",)
    stages_files = True

    def roles(self) -> tuple[tuple[str, str], ...]:
        return ((self.settings.batch_job_role, "ecs-tasks.amazonaws.com"),)

    def hourly_quote(self, spec, region, usage=None):
        if usage is None or not usage.instance_type:
            return "aws-batch", Unknown(
                "AWS Batch has not said which instance the job runs on (its container instance's type is read "
                "once it runs; a Fargate compute environment has none)"
            )
        # A spot job runs in the spot queue, whose compute environment buys spot instances.
        spot = spec.resources.spot if usage.spot is None else usage.spot
        priced, quote = aws_quote(self.catalog, "ec2", region or self.settings.region, usage.instance_type, spot)
        return f"{priced} (its container instance)", quote

    priced_by_placement = True

    def usage_of(self, detail: dict[str, Any]) -> Usage | None:
        """The type of the container instance a running or ended job was placed on, or None."""
        tasks = (detail.get("ecsProperties") or {}).get("taskProperties") or []
        arn = next((t.get("containerInstanceArn") for t in tasks if t.get("containerInstanceArn")), None)
        arn = arn or (detail.get("container") or {}).get("containerInstanceArn")
        found = container_instance_type(self.client("ecs"), None, arn)
        return Usage(found, 1, None) if found else None

    def _priced(self, observation: Observation, detail: dict[str, Any]) -> Observation:
        if observation.status is JobStatus.LAUNCHING:
            return observation
        return replace(observation, usage=self.usage_of(detail))

    def _validate_impl(self, spec: JobSpec) -> None:
        if not spec.image:
            raise UnsupportedError(
                "AWS Batch runs a container image", [{"field": "image", "message": "required for aws-batch"}]
            )
        staging.require_s3(spec, "AWS Batch")
        if spec.resources.nodes > 1 and spec.resources.spot:
            raise UnsupportedError(
                "AWS Batch runs multi-node parallel jobs on On-Demand capacity only",
                [{"field": "resources.spot", "message": "Batch refuses Spot compute environments for multi-node jobs"}],
            )
        if spec.resources.spot and not self.settings.batch_spot_job_queue:
            raise UnsupportedError(
                "no spot job queue is configured for AWS Batch",
                [{"field": "resources.spot", "message": "set JOBPLANE_BATCH_SPOT_JOB_QUEUE, or use sagemaker/ec2"}],
            )

    def queue_for(self, spec: JobSpec) -> str:
        resources = spec.resources
        if resources.spot and self.settings.batch_spot_job_queue:
            return self.settings.batch_spot_job_queue
        if resources.gpus > 0:
            return self.settings.batch_gpu_job_queue
        return self.settings.batch_job_queue

    def job_definition_request(self, spec: JobSpec) -> dict[str, Any]:
        """RegisterJobDefinition's arguments for the spec's image and staging shape: a multi-container job
        (ecsProperties) whose helpers share the task's volumes with the job's container. Every per-job value
        (URIs, command, env, size) comes at SubmitJob as overrides."""
        layout = staging.CONTAINERS
        shared = staging.mount(staging.VOLUME, staging.ROOT)
        inputs = staging.mount(staging.INPUT_VOLUME, layout.input_dir)
        helper_memory = [{"type": "MEMORY", "value": HELPER_MEMORY_MIB}]

        def helper(name: str, essential: bool = False, after: list[dict[str, str]] | None = None) -> dict[str, Any]:
            container: dict[str, Any] = {
                "name": name,
                "image": staging.AWS_CLI_IMAGE,
                "essential": essential,
                "command": ["--version"],  # every submission overrides it
                "mountPoints": [shared, inputs],
                # Where the AWS CLI finds jobplane's aliases (stage-tools puts the file there).
                "environment": [{"name": "HOME", "value": staging.CLI_HOME}],
                "resourceRequirements": helper_memory,
            }
            if after:
                container["dependsOn"] = after
            return container

        staged = [{"containerName": STAGE_IN, "condition": "SUCCESS"}]
        job = {
            "name": CONTAINER,
            "image": spec.image,
            # Not essential: when it ends, stage-out (the one essential container) uploads and ends the job.
            "essential": False,
            "command": ["/bin/sh", "-c", staging.WRAPPER, "jobplane"],
            "dependsOn": staged,
            "mountPoints": [shared, staging.mount(staging.INPUT_VOLUME, layout.input_dir, read_only=True)],
            # Per-job values come as overrides at SubmitJob; these are the floor.
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}],
        }
        containers = [
            helper(STAGE_TOOLS),
            helper(STAGE_IN, after=[{"containerName": STAGE_TOOLS, "condition": "SUCCESS"}]),
            job,
            # Starts with the job, so it is there to sync while it runs and to upload when Batch stops it.
            helper(STAGE_OUT, True, staged),
        ]
        ecs = {
            "taskProperties": [
                {
                    "containers": containers,
                    "volumes": [{"name": staging.VOLUME}, {"name": staging.INPUT_VOLUME}],
                    "taskRoleArn": self.role(self.settings.batch_job_role),
                }
            ]
        }
        multinode = spec.resources.nodes > 1
        shape: dict[str, Any] = {"type": "container", "ecsProperties": ecs}
        if multinode:
            # A multi-node parallel job: node 0 is the main node; each node runs the task above.
            nodes = {"numNodes": spec.resources.nodes, "mainNode": 0}
            shape = {
                "type": "multinode",
                "nodeProperties": {**nodes, "nodeRangeProperties": [{"targetNodes": ALL_NODES, "ecsProperties": ecs}]},
            }
        return {
            "jobDefinitionName": definition_name(spec.image, multinode),
            **shape,
            "propagateTags": True,
            "tags": {
                "jobplane:managed": "true",
                "jobplane:stage": self.settings.stage,
                "jobplane:image": spec.image[:256],
            },
        }

    def job_definition(self, spec: JobSpec) -> str:
        """The ARN of the spec's active job definition, registered the first time its image and shape are used."""
        name = definition_name(spec.image, spec.resources.nodes > 1)
        with aws_errors("batch", "DescribeJobDefinitions"):
            found = self.client().describe_job_definitions(jobDefinitionName=name, status="ACTIVE")
        active = [d for d in found.get("jobDefinitions", []) if d.get("status", "ACTIVE") == "ACTIVE"]
        if active:
            return max(active, key=lambda d: d.get("revision", 0))["jobDefinitionArn"]
        request = self.job_definition_request(spec)
        try:
            with aws_errors("batch", "RegisterJobDefinition"):
                registered = self.client().register_job_definition(**request)
        except BackendError as exc:
            if _EMULATOR_REFUSAL not in exc.message or "ecsProperties" not in request:
                raise
            # Only moto (the local stack's emulator, which runs no container anyway) answers so: it knows no
            # ecsProperties. There the definition is the job's container alone, and it says so in the log.
            log.warning("batch: %s; registering the job's container alone, without staging", exc.message)
            with aws_errors("batch", "RegisterJobDefinition"):
                registered = self.client().register_job_definition(**_single_container(request))
        return registered["jobDefinitionArn"]

    def submit_request(self, job, handle: Handle, definition: str) -> dict[str, Any]:
        spec = job.spec
        resources = spec.resources
        layout = staging.CONTAINERS
        bucket = self.settings.artifacts_bucket
        checkpoint = contract.checkpoint_location(spec, job.job_id, bucket)
        requirements = [
            {"type": "VCPU", "value": f"{float(resources.cpus):g}"},
            {"type": "MEMORY", "value": str(int(float(resources.memory_gb) * 1024))},
        ]
        if resources.gpus > 0:
            requirements.append({"type": "GPU", "value": str(resources.gpus)})
        env = dict(env_list(spec, handle))
        env.update(layout.variables(handle.job_id, handle.attempt))
        script = staging.WRAPPER
        if resources.nodes > 1:
            # Each node's rank and the main node's address come from Batch's AWS_BATCH_JOB_* variables.
            env.update(rendezvous.launch_env(spec))
            script = rendezvous.prelude(rendezvous.BATCH) + script
        aliases = f"s3://{bucket}/{staging.cli_aliases_key()}"
        artifacts = contract.artifacts_uri(spec, job.job_id, bucket)
        overrides: list[dict[str, Any]] = [
            {"name": STAGE_TOOLS, "command": ["s3", "cp", aliases, ALIAS_FILE, "--only-show-errors"]},
            {"name": STAGE_IN, "command": [staging.ALIAS_STAGE_IN, *staging.stage_in_args(spec, checkpoint)]},
            {
                "name": CONTAINER,
                "command": ["/bin/sh", "-c", script, "jobplane", *staging.wrapper_args(spec, layout)],
                "environment": [{"name": k, "value": v} for k, v in sorted(env.items())],
                "resourceRequirements": requirements,
            },
            {"name": STAGE_OUT, "command": [staging.ALIAS_STAGE_OUT, *staging.stage_out_args(artifacts, checkpoint)]},
        ]
        override: dict[str, Any] = {"ecsPropertiesOverride": {"taskProperties": [{"containers": overrides}]}}
        if resources.nodes > 1:
            override = {
                "nodeOverrides": {
                    "numNodes": resources.nodes,
                    "nodePropertyOverrides": [{"targetNodes": ALL_NODES, **override}],
                }
            }
        return {
            "jobName": handle.native_name,
            "jobQueue": self.queue_for(spec),
            "jobDefinition": definition,
            **override,
            # Batch's minimum is 60 s; the job's own limit is enforced by Batch, not by jobplane.
            "timeout": {"attemptDurationSeconds": max(60, spec.max_runtime_minutes * 60)},
            "tags": self.job_tags(handle, job),
            "propagateTags": True,
        }

    def _launch_request_impl(self, job, handle: Handle) -> dict[str, Any]:
        # The definition's ARN is known once it is registered (or found): a dry run registers nothing.
        definition = "(the ARN RegisterJobDefinition returns)"
        return {
            "service": "batch",
            "calls": [
                {"operation": "RegisterJobDefinition", "request": self.job_definition_request(job.spec)},
                {"operation": "SubmitJob", "request": self.submit_request(job, handle, definition)},
            ],
        }

    def _launch_impl(self, job, handle: Handle) -> LaunchResult:
        name = handle.native_name
        # Batch job names are not unique: a retried launch finds the first submission by name.
        existing = self._find_by_name(name, self.queue_for(job.spec))
        if existing is not None:
            return LaunchResult(existing["jobId"], "AlreadyLaunched")
        definition = self.job_definition(job.spec)
        self.put_cli_aliases()
        with aws_errors("batch", "SubmitJob"):
            submitted = self.client().submit_job(**self.submit_request(job, handle, definition))
        return LaunchResult(submitted["jobId"], "SUBMITTED")

    def put_cli_aliases(self) -> None:
        """The helpers' alias file in the artifact store, put once (its key is its digest)."""
        s3, bucket, key = self.client("s3"), self.settings.artifacts_bucket, staging.cli_aliases_key()
        try:
            with aws_errors("s3", "HeadObject"):
                s3.head_object(Bucket=bucket, Key=key)
            return
        except BackendError:
            pass  # not there yet (or not readable: the put says which)
        with aws_errors("s3", "PutObject"):
            s3.put_object(Bucket=bucket, Key=key, Body=staging.cli_aliases().encode(), ContentType="text/plain")

    def _find_by_name(self, name: str, queue: str | None = None) -> dict[str, Any] | None:
        queues = (
            [queue]
            if queue
            else list(
                dict.fromkeys(
                    q
                    for q in (
                        self.settings.batch_job_queue,
                        self.settings.batch_gpu_job_queue,
                        self.settings.batch_spot_job_queue,
                    )
                    if q
                )
            )
        )
        for q in queues:
            with aws_errors("batch", "ListJobs"):
                page = self.client().list_jobs(jobQueue=q, filters=[{"name": "JOB_NAME", "values": [name]}])
            found = [j for j in page.get("jobSummaryList", []) if j.get("jobName") == name]
            if found:
                return max(found, key=lambda j: j.get("createdAt", 0))
        return None

    def _job_id(self, handle: Handle) -> str | None:
        if handle.native_id is not None:
            return handle.native_id  # Batch's own job id
        found = self._find_by_name(handle.native_name)
        return found["jobId"] if found else None

    def _describe_impl(self, handle: Handle) -> Observation | None:
        job_id = self._job_id(handle)
        if job_id is None:
            return None
        with aws_errors("batch", "DescribeJobs"):
            jobs = self.client().describe_jobs(jobs=[job_id]).get("jobs", [])
        if not jobs:
            return None
        return self._priced(self.observe(jobs[0], handle.job_id, handle.attempt), jobs[0])

    def log_groups(self) -> tuple[str, ...]:
        return (LOG_GROUP,)

    def log_streams(self, handle: Handle) -> list[Stream]:
        """Each attempt's stream, then the current one: the names DescribeJobs gives, in its group."""
        job_id = self._job_id(handle)
        if job_id is None:
            return []
        with aws_errors("batch", "DescribeJobs"):
            jobs = self.client().describe_jobs(jobs=[job_id]).get("jobs", [])
        if not jobs:
            return []
        container = _containers(jobs[0]).get(CONTAINER) or jobs[0].get("container") or {}
        group = log_group_of(container)
        names = [
            (_containers(a).get(CONTAINER) or a.get("container") or {}).get("logStreamName")
            for a in jobs[0].get("attempts") or []
        ]
        names.append(container.get("logStreamName"))
        return [(group, name) for name in dict.fromkeys(n for n in names if n)]

    def _logs_impl(self, handle: Handle, offset: Offset, limit: int) -> LogChunk:
        return read_streams(self.client("logs"), lambda: self.log_streams(handle), offset, limit)

    def _node_logs_impl(self, handle: Handle, node: int, offset: Offset, limit: int) -> LogChunk:
        # Node i of a multi-node parallel job is the job <jobId>#<i>, with streams of its own.
        job_id = self._job_id(handle)
        if job_id is None:
            return LogChunk("", offset, False, note="AWS Batch has no job for this attempt yet")
        return read_streams(
            self.client("logs"), lambda: self.log_streams(replace(handle, native_id=f"{job_id}#{node}")), offset, limit
        )

    def _cancel_impl(self, handle: Handle) -> None:
        job_id = self._job_id(handle)
        if job_id is None:
            return
        with aws_errors("batch", "TerminateJob"):
            self.client().terminate_job(jobId=job_id, reason=CANCEL_REASON)

    def observe(self, detail: dict[str, Any], job_id: str | None, attempt: int | None, at=None) -> Observation:
        """A JobDetail (DescribeJobs, or an event's detail) -> Observation."""
        status = str(detail.get("status") or "")
        reason = str(detail.get("statusReason") or "")
        attempts = detail.get("attempts") or []
        container = detail.get("container") or {}
        # A multi-container job: its containers by name (the job's own, and jobplane's helpers).
        named = _containers(detail)
        if CONTAINER in named:
            container = named[CONTAINER]
        exit_code = container.get("exitCode")
        if exit_code is None and attempts:
            last = attempts[-1]
            exit_code = (_containers(last).get(CONTAINER) or last.get("container") or {}).get("exitCode")
        failed_helper = next(
            (
                (name, c.get("exitCode"))
                for name, c in named.items()
                if name != CONTAINER and c.get("exitCode") not in (None, 0)
            ),
            None,
        )
        kind = None
        if status in _LAUNCHING:
            state = JobStatus.LAUNCHING
        elif status == "RUNNING":
            state = JobStatus.RUNNING
        elif status in ("SUCCEEDED", "FAILED") and failed_helper is not None and exit_code in (None, 0):
            # The job never ran (a download failed) or ran and its outputs or checkpoint did not all upload.
            name, code = failed_helper
            state = JobStatus.FAILED
            if exit_code is None:
                kind, reason = FailureKind.USER_ERROR, f"staging failed: {name} exited {code} (see its log)"
            else:
                kind, reason = FailureKind.BACKEND_ERROR, f"the job succeeded but {name} exited {code}"
        elif status == "SUCCEEDED" and exit_code not in (None, 0):
            state, kind = JobStatus.FAILED, FailureKind.USER_ERROR  # the uploads succeeded, the job did not
        elif status == "SUCCEEDED":
            state = JobStatus.SUCCEEDED
        elif status == "FAILED":
            state = JobStatus.FAILED
            kind = batch_failure_kind(reason, exit_code, attempts)
        else:
            state = JobStatus.LAUNCHING
        return Observation(
            status=state,
            native_status=status,
            native_id=detail.get("jobId"),
            job_id=job_id,
            attempt=attempt,
            reason=reason or container.get("reason") or f"Batch: {status}",
            failure_kind=kind,
            exit_code=exit_code,
            at=at or epoch_ms(detail.get("stoppedAt")),
            started_at=epoch_ms(detail.get("startedAt")),
            # RUNNABLE: the job waits in the queue until its compute environment has instances for it
            waiting_for_capacity=status == "RUNNABLE",
        )

    def _parse_event_impl(self, raw: dict[str, Any]) -> Observation | None:
        if raw.get("source") != "aws.batch" or raw.get("detail-type") != DETAIL_TYPE:
            return None
        detail = raw.get("detail") or {}
        parsed = parse_native_name(detail.get("jobName"))
        tags = detail.get("tags") or {}
        if parsed is None or (tags and self.ours(tags) != parsed):
            return None  # not a jp- name, or one from another stage or another deployment
        job_id, attempt = parsed
        return self._priced(self.observe(detail, job_id, attempt, at=epoch_ms(raw.get("time"))), detail)

    # --- reconcile at scale: DescribeJobs takes up to 100 job ids -----------------------------
    def _describe_many_impl(self, handles: list[Handle]) -> dict[str, Observation | None]:
        # A handle without Batch's job id (its launch response was lost) is found by name, as describe does.
        found: dict[str, Observation | None] = {h.job_id: self.describe(h) for h in handles if h.native_id is None}
        known = [h for h in handles if h.native_id is not None]
        for start in range(0, len(known), self.describe_batch):
            chunk = known[start : start + self.describe_batch]
            with aws_errors("batch", "DescribeJobs"):
                jobs = self.client().describe_jobs(jobs=[h.native_id for h in chunk]).get("jobs", [])
            by_id = {j.get("jobId"): j for j in jobs}
            for h in chunk:
                detail = by_id.get(h.native_id)
                found[h.job_id] = None if detail is None else self.observe(detail, h.job_id, h.attempt)
        return found

    # --- the orphan sweep: every live job in jobplane's queues, tags read only before one is stopped -------
    #: the statuses of a job that still holds (or waits for) compute
    LIVE_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")

    def queues(self) -> list[str]:
        return list(
            dict.fromkeys(
                q
                for q in (
                    self.settings.batch_job_queue,
                    self.settings.batch_gpu_job_queue,
                    self.settings.batch_spot_job_queue,
                )
                if q
            )
        )

    def _list_managed_impl(self) -> list[ManagedResource]:
        """ListJobs per queue and live status (a summary has no tags): the jp- names, unverified."""
        found = []
        paginator = self.client().get_paginator("list_jobs")
        for queue in self.queues():
            for status in self.LIVE_STATUSES:
                with aws_errors("batch", "ListJobs"):
                    for page in paginator.paginate(jobQueue=queue, jobStatus=status):
                        for summary in page.get("jobSummaryList", []):
                            parsed = parse_native_name(summary.get("jobName"))
                            if parsed is None:
                                continue  # not a name jobplane gives
                            found.append(
                                ManagedResource(
                                    backend=self.name,
                                    resource_id=str(summary["jobId"]),
                                    kind=ResourceKind.JOB,
                                    state=str(summary.get("status") or status),
                                    power=PowerState.RUNNING,
                                    stage=None,
                                    native_name=summary.get("jobName"),
                                    job_id=parsed[0],
                                    attempt=parsed[1],
                                    launched_at=epoch_ms(summary.get("createdAt")),
                                    unverified=True,
                                )
                            )
        return found

    def _confirm_impl(self, resources: list[ManagedResource]) -> list[ManagedResource]:
        """DescribeJobs (100 ids a call) carries each job's tags."""
        found = []
        for start in range(0, len(resources), self.describe_batch):
            chunk = resources[start : start + self.describe_batch]
            with aws_errors("batch", "DescribeJobs"):
                jobs = self.client().describe_jobs(jobs=[r.resource_id for r in chunk]).get("jobs", [])
            tags = {j.get("jobId"): j.get("tags") or {} for j in jobs}
            for resource in chunk:
                mine = self.confirmed(resource, tags.get(resource.resource_id, {}))
                if mine is not None:
                    found.append(mine)
        return found

    def _stop_resource_impl(self, resource: ManagedResource, reason: str) -> None:
        with aws_errors("batch", "TerminateJob"):
            self.client().terminate_job(jobId=resource.resource_id, reason=reason[:1024])


_EMULATOR_REFUSAL = "containerProperties or eksProperties must be provided"


def _single_container(request: dict[str, Any]) -> dict[str, Any]:
    task = request["ecsProperties"]["taskProperties"][0]
    job = next(c for c in task["containers"] if c["name"] == CONTAINER)
    container = {
        "image": job["image"],
        "command": job["command"],
        "jobRoleArn": task["taskRoleArn"],
        "resourceRequirements": job["resourceRequirements"],
    }
    rest = {k: v for k, v in request.items() if k != "ecsProperties"}
    return {**rest, "containerProperties": container}


def _containers(detail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A JobDetail's (or an attempt's) containers by name, for a multi-container job; {} for a single one."""
    tasks = (detail.get("ecsProperties") or {}).get("taskProperties") or detail.get("taskProperties") or []
    return {c.get("name"): c for task in tasks for c in task.get("containers") or []}


def log_group_of(container: dict[str, Any]) -> str:
    """The log group a job's container writes to: its logConfiguration's awslogs-group, else Batch's default."""
    config = container.get("logConfiguration") or {}
    driver = config.get("logDriver", "awslogs")
    if driver != "awslogs":
        raise UnsupportedError(
            f"this job's container logs through {driver}, not CloudWatch Logs",
            [{"field": "backend", "message": "read them where the job definition's logConfiguration sends them"}],
        )
    return (config.get("options") or {}).get("awslogs-group") or LOG_GROUP


def batch_failure_kind(reason: str, exit_code: Any, attempts: list[dict[str, Any]]) -> FailureKind:
    lowered = reason.lower()
    last = (attempts[-1].get("statusReason") or "").lower() if attempts else ""
    if "timeout" in lowered or "duration exceeded" in lowered:
        return FailureKind.TIMEOUT
    if "host ec2" in lowered and "terminated" in lowered or "host ec2" in last and "terminated" in last:
        return FailureKind.INTERRUPTED  # the instance under the job went away (spot reclaim)
    if exit_code not in (None, 0):
        return FailureKind.USER_ERROR
    if "cannotpullcontainer" in lowered or "essential container" in lowered:
        return FailureKind.USER_ERROR
    return FailureKind.BACKEND_ERROR
