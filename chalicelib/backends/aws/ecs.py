"""ECS tasks (EC2 launch type, GPUs through resourceRequirements); Fargate only for CPU-only jobs."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from chalicelib.backends.aws import staging
from chalicelib.backends.aws.base import AwsBackend, aws_quote, container_instance_type, env_list, epoch_ms
from chalicelib.backends.aws.cwlogs import read_streams
from chalicelib.backends.aws.descriptors import ECS
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
from chalicelib.errors import BackendError, CapacityError, UnsupportedError
from chalicelib.jobs import contract
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.spec_types import JobSpec, Resources
from chalicelib.pricing import Unknown
from chalicelib.pricing.jobs import Usage

DETAIL_TYPE = "ECS Task State Change"
CONTAINER = "job"
STAGE_IN = "stage-in"  # the init container: checkpoint, code and inputs onto the task's volumes
STAGE_OUT = "stage-out"  # the sidecar: checkpoint sync while the job runs, outputs and checkpoint after it
# Part of every family name: a definition from before the staging containers is never reused.
DEFINITION_VERSION = "staged-1"
HELPER_MEMORY_MIB = 128
CANCEL_REASON = "cancelled through jobplane"
_LAUNCHING = {"PROVISIONING", "PENDING", "ACTIVATING"}
# Fargate's CPU units -> the memory sizes (MiB) it accepts, smallest first.
_FARGATE = ((256, 512), (512, 1024), (1024, 2048), (2048, 4096), (4096, 8192), (8192, 16384), (16384, 32768))


def family_name(image: str, gpus: int, launch_type: str, log_group: str | None = None) -> str:
    """One task definition family per (image, GPU count, launch type, log group): a definition made
    before logs were configured, or for another group, is not reused."""
    key = f"{image}\0{gpus}\0{launch_type}" + (f"\0{log_group}" if log_group else "") + f"\0{DEFINITION_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return f"jp-img-{digest}"


class EcsBackend(AwsBackend):
    descriptor = ECS
    services = ("ecs",)
    stages_files = True

    def roles(self) -> tuple[tuple[str, str], ...]:
        return (
            (self.settings.ecs_task_role, "ecs-tasks.amazonaws.com"),
            (self.settings.ecs_execution_role, "ecs-tasks.amazonaws.com"),
        )

    @property
    def fargate(self) -> bool:
        return self.settings.ecs_launch_type == "FARGATE"

    def hourly_quote(self, spec, region, usage=None):
        if self.fargate:
            return "ecs fargate", Unknown("Fargate bills per vCPU-hour and GB-hour, which the catalog does not hold")
        if usage is None or not usage.instance_type:
            return "ecs", Unknown(
                "ECS has not said which container instance the task runs on (its type is read once the task runs)"
            )
        # The container instance's own on-demand rate: a GPU task has its instance to itself, and ECS does not
        # say whether a capacity provider bought it on spot.
        priced, quote = aws_quote(self.catalog, "ec2", region or self.settings.region, usage.instance_type, False)
        return f"{priced} (its container instance)", quote

    @property
    def priced_by_placement(self) -> bool:
        return not self.fargate

    def usage_of(self, task: dict[str, Any]) -> Usage | None:
        """The instance type of the container instance a task runs on; None on Fargate, before placement, or
        when ECS cannot say."""
        if self.fargate:
            return None
        found = container_instance_type(self.client(), self.settings.ecs_cluster, task.get("containerInstanceArn"))
        return Usage(found, 1, None) if found else None

    def _priced(self, observation: Observation, task: dict[str, Any]) -> Observation:
        """A running or ended task's observation with what it runs on (one call, for the changes that count)."""
        if observation.status is JobStatus.LAUNCHING:
            return observation
        return replace(observation, usage=self.usage_of(task))

    def _validate_impl(self, spec: JobSpec) -> None:
        if not spec.image:
            raise UnsupportedError("ECS runs a container image", [{"field": "image", "message": "required for ecs"}])
        staging.require_s3(spec, "ECS")
        resources = spec.resources
        if self.fargate and resources.gpus > 0:
            raise UnsupportedError(
                "this deployment runs ECS tasks on Fargate, which has no GPUs",
                [{"field": "resources.gpus", "message": "0 on Fargate; use sagemaker, aws-batch or ec2 for GPUs"}],
            )
        if self.fargate:
            self._fargate_size(resources)

    def _fargate_size(self, resources: Resources) -> tuple[int, int]:
        cpu_units = float(resources.cpus) * 1024
        memory = float(resources.memory_gb) * 1024
        for cpu, max_memory in _FARGATE:
            if cpu >= cpu_units and max_memory >= memory:
                return cpu, int(max(memory, cpu * 2))
        raise UnsupportedError(
            "too large for a Fargate task",
            [{"field": "resources.cpus", "message": "at most 16 vCPUs and 32 GiB on Fargate"}],
        )

    def task_definition_request(self, spec: JobSpec) -> dict[str, Any]:
        """RegisterTaskDefinition's arguments for the job's image and GPU count: the job's container between
        jobplane's two helpers, sharing the task's volumes (everything per job comes as overrides)."""
        gpus = spec.resources.gpus
        layout = staging.CONTAINERS
        family = family_name(spec.image, gpus, self.settings.ecs_launch_type, self.settings.ecs_log_group)
        shared = staging.mount(staging.VOLUME, staging.ROOT)
        job: dict[str, Any] = {
            "name": CONTAINER,
            "image": spec.image,
            # Not essential: when the job ends the sidecar still uploads; the sidecar's exit ends the task.
            "essential": False,
            # Each task overrides it on EC2; on Fargate the three fit the definition's smallest task size.
            "memoryReservation": 256,
            "entryPoint": ["/bin/sh", "-c", staging.WRAPPER, "jobplane"],
            "dependsOn": [{"containerName": STAGE_IN, "condition": "SUCCESS"}],
            "mountPoints": [shared, staging.mount(staging.INPUT_VOLUME, layout.input_dir, read_only=True)],
            "logConfiguration": self._log_configuration(),
        }
        if gpus:
            job["resourceRequirements"] = [{"type": "GPU", "value": str(gpus)}]
        stage_in = {
            "name": STAGE_IN,
            "image": staging.AWS_CLI_IMAGE,
            "essential": False,
            "memoryReservation": HELPER_MEMORY_MIB,
            "entryPoint": ["/bin/sh", "-c", staging.STAGE_IN, STAGE_IN],
            "mountPoints": [shared, staging.mount(staging.INPUT_VOLUME, layout.input_dir)],
            "logConfiguration": self._log_configuration(),
        }
        stage_out = {
            "name": STAGE_OUT,
            "image": staging.AWS_CLI_IMAGE,
            "essential": True,
            "memoryReservation": HELPER_MEMORY_MIB,
            "entryPoint": ["/bin/sh", "-c", staging.STAGE_OUT, STAGE_OUT],
            # After stage-in, so it never syncs an empty folder over the stored checkpoint.
            "dependsOn": [{"containerName": STAGE_IN, "condition": "SUCCESS"}],
            # The time ECS gives it between SIGTERM and SIGKILL to upload (120 s is the most ECS allows).
            "stopTimeout": 120,
            "mountPoints": [shared],
            "logConfiguration": self._log_configuration(),
        }
        request: dict[str, Any] = {
            "family": family,
            "containerDefinitions": [stage_in, job, stage_out],
            "volumes": [{"name": staging.VOLUME}, {"name": staging.INPUT_VOLUME}],
            "taskRoleArn": self.role(self.settings.ecs_task_role),
            "executionRoleArn": self.role(self.settings.ecs_execution_role),
            "tags": [
                {"key": "jobplane:managed", "value": "true"},
                {"key": "jobplane:stage", "value": self.settings.stage},
            ],
        }
        if self.fargate:
            # (EC2 is what ECS assumes when requiresCompatibilities is left out.)
            request["requiresCompatibilities"] = ["FARGATE"]
            request["networkMode"] = "awsvpc"
            request["cpu"], request["memory"] = "256", "512"  # each task overrides its size
        return request

    def _log_configuration(self) -> dict[str, Any]:
        # The stream is <prefix>/<container>/<task id>, which is how _logs_impl finds a task's output.
        return {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": self.settings.ecs_log_group,
                "awslogs-region": self.settings.region,
                "awslogs-stream-prefix": self.stream_prefix,
            },
        }

    def task_definition(self, spec: JobSpec) -> str:
        """The family (and latest revision) for the job's image and GPU count, registered on first use."""
        request = self.task_definition_request(spec)
        family = request["family"]
        with aws_errors("ecs", "ListTaskDefinitions"):
            found = self.client().list_task_definitions(familyPrefix=family, status="ACTIVE", sort="DESC")
        arns = [a for a in found.get("taskDefinitionArns", []) if a.split("/")[-1].rsplit(":", 1)[0] == family]
        if arns:
            return arns[0]
        with aws_errors("ecs", "RegisterTaskDefinition"):
            registered = self.client().register_task_definition(**request)
        return registered["taskDefinition"]["taskDefinitionArn"]

    def run_task_request(self, job, handle: Handle, definition: str) -> dict[str, Any]:
        spec = job.spec
        resources = spec.resources
        layout = staging.CONTAINERS
        bucket = self.settings.artifacts_bucket
        checkpoint = contract.checkpoint_location(spec, job.job_id, bucket)
        env = dict(env_list(spec, handle))
        env.update(layout.variables(handle.job_id, handle.attempt))
        override: dict[str, Any] = {
            "name": CONTAINER,
            "command": staging.wrapper_args(spec, layout),
            "environment": [{"name": k, "value": v} for k, v in sorted(env.items())],
        }
        overrides = [
            {"name": STAGE_IN, "command": staging.stage_in_args(spec, checkpoint)},
            override,
            {
                "name": STAGE_OUT,
                "command": staging.stage_out_args(contract.artifacts_uri(spec, job.job_id, bucket), checkpoint),
            },
        ]
        request: dict[str, Any] = {
            "cluster": self.settings.ecs_cluster,
            "taskDefinition": definition,
            "launchType": self.settings.ecs_launch_type,
            "count": 1,
            # startedBy carries the native name into every task state event (tags do not travel there).
            "startedBy": handle.native_name,
            "clientToken": handle.native_name,
            "tags": [{"key": k, "value": v} for k, v in self.job_tags(handle, job).items()],
            "enableECSManagedTags": True,
            "overrides": {"containerOverrides": overrides},
        }
        if self.fargate:
            cpu, memory = self._fargate_size(resources)
            request["overrides"].update({"cpu": str(cpu), "memory": str(memory)})
            request["networkConfiguration"] = {
                "awsvpcConfiguration": {
                    "subnets": list(self.settings.ecs_subnets),
                    "securityGroups": list(self.settings.ecs_security_groups),
                    "assignPublicIp": "DISABLED",
                }
            }
        else:
            override["cpu"] = int(float(resources.cpus) * 1024)
            override["memoryReservation"] = int(float(resources.memory_gb) * 1024)
        return request

    def _launch_request_impl(self, job, handle: Handle) -> dict[str, Any]:
        # The definition's ARN is known once it is registered (or found): a dry run registers nothing.
        definition = "(the ARN RegisterTaskDefinition returns)"
        return {
            "service": "ecs",
            "calls": [
                {"operation": "RegisterTaskDefinition", "request": self.task_definition_request(job.spec)},
                {"operation": "RunTask", "request": self.run_task_request(job, handle, definition)},
            ],
        }

    def _launch_impl(self, job, handle: Handle) -> LaunchResult:
        existing = self._find(handle.native_name)
        if existing is not None:
            return LaunchResult(existing, "AlreadyLaunched")
        definition = self.task_definition(job.spec)
        with aws_errors("ecs", "RunTask"):
            response = self.client().run_task(**self.run_task_request(job, handle, definition))
        tasks = response.get("tasks") or []
        if tasks:
            return LaunchResult(tasks[0]["taskArn"], tasks[0].get("lastStatus", "PROVISIONING"))
        failures = response.get("failures") or []
        reason = "; ".join(f"{f.get('reason')}{': ' + f['detail'] if f.get('detail') else ''}" for f in failures)
        if any(str(f.get("reason", "")).startswith("RESOURCE:") for f in failures):
            # No container instance in the cluster has the GPUs / CPU / memory free.
            raise CapacityError(f"ecs RunTask: {reason}", retryable=True)
        raise BackendError(f"ecs RunTask: {reason or 'no task started'}")

    def _find(self, native: str) -> str | None:
        for desired in ("RUNNING", "STOPPED"):
            with aws_errors("ecs", "ListTasks"):
                page = self.client().list_tasks(
                    cluster=self.settings.ecs_cluster, startedBy=native, desiredStatus=desired
                )
            if page.get("taskArns"):
                return page["taskArns"][0]
        return None

    def _task_arn(self, handle: Handle) -> str | None:
        if handle.native_id is not None:
            return handle.native_id
        return self._find(handle.native_name)

    def _describe_impl(self, handle: Handle) -> Observation | None:
        arn = self._task_arn(handle)
        if arn is None:
            return None
        with aws_errors("ecs", "DescribeTasks"):
            tasks = self.client().describe_tasks(cluster=self.settings.ecs_cluster, tasks=[arn]).get("tasks", [])
        if not tasks:
            return None
        return self._priced(self.observe(tasks[0], handle.job_id, handle.attempt), tasks[0])

    @property
    def stream_prefix(self) -> str:
        return f"jobplane-{self.settings.stage}"

    def log_groups(self) -> tuple[str, ...]:
        return (self.settings.ecs_log_group,)

    def log_stream(self, task_arn: str) -> str:
        """awslogs names a task's stream <prefix>/<container name>/<task id> (the ARN's last part)."""
        return f"{self.stream_prefix}/{CONTAINER}/{task_arn.rsplit('/', 1)[-1]}"

    def _logs_impl(self, handle: Handle, offset: Offset, limit: int) -> LogChunk:
        arn = self._task_arn(handle)
        streams = [(self.settings.ecs_log_group, self.log_stream(arn))] if arn else []
        return read_streams(self.client("logs"), lambda: streams, offset, limit)

    def _cancel_impl(self, handle: Handle) -> None:
        self._stop(handle, CANCEL_REASON)

    # A task has no run-time limit of its own: reconcile stops it past max_runtime_minutes plus the grace.
    enforces_max_runtime = False

    def stop_overdue(self, handle: Handle, reason: str) -> None:
        self._stop(handle, reason)

    def _stop(self, handle: Handle, reason: str) -> None:
        arn = self._task_arn(handle)
        if arn is None:
            return
        with aws_errors("ecs", "StopTask"):
            # StopTask keeps at most 255 characters of the reason (the task's stoppedReason).
            self.client().stop_task(cluster=self.settings.ecs_cluster, task=arn, reason=reason[:255])

    def observe(self, task: dict[str, Any], job_id: str | None, attempt: int | None, at=None) -> Observation:
        """A Task (DescribeTasks, or an event's detail) -> Observation."""
        last = str(task.get("lastStatus") or "")
        stop_code = str(task.get("stopCode") or "")
        stopped_reason = str(task.get("stoppedReason") or "")
        containers = {c.get("name"): c for c in task.get("containers") or []}
        container = containers.get(CONTAINER)
        if container is None and task.get("containers"):
            container = task["containers"][0]
        # The job's own exit code, by the container's name (the task also holds jobplane's helpers).
        exit_code = (container or {}).get("exitCode")
        staged_in = (containers.get(STAGE_IN) or {}).get("exitCode")
        staged_out = (containers.get(STAGE_OUT) or {}).get("exitCode")
        kind = None
        native = last
        if last in _LAUNCHING:
            state = JobStatus.LAUNCHING
        elif last == "STOPPED":
            native = f"STOPPED/{stop_code}" if stop_code else "STOPPED"
            if staged_in not in (None, 0):
                state, kind = JobStatus.FAILED, FailureKind.USER_ERROR
                stopped_reason = (
                    f"staging failed: {STAGE_IN} exited {staged_in} (the checkpoint, the code or an input could "
                    f"not be downloaded; its log is the {STAGE_IN} stream)"
                )
            elif stop_code == "EssentialContainerExited" and exit_code == 0 and staged_out in (None, 0):
                state = JobStatus.SUCCEEDED
            elif exit_code == 0 and staged_out not in (None, 0):
                state, kind = JobStatus.FAILED, FailureKind.BACKEND_ERROR
                stopped_reason = (
                    f"the job succeeded but {STAGE_OUT} exited {staged_out}: its outputs or checkpoint were not "
                    "all uploaded"
                )
            else:
                state = JobStatus.FAILED
                kind = ecs_failure_kind(stop_code, exit_code, stopped_reason)
        else:
            state = JobStatus.RUNNING  # RUNNING, and DEACTIVATING/STOPPING until it is STOPPED
        return Observation(
            status=state,
            native_status=native,
            native_id=task.get("taskArn"),
            job_id=job_id,
            attempt=attempt,
            reason=stopped_reason or (container or {}).get("reason") or f"ECS: {native}",
            failure_kind=kind,
            exit_code=exit_code,
            at=at or epoch_ms(task.get("stoppedAt")) or epoch_ms(task.get("updatedAt")),
            started_at=epoch_ms(task.get("startedAt")),
        )

    def _parse_event_impl(self, raw: dict[str, Any]) -> Observation | None:
        if raw.get("source") != "aws.ecs" or raw.get("detail-type") != DETAIL_TYPE:
            return None
        detail = raw.get("detail") or {}
        parsed = parse_native_name(detail.get("startedBy"))
        cluster = str(detail.get("clusterArn") or "")
        if parsed is None or cluster.split("/")[-1] != self.settings.ecs_cluster:
            return None  # not started by jobplane, or in another deployment's cluster
        job_id, attempt = parsed
        return self._priced(self.observe(detail, job_id, attempt, at=epoch_ms(raw.get("time"))), detail)

    # --- reconcile at scale: DescribeTasks takes up to 100 task ARNs ----------------------------
    def _describe_many_impl(self, handles: list[Handle]) -> dict[str, Observation | None]:
        # A handle without its task ARN (the RunTask response was lost) is found by startedBy, as describe does.
        found: dict[str, Observation | None] = {h.job_id: self.describe(h) for h in handles if h.native_id is None}
        known = [h for h in handles if h.native_id is not None]
        for start in range(0, len(known), self.describe_batch):
            chunk = known[start : start + self.describe_batch]
            with aws_errors("ecs", "DescribeTasks"):
                response = self.client().describe_tasks(
                    cluster=self.settings.ecs_cluster, tasks=[h.native_id for h in chunk]
                )
            # A task ECS no longer knows comes back under `failures` (MISSING), not as an error.
            by_arn = {t.get("taskArn"): t for t in response.get("tasks", [])}
            by_arn.update({str(arn).rsplit("/", 1)[-1]: t for arn, t in list(by_arn.items())})  # a bare task id
            for h in chunk:
                task = by_arn.get(h.native_id)
                found[h.job_id] = None if task is None else self.observe(task, h.job_id, h.attempt)
        return found

    # --- the orphan sweep: the cluster's running tasks, with their tags -----------------------------------
    def _list_managed_impl(self) -> list[ManagedResource]:
        """ListTasks RUNNING (100 a page), then DescribeTasks with their tags (100 a call): only tasks whose
        tags name this stage's jobplane are returned (the cluster may run others' tasks)."""
        arns: list[str] = []
        paginator = self.client().get_paginator("list_tasks")
        with aws_errors("ecs", "ListTasks"):
            for page in paginator.paginate(cluster=self.settings.ecs_cluster, desiredStatus="RUNNING"):
                # a live job's own task (reconcile described it this tick) is not read again
                arns.extend(a for a in page.get("taskArns", []) if a not in self.known_native_ids)
        found = []
        for start in range(0, len(arns), self.describe_batch):
            with aws_errors("ecs", "DescribeTasks"):
                tasks = (
                    self.client()
                    .describe_tasks(
                        cluster=self.settings.ecs_cluster, tasks=arns[start : start + 100], include=["TAGS"]
                    )
                    .get("tasks", [])
                )
            for task in tasks:
                tags = {t.get("key"): t.get("value") for t in task.get("tags") or []}
                state = str(task.get("lastStatus") or "")
                listed = ManagedResource(
                    backend=self.name,
                    resource_id=str(task["taskArn"]),
                    kind=ResourceKind.JOB,
                    state=state,
                    power=PowerState.GONE if state in ("DEPROVISIONING", "STOPPED") else PowerState.RUNNING,
                    stage=None,
                    native_name=task.get("startedBy"),
                    launched_at=epoch_ms(task.get("startedAt") or task.get("createdAt")),
                )
                mine = self.confirmed(listed, tags)
                if mine is not None:
                    found.append(mine)
        return found

    def _stop_resource_impl(self, resource: ManagedResource, reason: str) -> None:
        with aws_errors("ecs", "StopTask"):
            self.client().stop_task(cluster=self.settings.ecs_cluster, task=resource.resource_id, reason=reason[:255])


def ecs_failure_kind(stop_code: str, exit_code: Any, reason: str) -> FailureKind:
    lowered = reason.lower()
    if stop_code in ("SpotInterruption", "TerminationNotice"):
        return FailureKind.INTERRUPTED
    if stop_code == "EssentialContainerExited" and exit_code not in (None, 0):
        return FailureKind.USER_ERROR
    if stop_code == "TaskFailedToStart" and ("cannotpullcontainer" in lowered or "image" in lowered):
        return FailureKind.USER_ERROR
    if "resource:" in lowered or "insufficient" in lowered:
        return FailureKind.NO_CAPACITY
    return FailureKind.BACKEND_ERROR
