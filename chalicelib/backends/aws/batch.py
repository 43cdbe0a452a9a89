"""AWS Batch: queues and pipelines; one job definition per image, registered on demand."""

from __future__ import annotations

import hashlib
from typing import Any

from chalicelib.backends.aws.base import AwsBackend, env_list, epoch_ms
from chalicelib.backends.aws.cwlogs import Stream, read_streams
from chalicelib.backends.aws.descriptors import BATCH
from chalicelib.backends.aws.errors import aws_errors
from chalicelib.backends.base import Handle, LaunchResult, LogChunk, Observation, Offset, parse_native_name
from chalicelib.errors import UnsupportedError
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.spec_types import JobSpec

DETAIL_TYPE = "Batch Job State Change"
CANCEL_REASON = "cancelled through jobplane"
LOG_GROUP = "/aws/batch/job"  # where Batch's awslogs default writes, unless the definition names another
_LAUNCHING = {"SUBMITTED", "PENDING", "RUNNABLE", "STARTING"}
_ALL_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")


def definition_name(image: str) -> str:
    """One job definition per image: a stable name from the image reference."""
    return "jp-img-" + hashlib.sha256(image.encode()).hexdigest()[:20]


class BatchBackend(AwsBackend):
    descriptor = BATCH
    services = ("batch",)

    def roles(self) -> tuple[tuple[str, str], ...]:
        return ((self.settings.batch_job_role, "ecs-tasks.amazonaws.com"),)

    def _validate_impl(self, spec: JobSpec) -> None:
        if not spec.image:
            raise UnsupportedError(
                "AWS Batch runs a container image", [{"field": "image", "message": "required for aws-batch"}]
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

    def job_definition(self, image: str) -> str:
        """The ARN of the image's active job definition, registered the first time the image is used."""
        name = definition_name(image)
        with aws_errors("batch", "DescribeJobDefinitions"):
            found = self.client().describe_job_definitions(jobDefinitionName=name, status="ACTIVE")
        active = [d for d in found.get("jobDefinitions", []) if d.get("status", "ACTIVE") == "ACTIVE"]
        if active:
            return max(active, key=lambda d: d.get("revision", 0))["jobDefinitionArn"]
        with aws_errors("batch", "RegisterJobDefinition"):
            registered = self.client().register_job_definition(
                jobDefinitionName=name,
                type="container",
                containerProperties={
                    "image": image,
                    "jobRoleArn": self.role(self.settings.batch_job_role),
                    # Per-job values come as overrides at SubmitJob; these are the floor.
                    "resourceRequirements": [
                        {"type": "VCPU", "value": "1"},
                        {"type": "MEMORY", "value": "2048"},
                    ],
                },
                propagateTags=True,
                tags={"jobplane:managed": "true", "jobplane:stage": self.settings.stage, "jobplane:image": image[:256]},
            )
        return registered["jobDefinitionArn"]

    def submit_request(self, job, handle: Handle, definition: str) -> dict[str, Any]:
        spec = job.spec
        resources = spec.resources
        requirements = [
            {"type": "VCPU", "value": f"{float(resources.cpus):g}"},
            {"type": "MEMORY", "value": str(int(float(resources.memory_gb) * 1024))},
        ]
        if resources.gpus > 0:
            requirements.append({"type": "GPU", "value": str(resources.gpus)})
        return {
            "jobName": handle.native_name,
            "jobQueue": self.queue_for(spec),
            "jobDefinition": definition,
            "containerOverrides": {
                "command": list(spec.command),
                "environment": [{"name": k, "value": v} for k, v in env_list(spec, handle)],
                "resourceRequirements": requirements,
            },
            # Batch's minimum is 60 s; the job's own limit is enforced by Batch, not by jobplane.
            "timeout": {"attemptDurationSeconds": max(60, spec.max_runtime_minutes * 60)},
            "tags": self.job_tags(handle, job),
            "propagateTags": True,
        }

    def _launch_impl(self, job, handle: Handle) -> LaunchResult:
        name = handle.native_name
        # Batch job names are not unique: a retried launch finds the first submission by name.
        existing = self._find_by_name(name, self.queue_for(job.spec))
        if existing is not None:
            return LaunchResult(existing["jobId"], "AlreadyLaunched")
        definition = self.job_definition(job.spec.image)
        with aws_errors("batch", "SubmitJob"):
            submitted = self.client().submit_job(**self.submit_request(job, handle, definition))
        return LaunchResult(submitted["jobId"], "SUBMITTED")

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
        return self.observe(jobs[0], handle.job_id, handle.attempt)

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
        container = jobs[0].get("container") or {}
        group = log_group_of(container)
        names = [(a.get("container") or {}).get("logStreamName") for a in jobs[0].get("attempts") or []]
        names.append(container.get("logStreamName"))
        return [(group, name) for name in dict.fromkeys(n for n in names if n)]

    def _logs_impl(self, handle: Handle, offset: Offset, limit: int) -> LogChunk:
        return read_streams(self.client("logs"), lambda: self.log_streams(handle), offset, limit)

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
        exit_code = container.get("exitCode")
        if exit_code is None and attempts:
            exit_code = (attempts[-1].get("container") or {}).get("exitCode")
        kind = None
        if status in _LAUNCHING:
            state = JobStatus.LAUNCHING
        elif status == "RUNNING":
            state = JobStatus.RUNNING
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
        return self.observe(detail, job_id, attempt, at=epoch_ms(raw.get("time")))

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
