"""SageMaker training jobs: the first choice on AWS (managed spot, S3 checkpoints, no time limit that matters)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalicelib.backends.aws.base import AwsBackend, env_list, epoch_ms, instance_type_for
from chalicelib.backends.aws.descriptors import SAGEMAKER
from chalicelib.backends.aws.errors import aws_errors, error_code
from chalicelib.backends.base import Handle, LaunchResult, LogChunk, Observation, Offset, parse_native_name
from chalicelib.errors import BackendError, UnsupportedError
from chalicelib.jobs.model import FailureKind, JobStatus

if TYPE_CHECKING:
    from chalicelib.jobs.spec_types import JobSpec

DETAIL_TYPE = "SageMaker Training Job State Change"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# SecondaryStatus values during which the container runs (the rest of InProgress is provisioning).
_RUNNING_SECONDARY = {"Downloading", "Training", "Uploading", "Restarting"}
MAX_ENV_VALUE = 512  # CreateTrainingJob's limit on each Environment value
MAX_ENV = 48


class SageMakerBackend(AwsBackend):
    descriptor = SAGEMAKER
    services = ("sagemaker",)
    named_by_us = True  # every SageMaker call takes the TrainingJobName we chose

    def roles(self) -> tuple[tuple[str, str], ...]:
        """(role, service it is passed to): the only iam:PassRole this backend needs."""
        return ((self.settings.sagemaker_role, "sagemaker.amazonaws.com"),)

    def _validate_impl(self, spec: JobSpec) -> None:
        if not spec.image:
            raise UnsupportedError(
                "SageMaker runs a container image", [{"field": "image", "message": "required for sagemaker"}]
            )
        instance_type_for(spec.resources, "ml.")
        for name, uri in spec.inputs.items():
            if not uri.startswith("s3://"):
                raise UnsupportedError(
                    "SageMaker reads inputs from S3", [{"field": f"inputs.{name}", "message": "an s3:// URI"}]
                )
        for field, uri in (("outputs", spec.outputs), ("checkpoint_uri", spec.checkpoint_uri)):
            if uri and not uri.startswith("s3://"):
                raise UnsupportedError(f"SageMaker writes {field} to S3", [{"field": field, "message": "an s3:// URI"}])
        env = spec.env
        if len(env) > MAX_ENV:
            raise UnsupportedError(
                "too many environment variables for SageMaker",
                [{"field": "env", "message": f"at most {MAX_ENV} variables"}],
            )
        for key, value in env.items():
            if len(value) > MAX_ENV_VALUE:
                raise UnsupportedError(
                    "environment value too long for SageMaker",
                    [{"field": f"env.{key}", "message": f"at most {MAX_ENV_VALUE} characters"}],
                )

    def training_job_request(self, job, handle: Handle) -> dict[str, Any]:
        """CreateTrainingJob's arguments for one attempt of `job` (pure but for the role lookup)."""
        spec = job.spec
        runtime = spec.max_runtime_minutes * 60
        command = list(spec.command)
        request: dict[str, Any] = {
            "TrainingJobName": handle.native_name,
            "AlgorithmSpecification": {
                "TrainingImage": spec.image,
                "TrainingInputMode": "File",
                "ContainerEntrypoint": command[:1],
            },
            "RoleArn": self.role(self.settings.sagemaker_role),
            "OutputDataConfig": {
                "S3OutputPath": spec.outputs or f"s3://{self.settings.artifacts_bucket}/outputs/{job.job_id}/"
            },
            "ResourceConfig": {
                "InstanceType": instance_type_for(spec.resources, "ml."),
                "InstanceCount": 1,
                "VolumeSizeInGB": self.settings.sagemaker_volume_gb,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": runtime},
            "Environment": dict(env_list(spec, handle)),
            "Tags": [{"Key": k, "Value": v} for k, v in self.job_tags(handle, job).items()],
        }
        if command[1:]:
            request["AlgorithmSpecification"]["ContainerArguments"] = command[1:]
        if spec.metrics:
            request["AlgorithmSpecification"]["MetricDefinitions"] = metric_definitions(spec.metrics)
        if spec.resources.spot:
            request["EnableManagedSpotTraining"] = True
            request["StoppingCondition"]["MaxWaitTimeInSeconds"] = runtime + self.settings.spot_wait_minutes * 60
        if spec.checkpoint_uri:
            # SageMaker syncs this folder to S3 and restores it into a retried or resumed job.
            request["CheckpointConfig"] = {"S3Uri": spec.checkpoint_uri, "LocalPath": "/opt/ml/checkpoints"}
        if spec.inputs:
            # One channel per input, named as the spec names it: SageMaker puts channel <name> at
            # /opt/ml/input/data/<name>, which is $JOBPLANE_INPUT_DIR/<name>.
            request["InputDataConfig"] = [
                {
                    "ChannelName": name,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": uri,
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                }
                for name, uri in spec.inputs.items()
            ]
        return request

    def _launch_impl(self, job, handle: Handle) -> LaunchResult:
        name = handle.native_name
        # CreateTrainingJob with a used name is refused by SageMaker (and silently overwrites in moto):
        # a retried launch looks first.
        existing = self._describe_raw(name)
        if existing is not None:
            return LaunchResult(name, "AlreadyLaunched")
        request = self.training_job_request(job, handle)
        try:
            with aws_errors("sagemaker", "CreateTrainingJob"):
                self.client().create_training_job(**request)
        except BackendError as exc:
            if error_code(exc) == "ResourceInUse" or "already exists" in exc.message:
                return LaunchResult(name, "AlreadyLaunched")
            raise
        return LaunchResult(name, "InProgress")

    def _describe_raw(self, name: str) -> dict[str, Any] | None:
        try:
            with aws_errors("sagemaker", "DescribeTrainingJob"):
                return self.client().describe_training_job(TrainingJobName=name)
        except BackendError as exc:
            # SageMaker answers an unknown name with ValidationException "Requested resource not found."
            # (moto: "Could not find training job ...").
            lowered = exc.message.lower()
            if error_code(exc) in ("ValidationException", "ResourceNotFound") and (
                "not found" in lowered or "could not find" in lowered
            ):
                return None
            raise

    def _describe_impl(self, handle: Handle) -> Observation | None:
        raw = self._describe_raw(handle.native_name)
        if raw is None:
            return None
        return self.observe(raw, handle.job_id, handle.attempt)

    def log_groups(self) -> tuple[str, ...]:
        return (LOG_GROUP,)

    def _logs_impl(self, handle: Handle, offset: Offset, limit: int) -> LogChunk:
        from chalicelib.backends.aws.cwlogs import prefixed_streams, read_streams

        # One stream per instance and container start (algo-1-<epoch>; a spot restart adds one), by name.
        logs = self.client("logs")
        return read_streams(logs, lambda: prefixed_streams(logs, LOG_GROUP, f"{handle.native_name}/"), offset, limit)

    def _cancel_impl(self, handle: Handle) -> None:
        try:
            with aws_errors("sagemaker", "StopTrainingJob"):
                self.client().stop_training_job(TrainingJobName=handle.native_name)
        except BackendError as exc:
            # Stopping a job that already ended (or never started) has nothing left to do.
            if error_code(exc) == "ValidationException":
                return
            raise

    def observe(self, detail: dict[str, Any], job_id: str | None, attempt: int | None, at=None) -> Observation:
        """DescribeTrainingJob output, or an event's detail (same fields) -> Observation."""
        status = str(detail.get("TrainingJobStatus") or "")
        secondary = str(detail.get("SecondaryStatus") or "")
        failure = str(detail.get("FailureReason") or "")
        native = f"{status}/{secondary}" if secondary and secondary != status else status
        kind = None
        if status == "Completed":
            state = JobStatus.SUCCEEDED
        elif status == "Failed":
            state = JobStatus.FAILED
            kind = failure_kind(failure)
        elif status == "Stopped":
            if secondary == "MaxRuntimeExceeded":
                state, kind = JobStatus.FAILED, FailureKind.TIMEOUT
            elif secondary == "MaxWaitTimeExceeded":
                state, kind = JobStatus.FAILED, FailureKind.NO_CAPACITY
            else:
                state = JobStatus.CANCELLED
        elif status == "InProgress" and secondary in _RUNNING_SECONDARY:
            state = JobStatus.RUNNING
        elif status == "Stopping":
            state = JobStatus.RUNNING  # the terminal event says how it ended
        else:
            state = JobStatus.LAUNCHING
        return Observation(
            status=state,
            native_status=native,
            native_id=detail.get("TrainingJobName"),
            job_id=job_id,
            attempt=attempt,
            reason=failure or (f"SageMaker: {secondary}" if secondary else f"SageMaker: {status}"),
            failure_kind=kind,
            at=at or epoch_ms(detail.get("TrainingEndTime")) or epoch_ms(detail.get("LastModifiedTime")),
            started_at=epoch_ms(detail.get("TrainingStartTime")),
        )

    def _parse_event_impl(self, raw: dict[str, Any]) -> Observation | None:
        if raw.get("source") != "aws.sagemaker" or raw.get("detail-type") != DETAIL_TYPE:
            return None
        detail = raw.get("detail") or {}
        parsed = parse_native_name(detail.get("TrainingJobName"))
        tags = detail.get("Tags") or {}
        if isinstance(tags, list):
            tags = {t.get("Key"): t.get("Value") for t in tags}
        if parsed is None or (tags and self.ours(tags) != parsed):
            return None  # not a jp- name, or one from another stage or another deployment
        job_id, attempt = parsed
        return self.observe(detail, job_id, attempt, at=epoch_ms(raw.get("time")))

    # --- reconcile at scale: list the running jobs by name and status, 100 a page -------------------
    #: a TrainingJobSummary has no TrainingStartTime: reconcile describes a job again before applying
    #: an observation that came from a list page
    listed_fields_unknown = frozenset({"started_at"})
    describes_by_listing = True
    #: the statuses a job is listed under (every other status is describe's to answer: an ended job
    #: leaves the list, and its FailureReason is only in DescribeTrainingJob)
    LISTED_STATUSES = ("InProgress", "Stopping")

    def _describe_many_impl(self, handles: list[Handle]) -> dict[str, Observation | None]:
        wanted = {h.native_name for h in handles}
        summaries: dict[str, dict[str, Any]] = {}
        paginator = self.client().get_paginator("list_training_jobs")
        for status in self.LISTED_STATUSES:
            with aws_errors("sagemaker", "ListTrainingJobs"):
                pages = paginator.paginate(NameContains="jp-", StatusEquals=status, PaginationConfig={"PageSize": 100})
                for page in pages:
                    for summary in page.get("TrainingJobSummaries", []):
                        if summary.get("TrainingJobName") in wanted:
                            summaries[summary["TrainingJobName"]] = summary
        found: dict[str, Observation | None] = {}
        for h in handles:
            summary = summaries.get(h.native_name)
            # Without SecondaryStatus (moto leaves it out) a summary cannot tell provisioning from training.
            listed = summary is not None and bool(summary.get("SecondaryStatus"))
            found[h.job_id] = self.observe(summary, h.job_id, h.attempt) if listed else self.describe(h)
        return found


def failure_kind(reason: str) -> FailureKind:
    """SageMaker's FailureReason starts with who failed: AlgorithmError/ClientError (the job), CapacityError..."""
    lowered = reason.lower()
    if lowered.startswith("capacityerror") or "insufficient capacity" in lowered:
        return FailureKind.NO_CAPACITY
    if "resourcelimitexceeded" in lowered or "quota" in lowered:
        return FailureKind.QUOTA
    if lowered.startswith(("algorithmerror", "clienterror")) or "non-zero exit" in lowered:
        return FailureKind.USER_ERROR
    return FailureKind.BACKEND_ERROR


def metric_definitions(names: tuple[str, ...]) -> list[dict[str, str]]:
    """One MetricDefinition per declared name: SageMaker's console reads the same JOBPLANE_METRICS lines."""
    from chalicelib.jobs.metrics import sagemaker_regex

    return [{"Name": name, "Regex": sagemaker_regex(name)} for name in names]
