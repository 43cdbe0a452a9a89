"""SageMaker training jobs: the first choice on AWS (managed spot, S3 checkpoints, no time limit that matters)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from chalicelib.backends import rendezvous
from chalicelib.backends.aws import staging
from chalicelib.backends.aws.base import TAG_STOPPED_BY, AwsBackend, aws_quote, env_list, epoch_ms, instance_type_for
from chalicelib.backends.aws.descriptors import SAGEMAKER
from chalicelib.backends.aws.errors import aws_errors, error_code
from chalicelib.backends.base import (
    CALL_REGION,
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
from chalicelib.pricing.jobs import Usage

if TYPE_CHECKING:
    from chalicelib.jobs.spec_types import JobSpec

DETAIL_TYPE = "SageMaker Training Job State Change"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# SecondaryStatus values during which the container runs (the rest of InProgress is provisioning).
_RUNNING_SECONDARY = {"Downloading", "Training", "Uploading", "Restarting"}
MAX_ENV_VALUE = 512  # CreateTrainingJob's limit on each Environment value
MAX_ENV = 48
MAX_CONTAINER_ARG = 256  # CreateTrainingJob's limit on each ContainerEntrypoint / ContainerArguments item
MAX_CONTAINER_ARGS = 100  # ... and on their number
MAX_CHANNELS = 20
#: how long the sweep may use the InProgress list describe_many read (the same tick), instead of listing again
LISTING_REUSE_SECONDS = 120.0


class SageMakerBackend(AwsBackend):
    descriptor = SAGEMAKER
    services = ("sagemaker",)
    stages_files = True
    named_by_us = True  # every SageMaker call takes the TrainingJobName we chose

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self._arns: dict[str, str] = {}  # training job name -> ARN, as the sweep's last list showed it
        self._listed: tuple[float, list[dict[str, Any]]] | None = None  # describe_many's InProgress list

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
        if spec.code_uri and not spec.code_uri.startswith("s3://"):
            raise UnsupportedError("SageMaker reads code from S3", [{"field": "code_uri", "message": "an s3:// URI"}])
        if len(spec.inputs) + bool(spec.code_uri) > MAX_CHANNELS:
            limit = MAX_CHANNELS - bool(spec.code_uri)
            raise UnsupportedError(
                "too many inputs for SageMaker",
                [{"field": "inputs", "message": f"at most {limit} inputs (SageMaker channels; the code takes one)"}],
            )
        self._validate_arguments(spec)
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

    def _validate_arguments(self, spec: JobSpec) -> None:
        """Setup and command travel as ContainerArguments: at most 100 items of 256 characters each."""
        for field, args in [("command", spec.command)] + [(f"setup[{i}]", step) for i, step in enumerate(spec.setup)]:
            for j, arg in enumerate(args):
                if len(arg) > MAX_CONTAINER_ARG:
                    raise UnsupportedError(
                        "an argument too long for SageMaker",
                        [
                            {
                                "field": f"{field}[{j}]",
                                "message": f"at most {MAX_CONTAINER_ARG} characters on SageMaker; "
                                "put a longer script in a file in workdir and run that",
                            }
                        ],
                    )
        count = len(staging.wrapper_args(spec, staging.SAGEMAKER))
        if count > MAX_CONTAINER_ARGS:
            raise UnsupportedError(
                "too many arguments for SageMaker",
                [
                    {
                        # The command alone too long, or with the setup steps.
                        "field": "command" if len(spec.command) + 4 > MAX_CONTAINER_ARGS else "setup",
                        "message": f"command and setup take {count} container arguments (with one count per step "
                        f"and 4 of jobplane's); SageMaker takes at most {MAX_CONTAINER_ARGS}",
                    }
                ],
            )

    def training_job_request(self, job, handle: Handle) -> dict[str, Any]:
        """CreateTrainingJob's arguments for one attempt of `job` (pure but for the role lookup).

        The entrypoint is /bin/sh running jobplane's fixed wrapper (in pieces: SageMaker takes at most 256
        characters per entrypoint item); setup and command are its arguments, never part of a script.
        """
        spec = job.spec
        layout = staging.SAGEMAKER
        bucket = self.settings.artifacts_bucket
        runtime = spec.max_runtime_minutes * 60
        nodes = spec.resources.nodes
        # A multi-node job: InstanceCount machines, each deriving its rank and the master (algo-1) from
        # resourceconfig.json before the wrapper runs; the rest of the node variables travel in Environment.
        script = staging.WRAPPER if nodes == 1 else rendezvous.prelude(rendezvous.SAGEMAKER) + staging.WRAPPER
        pieces = staging.split_script(script, MAX_CONTAINER_ARG)
        env = dict(env_list(spec, handle))
        env.update(layout.variables(handle.job_id, handle.attempt))
        if nodes > 1:
            env.update(rendezvous.launch_env(spec))
        request: dict[str, Any] = {
            "TrainingJobName": handle.native_name,
            "AlgorithmSpecification": {
                "TrainingImage": spec.image,
                "TrainingInputMode": "File",
                "ContainerEntrypoint": staging.sagemaker_entrypoint(len(pieces)) + pieces,
                "ContainerArguments": staging.wrapper_args(spec, layout),
            },
            "RoleArn": self.role(self.settings.sagemaker_role),
            # SageMaker uploads /opt/ml/model as <this>/<TrainingJobName>/output/model.tar.gz.
            "OutputDataConfig": {"S3OutputPath": contract.artifacts_uri(spec, job.job_id, bucket)},
            "ResourceConfig": {
                "InstanceType": instance_type_for(spec.resources, "ml."),
                "InstanceCount": nodes,
                "VolumeSizeInGB": self.settings.sagemaker_volume_gb,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": runtime},
            "Environment": dict(sorted(env.items())),
            # Always: SageMaker restores this folder from S3 before the container starts and syncs it back while
            # it runs, so a retried attempt (or a spot restart) resumes from the last checkpoint.
            "CheckpointConfig": {
                "S3Uri": contract.checkpoint_location(spec, job.job_id, bucket),
                "LocalPath": layout.checkpoint_dir,
            },
            "Tags": [{"Key": k, "Value": v} for k, v in self.job_tags(handle, job).items()],
        }
        if spec.metrics:
            request["AlgorithmSpecification"]["MetricDefinitions"] = metric_definitions(spec.metrics)
        if spec.resources.spot:
            request["EnableManagedSpotTraining"] = True
            request["StoppingCondition"]["MaxWaitTimeInSeconds"] = runtime + self.settings.spot_wait_minutes * 60
        # One channel per input, named as the spec names it: SageMaker puts channel <name> at
        # /opt/ml/input/data/<name>, which is $JOBPLANE_INPUT_DIR/<name>. An object's URI is an S3Prefix too:
        # SageMaker downloads every object whose key starts with it.
        channels = [(name, uri) for name, uri, _ in contract.input_items(spec)]
        if spec.code_uri:
            channels.append((staging.CODE_CHANNEL, spec.code_uri))
        if channels:
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
                for name, uri in channels
            ]
        return request

    def _launch_request_impl(self, job, handle: Handle) -> dict[str, Any]:
        return {
            "service": "sagemaker",
            "calls": [{"operation": "CreateTrainingJob", "request": self.training_job_request(job, handle)}],
        }

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

    quotes_every_node = True  # InstanceCount is in the quote

    def hourly_quote(self, spec, region, usage=None):
        # Managed spot bills the on-demand rate (the catalog answers it for spot) for BillableTimeInSeconds.
        usage = usage or Usage()
        sku = usage.instance_type or instance_type_for(spec.resources, "ml.")
        spot = spec.resources.spot if usage.spot is None else usage.spot
        # InstanceCount machines: the count the provider reported, else the job's nodes (what it asks for).
        count = usage.count or spec.resources.nodes
        return aws_quote(self.catalog, "sagemaker", region or self.settings.region, sku, spot, count)

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

    def _node_logs_impl(self, handle: Handle, node: int, offset: Offset, limit: int) -> LogChunk:
        from chalicelib.backends.aws.cwlogs import prefixed_streams, read_streams

        # Node (rank) r is host algo-<r+1>: the rendezvous prelude ranks hosts in resourceconfig.json's order.
        logs = self.client("logs")
        prefix = f"{handle.native_name}/algo-{node + 1}-"
        return read_streams(logs, lambda: prefixed_streams(logs, LOG_GROUP, prefix), offset, limit)

    def _cancel_impl(self, handle: Handle) -> None:
        # One StopTrainingJob stops every instance of the job (a multi-node job is one training job).
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
            waiting_for_capacity=state is JobStatus.LAUNCHING and secondary == "Starting" and _capacity_wait(detail),
            usage=usage_of(detail),
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
    #: a TrainingJobSummary has no TrainingStartTime (nor what the job runs on): reconcile describes a job again
    #: before applying
    #: an observation that came from a list page
    listed_fields_unknown = frozenset({"started_at", "usage"})
    describes_by_listing = True
    #: the statuses a job is listed under (every other status is describe's to answer: an ended job
    #: leaves the list, and its FailureReason is only in DescribeTrainingJob)
    LISTED_STATUSES = ("InProgress", "Stopping")

    def _describe_many_impl(self, handles: list[Handle]) -> dict[str, Observation | None]:
        wanted = {h.native_name for h in handles}
        summaries: dict[str, dict[str, Any]] = {}
        paginator = self.client().get_paginator("list_training_jobs")
        in_progress: list[dict[str, Any]] = []
        for status in self.LISTED_STATUSES:
            with aws_errors("sagemaker", "ListTrainingJobs"):
                pages = paginator.paginate(NameContains="jp-", StatusEquals=status, PaginationConfig={"PageSize": 100})
                for page in pages:
                    for summary in page.get("TrainingJobSummaries", []):
                        if status == "InProgress":
                            in_progress.append(summary)
                        if summary.get("TrainingJobName") in wanted:
                            summaries[summary["TrainingJobName"]] = summary
        # the same tick's sweep reads this list instead of listing again (in the deployment's region)
        if CALL_REGION.get() in (None, self.settings.region):
            self._listed = (time.monotonic(), in_progress)
        found: dict[str, Observation | None] = {}
        for h in handles:
            summary = summaries.get(h.native_name)
            # Without SecondaryStatus (moto leaves it out) a summary cannot tell provisioning from training.
            listed = summary is not None and bool(summary.get("SecondaryStatus"))
            found[h.job_id] = self.observe(summary, h.job_id, h.attempt) if listed else self.describe(h)
        return found

    # --- the orphan sweep: running jp- training jobs, their tags read only before one is stopped ------------
    def _list_managed_impl(self) -> list[ManagedResource]:
        """ListTrainingJobs InProgress by name (100 a page): a summary has no tags, so each is unverified."""
        found = []
        listed, self._listed = self._listed, None
        if listed is not None and time.monotonic() - listed[0] < LISTING_REUSE_SECONDS:
            summaries: Iterable[dict[str, Any]] = listed[1]  # this tick's reconcile listed them moments ago
        else:
            summaries = self._list_in_progress()
        for summary in summaries:
            name = summary.get("TrainingJobName")
            parsed = parse_native_name(name)
            if parsed is None:
                continue  # not a name jobplane gives
            self._arns[name] = summary.get("TrainingJobArn")
            found.append(
                ManagedResource(
                    backend=self.name,
                    resource_id=name,
                    kind=ResourceKind.JOB,
                    state=str(summary.get("TrainingJobStatus") or ""),
                    power=PowerState.RUNNING,
                    stage=None,
                    native_name=name,
                    job_id=parsed[0],
                    attempt=parsed[1],
                    launched_at=epoch_ms(summary.get("CreationTime")),
                    unverified=True,
                )
            )
        return found

    def _list_in_progress(self) -> Iterator[dict[str, Any]]:
        paginator = self.client().get_paginator("list_training_jobs")
        with aws_errors("sagemaker", "ListTrainingJobs"):
            pages = paginator.paginate(
                NameContains="jp-", StatusEquals="InProgress", PaginationConfig={"PageSize": 100}
            )
            for page in pages:
                yield from page.get("TrainingJobSummaries", [])

    def _confirm_impl(self, resources: list[ManagedResource]) -> list[ManagedResource]:
        """ListTags of each training job the sweep would stop (SageMaker has no batched tag read)."""
        found = []
        for resource in resources:
            arn = self._arns.get(resource.resource_id)
            if not arn:
                continue
            with aws_errors("sagemaker", "ListTags"):
                tags = {t["Key"]: t["Value"] for t in self.client().list_tags(ResourceArn=arn).get("Tags", [])}
            mine = self.confirmed(resource, tags)
            if mine is not None:
                found.append(mine)
        return found

    def _stop_resource_impl(self, resource: ManagedResource, reason: str) -> None:
        """StopTrainingJob, after tagging who stopped it and why (StopTrainingJob takes no reason)."""
        arn = self._arns.get(resource.resource_id)
        if arn:
            with aws_errors("sagemaker", "AddTags"):
                self.client().add_tags(ResourceArn=arn, Tags=[{"Key": TAG_STOPPED_BY, "Value": reason[:256]}])
        self._cancel_impl(Handle(resource.job_id or "", resource.resource_id, resource.attempt or 1))


def usage_of(detail: dict[str, Any]) -> Usage | None:
    """What DescribeTrainingJob (or its event) says the job ran on and billed; None from a list summary,
    which says none of it."""
    config = detail.get("ResourceConfig") or {}
    billable = detail.get("BillableTimeInSeconds")
    spot = detail.get("EnableManagedSpotTraining")
    if not config and billable is None and spot is None:
        return None
    return Usage(
        instance_type=config.get("InstanceType"),
        count=int(config["InstanceCount"]) if config.get("InstanceCount") else None,
        spot=bool(spot) if spot is not None else None,
        billable_seconds=float(billable) if isinstance(billable, (int, float)) else None,
    )


def _capacity_wait(detail: dict[str, Any]) -> bool:
    """SageMaker retries a launch it found no instances for, saying so in the Starting transition's message."""
    transitions = detail.get("SecondaryStatusTransitions") or []
    message = str(transitions[-1].get("StatusMessage") or "") if transitions else ""
    return "capacity" in message.lower()


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
