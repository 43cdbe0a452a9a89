"""The `vertex` backend: Vertex AI custom jobs (the successor of AI Platform Training), low-level aiplatform_v1."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.backends import rendezvous
from chalicelib.backends.agent import INPUT_NAME, RUN_STEPS_SH, UNPACK_CODE_SH, step_words
from chalicelib.backends.base import (
    CALL_REGION,
    ComputeBackend,
    Handle,
    LaunchResult,
    LogChunk,
    ManagedResource,
    Observation,
    Offset,
    PowerState,
    ResourceKind,
    job_env,
    parse_native_name,
)
from chalicelib.backends.gcp.base import (
    LABEL_ATTEMPT,
    LABEL_JOB_ID,
    LABEL_MANAGED,
    LABEL_STAGE,
    TPU_OFFERS,
    client_kwargs,
    gcp_quote,
    job_labels,
    label_value,
    machine_for,
    managed_filter,
    map_gcp_errors,
    parse_gs_uri,
    refuse_foreign_uris,
)
from chalicelib.backends.gcp.cloudlogging import CloudLogging, read_entries
from chalicelib.backends.gcp.descriptors import VERTEX, VERTEX_EVENT_SOURCE
from chalicelib.errors import BackendError, UnsupportedError
from chalicelib.jobs import contract
from chalicelib.jobs.model import FailureKind, JobStatus, parse_iso
from chalicelib.jobs.spec_types import JobSpec

EVENT_SOURCE = VERTEX_EVENT_SOURCE
# Every JobState a custom job can report -> (status, failure kind). JOB_STATE_UNSPECIFIED and any value
# this table does not name are errors: a default would silently mislabel a job.
STATES: dict[str, tuple[JobStatus, FailureKind | None]] = {
    "JOB_STATE_QUEUED": (JobStatus.LAUNCHING, None),
    "JOB_STATE_PENDING": (JobStatus.LAUNCHING, None),
    "JOB_STATE_RUNNING": (JobStatus.RUNNING, None),
    # An update of a running job (e.g. its labels) does not stop its workers.
    "JOB_STATE_UPDATING": (JobStatus.RUNNING, None),
    # Paused jobs keep their resources and resume; jobplane has no paused status, so it stays running.
    "JOB_STATE_PAUSED": (JobStatus.RUNNING, None),
    "JOB_STATE_SUCCEEDED": (JobStatus.SUCCEEDED, None),
    "JOB_STATE_FAILED": (JobStatus.FAILED, FailureKind.USER_ERROR),  # refined from job.error below
    # Only some workers succeeded: for a training job that is a failure.
    "JOB_STATE_PARTIALLY_SUCCEEDED": (JobStatus.FAILED, FailureKind.USER_ERROR),
    "JOB_STATE_EXPIRED": (JobStatus.FAILED, FailureKind.TIMEOUT),
    "JOB_STATE_CANCELLING": (JobStatus.CANCELLING, None),
    "JOB_STATE_CANCELLED": (JobStatus.CANCELLED, None),
}
REJECTED_STATES = ("JOB_STATE_UNSPECIFIED",)
# google.rpc.Code values that say why a FAILED job failed
_RPC_DEADLINE_EXCEEDED = 4
_RPC_RESOURCE_EXHAUSTED = 8


# Where Vertex AI mounts Cloud Storage in every custom job's container (Cloud Storage FUSE): gs://b/k is /gcs/b/k.
GCS_MOUNT = "/gcs"
# The job's own folders in its container: inputs are links into /gcs, code is unpacked from /gcs. Under /tmp
# because an image may run as a user who can write nothing else; the container is the job's alone.
INPUT_DIR = "/tmp/jobplane/inputs"  # noqa: S108
CODE_DIR = "/tmp/jobplane/code"  # noqa: S108
# The container's command: a fixed POSIX sh wrapper (never formatted with a job's values), then its
# arguments: the code archive under /gcs ("" for none), its sha256, the work folder ("" to stay in the
# image's), the number of inputs, each input's name, path under /gcs and kind, then the steps.
_PREPARE = r"""
code=$1 digest=$2 work=$3 count=$4
shift 4
mkdir -p "$JOBPLANE_INPUT_DIR" "$JOBPLANE_OUTPUT_DIR" "$JOBPLANE_CHECKPOINT_DIR" || exit 1
while [ "$count" -gt 0 ]; do
  # A prefix is its folder under /gcs; an object, a folder holding a link to that one file.
  if [ "$3" = prefix ]; then
    ln -sfn "$2" "$JOBPLANE_INPUT_DIR/$1" || exit 1
  else
    mkdir -p "$JOBPLANE_INPUT_DIR/$1" && ln -sf "$2" "$JOBPLANE_INPUT_DIR/$1/" || exit 1
  fi
  shift 3
  count=$((count - 1))
done
if [ -n "$work" ]; then
  mkdir -p "$work" || exit 1
  if [ -n "$code" ]; then unpack_code "$code" "$digest" "$work" || exit 1; fi
  cd "$work" || exit 1
fi
"""
WRAPPER = UNPACK_CODE_SH.lstrip("\n") + _PREPARE + RUN_STEPS_SH


def gcs_path(uri: str) -> str:
    """gs://bucket/key -> /gcs/bucket/key (no trailing /), where the job's container sees it."""
    bucket, key = parse_gs_uri(uri)
    return "/".join(part for part in (GCS_MOUNT, bucket, key) if part)


def wrapper_args(spec: JobSpec) -> list[str]:
    """The wrapper's arguments for `spec` (data only: it reads them as "$1", "$2", ...)."""
    args = [gcs_path(spec.code_uri) if spec.code_uri else "", spec.code_sha256 or ""]
    args += [CODE_DIR if spec.code_uri else "", str(len(spec.inputs))]
    for name, uri, is_prefix in contract.input_items(spec):
        if not INPUT_NAME.match(name):
            raise UnsupportedError(f"{name!r} is not an input name", [{"field": "inputs", "message": "[A-Za-z0-9._-]"}])
        args += [name, gcs_path(uri), "prefix" if is_prefix else "object"]
    return args + step_words(spec.setup, spec.command)


def failure_kind_of(code: int, message: str, spot: bool) -> FailureKind:
    text = message.lower()
    if "preempt" in text or (spot and "spot" in text and "reclaim" in text):
        return FailureKind.INTERRUPTED
    if "quota" in text:
        return FailureKind.QUOTA
    if code == _RPC_RESOURCE_EXHAUSTED or "resources are insufficient" in text or "stockout" in text:
        return FailureKind.NO_CAPACITY
    if code == _RPC_DEADLINE_EXCEEDED or "timeout" in text or "timed out" in text:
        return FailureKind.TIMEOUT
    return FailureKind.USER_ERROR


def _when(value) -> datetime | None:
    # proto-plus gives DatetimeWithNanoseconds (a datetime) for set timestamps; unset ones are None or epoch 0.
    # The REST JSON gives RFC 3339 text, absent when unset.
    if isinstance(value, str) and value:
        value = parse_iso(value)
    if value is None or not isinstance(value, datetime) or value.timestamp() <= 0:
        return None
    return value


@dataclass(frozen=True)
class CustomJobState:
    """What observe() reads of a CustomJob, from the client library's type or from the REST JSON."""

    name: str
    state: str
    labels: dict[str, str]
    display_name: str
    error_code: int
    error_message: str
    spot: bool
    end_time: datetime | None
    update_time: datetime | None
    start_time: datetime | None

    @classmethod
    def of(cls, custom_job) -> CustomJobState:
        """From aiplatform_v1.CustomJob (proto-plus: unset fields read as their defaults)."""
        state = custom_job.state
        return cls(
            name=custom_job.name,
            state=getattr(state, "name", None) or str(state),
            labels=dict(custom_job.labels),
            display_name=custom_job.display_name,
            error_code=custom_job.error.code,
            error_message=custom_job.error.message,
            spot=custom_job.job_spec.scheduling.strategy.name == "SPOT",
            end_time=_when(custom_job.end_time),
            update_time=_when(custom_job.update_time),
            start_time=_when(custom_job.start_time),
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CustomJobState:
        """From customJobs.get's JSON (camelCase, enums as names, absent fields unset)."""
        error = data.get("error") or {}
        scheduling = (data.get("jobSpec") or {}).get("scheduling") or {}
        return cls(
            name=str(data.get("name") or ""),
            state=str(data.get("state") or REJECTED_STATES[0]),
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
            display_name=str(data.get("displayName") or ""),
            error_code=int(error.get("code") or 0),
            error_message=str(error.get("message") or ""),
            spot=scheduling.get("strategy") == "SPOT",
            end_time=_when(data.get("endTime")),
            update_time=_when(data.get("updateTime")),
            start_time=_when(data.get("startTime")),
        )


class VertexBackend(ComputeBackend):
    descriptor = VERTEX

    def __init__(self, settings, client=None) -> None:
        super().__init__(settings)
        # region -> JobServiceClient on that region's endpoint (a client handed in serves the deployment's)
        self._clients: dict[str, Any] = {} if client is None else {settings.gcp_region: client}

    @property
    def region(self) -> str:
        """The region of the job this call is about (base.CALL_REGION), else the deployment's."""
        return CALL_REGION.get() or self.settings.gcp_region

    @property
    def client(self):
        """The JobServiceClient of this call's region: Vertex serves each region at its own endpoint."""
        region = self.region
        if region not in self._clients:
            from google.cloud import aiplatform_v1

            host = f"{region}-aiplatform.googleapis.com"
            self._clients[region] = aiplatform_v1.JobServiceClient(**client_kwargs(self.settings, host))
        return self._clients[region]

    @property
    def parent(self) -> str:
        return f"projects/{self.settings.gcp_project}/locations/{self.region}"

    # --- request building (pure: the client library's own types) ---------------------------
    def hourly_quote(self, spec, region, usage=None):
        # Vertex bills the machine and accelerators plus its own premium: its table is empty, so this is Unknown.
        return gcp_quote(self.catalog, "vertex", region or self.settings.gcp_region, spec)

    def _validate_impl(self, spec: JobSpec) -> None:
        if not spec.image:
            raise UnsupportedError(
                "Vertex AI runs container images", [{"field": "image", "message": "required for backend vertex"}]
            )
        refuse_foreign_uris(spec, "Vertex AI custom jobs")
        tpu = spec.resources.tpu
        if tpu is not None and tpu not in TPU_OFFERS:
            raise UnsupportedError(
                f"TPU type {tpu} is not offered through Vertex AI custom jobs here",
                [{"field": "resources.tpu", "message": f"one of {', '.join(TPU_OFFERS)}"}],
            )
        if tpu is None:
            machine_for(spec)

    def machine_spec(self, spec: JobSpec):
        from google.cloud import aiplatform_v1

        tpu = spec.resources.tpu
        if tpu is not None:
            machine_type, accelerator, count, topology = TPU_OFFERS[tpu]
            fields: dict[str, Any] = {"machine_type": machine_type}
            if accelerator:
                fields.update(accelerator_type=aiplatform_v1.AcceleratorType[accelerator], accelerator_count=count)
            if topology:
                fields["tpu_topology"] = topology
            return aiplatform_v1.MachineSpec(**fields)
        machine = machine_for(spec)
        if machine.gpu is None:
            return aiplatform_v1.MachineSpec(machine_type=machine.machine_type)
        return aiplatform_v1.MachineSpec(
            machine_type=machine.machine_type,
            accelerator_type=aiplatform_v1.AcceleratorType[machine.gpu.vertex_accelerator],
            accelerator_count=machine.gpu_count,
        )

    def custom_job(self, job, handle: Handle):
        """The CustomJob to create for one attempt of `job` (deterministic: same job, same request)."""
        from google.cloud import aiplatform_v1
        from google.protobuf import duration_pb2

        spec = job.spec
        bucket = self.settings.gcp_artifacts_bucket
        artifacts = contract.artifacts_uri(spec, handle.job_id, bucket, "gs")
        env = {
            **job_env(spec, handle),
            **contract.job_variables(
                handle.job_id,
                handle.attempt,
                input_dir=INPUT_DIR,
                # Cloud Storage FUSE writes through to the bucket: outputs land there, checkpoints stay synced.
                output_dir=gcs_path(artifacts),
                checkpoint_dir=gcs_path(contract.checkpoint_location(spec, handle.job_id, bucket, "gs")),
            ),
        }
        scheduling = aiplatform_v1.Scheduling(
            timeout=duration_pb2.Duration(seconds=spec.max_runtime_minutes * 60),
            strategy=aiplatform_v1.Scheduling.Strategy.SPOT
            if spec.resources.spot
            else aiplatform_v1.Scheduling.Strategy.ON_DEMAND,
            # One attempt per jobplane attempt: retries follow the spec's retries policy, not Vertex's.
            restart_job_on_worker_restart=False,
        )
        nodes = spec.resources.nodes
        script = WRAPPER
        if nodes > 1:
            # Each replica reads its rank and the master (workerpool0's replica) from CLUSTER_SPEC.
            env.update(rendezvous.launch_env(spec))
            script = rendezvous.prelude(rendezvous.VERTEX) + WRAPPER

        def pool(replicas: int):
            return aiplatform_v1.WorkerPoolSpec(
                machine_spec=self.machine_spec(spec),
                replica_count=replicas,
                container_spec=aiplatform_v1.ContainerSpec(
                    image_uri=spec.image,
                    command=["/bin/sh", "-c", script, "jobplane"],
                    args=wrapper_args(spec),
                    env=[aiplatform_v1.EnvVar(name=k, value=v) for k, v in sorted(env.items())],
                ),
            )

        # workerpool0 is the primary replica (one, by Vertex's rule); workerpool1 the other nodes, alike.
        pools = [pool(1)] if nodes == 1 else [pool(1), pool(nodes - 1)]
        job_spec = aiplatform_v1.CustomJobSpec(
            worker_pool_specs=pools,
            scheduling=scheduling,
            # AIP_MODEL_DIR is then <artifacts_uri>model/: what a Vertex-aware script saves lands with the outputs.
            base_output_directory=aiplatform_v1.GcsDestination(output_uri_prefix=artifacts),
        )
        if self.settings.vertex_service_account:
            job_spec.service_account = self.settings.vertex_service_account
        return aiplatform_v1.CustomJob(
            display_name=handle.native_name,
            labels=job_labels(self.settings, handle.job_id, handle.attempt, spec.labels),
            job_spec=job_spec,
        )

    # --- the interface ----------------------------------------------------------------------
    def _find(self, handle: Handle):
        """The custom job of this attempt: by resource name, else by display name and labels (a launch
        whose response was lost has no resource name in the store yet)."""
        from google.api_core.exceptions import NotFound
        from google.cloud import aiplatform_v1

        if handle.native_id is not None:
            with map_gcp_errors(f"getting custom job {handle.native_id}"):
                try:
                    return self.client.get_custom_job(name=handle.native_id)
                except NotFound:
                    return None
        request = aiplatform_v1.ListCustomJobsRequest(
            parent=self.parent,
            filter=(
                f'display_name="{handle.native_name}" AND labels.{LABEL_JOB_ID}="{handle.job_id}" '
                f'AND labels.{LABEL_STAGE}="{label_value(self.settings.stage)}"'
            ),
        )
        with map_gcp_errors(f"listing custom jobs named {handle.native_name}"):
            for found in self.client.list_custom_jobs(request=request):
                return found
        return None

    def _launch_impl(self, job, handle: Handle) -> LaunchResult:
        from google.cloud import aiplatform_v1

        # By name, not by a resource name the store may hold: that is what a lost response leaves behind.
        existing = self._find(Handle(handle.job_id, handle.native_name, handle.attempt))
        if existing is not None:  # a retried launch: Vertex names are not unique, so never create twice
            return LaunchResult(existing.name, existing.state.name)
        request = aiplatform_v1.CreateCustomJobRequest(parent=self.parent, custom_job=self.custom_job(job, handle))
        with map_gcp_errors(f"creating custom job {handle.native_name}"):
            created = self.client.create_custom_job(request=request)
        return LaunchResult(created.name, created.state.name)

    def _describe_impl(self, handle: Handle) -> Observation | None:
        found = self._find(handle)
        return None if found is None else self.observe(found)

    def _cancel_impl(self, handle: Handle) -> None:
        from google.api_core.exceptions import BadRequest, FailedPrecondition, NotFound

        found = self._find(handle)
        if found is None:
            return
        with map_gcp_errors(f"cancelling custom job {found.name}"):
            try:
                self.client.cancel_custom_job(name=found.name)
            except NotFound:
                return  # gone: nothing left to stop
            except (BadRequest, FailedPrecondition):
                # The API refuses to cancel a finished job (HTTP 400, FAILED_PRECONDITION).
                now = self._find(handle)
                if now is None or STATES.get(now.state.name, (JobStatus.RUNNING,))[0].terminal:
                    return
                raise

    # --- logs --------------------------------------------------------------------------------
    @property
    def cloud_logging(self) -> CloudLogging:
        if getattr(self, "_cloud_logging", None) is None:
            self._cloud_logging = CloudLogging(self.settings)
        return self._cloud_logging

    @cloud_logging.setter
    def cloud_logging(self, value: CloudLogging) -> None:
        self._cloud_logging = value

    def log_filter(self, handle: Handle) -> str | None:
        """Cloud Logging's filter for the custom job's entries (by its numeric id), None before it exists."""
        name = handle.native_id
        if name is None:
            found = self._find(handle)
            name = found.name if found is not None else None
        if not name:
            return None
        return f'resource.type="ml_job" AND resource.labels.job_id="{name.rsplit("/", 1)[-1]}"'

    def _logs_impl(self, handle: Handle, offset: Offset, limit: int) -> LogChunk:
        filter_ = self.log_filter(handle)
        if filter_ is None:
            return LogChunk("", offset, True, "Vertex AI has no custom job for this attempt")
        return read_entries(self.cloud_logging, filter_, offset, limit)

    def observe(self, custom_job) -> Observation:
        """A CustomJob (the client library's type or a CustomJobState) as jobplane sees it; job_id is None
        when it is not this deployment's job."""
        job = custom_job if isinstance(custom_job, CustomJobState) else CustomJobState.of(custom_job)
        state_name = job.state
        if state_name not in STATES:
            raise BackendError(f"custom job {job.name} reports state {state_name}, which jobplane does not map")
        status, kind = STATES[state_name]
        labels = job.labels
        parsed = parse_native_name(job.display_name)
        ours = (
            labels.get(LABEL_MANAGED) == "true"
            and labels.get(LABEL_STAGE) == label_value(self.settings.stage)
            and parsed is not None
            and labels.get(LABEL_JOB_ID) == parsed[0]
        )
        reason = ""
        if status is JobStatus.FAILED:
            kind = (
                FailureKind.TIMEOUT
                if state_name == "JOB_STATE_EXPIRED"
                else failure_kind_of(job.error_code, job.error_message, job.spot)
            )
            reason = job.error_message or state_name
        elif status is JobStatus.CANCELLED:
            reason = job.error_message or "cancelled on Vertex AI"
        return Observation(
            status=status,
            native_status=state_name,
            native_id=job.name,
            job_id=parsed[0] if ours else None,
            attempt=int(labels.get(LABEL_ATTEMPT) or parsed[1]) if ours else None,
            reason=reason,
            failure_kind=kind if status is JobStatus.FAILED else None,
            at=job.end_time or job.update_time,
            started_at=job.start_time,
            waiting_for_capacity=state_name in ("JOB_STATE_QUEUED", "JOB_STATE_PENDING"),
        )

    # --- reconcile at scale: list this stage's unfinished custom jobs, 100 a page ------------------
    describes_by_listing = True

    def active_filter(self) -> str:
        """customJobs.list's filter for this stage's jobs that have not ended (`state` supports `!=`)."""
        ended = " AND ".join(f'state!="{name}"' for name, (status, _) in STATES.items() if status.terminal)
        return f"{managed_filter(self.settings)} AND {ended}"

    def _describe_many_impl(self, handles: list[Handle]) -> dict[str, Observation | None]:
        from google.cloud import aiplatform_v1

        request = aiplatform_v1.ListCustomJobsRequest(parent=self.parent, filter=self.active_filter(), page_size=100)
        with map_gcp_errors("listing unfinished custom jobs"):
            listed = list(self.client.list_custom_jobs(request=request))
        by_name = {j.name: j for j in listed}
        by_display: dict[tuple[str, str], Any] = {}
        for j in listed:
            by_display.setdefault((j.display_name, dict(j.labels).get(LABEL_JOB_ID, "")), j)
        found: dict[str, Observation | None] = {}
        for h in handles:
            # The list holds whole CustomJobs (what get returns); one it lacks (ended, or not labelled as
            # this stage's) is described alone, as describe would.
            custom_job = by_name.get(h.native_id) if h.native_id else by_display.get((h.native_name, h.job_id))
            found[h.job_id] = self.observe(custom_job) if custom_job is not None else self.describe(h)
        return found

    # --- the orphan sweep: the same list, every unfinished custom job labelled as this stage's --------------
    def _list_managed_impl(self) -> list[ManagedResource]:
        from google.cloud import aiplatform_v1

        request = aiplatform_v1.ListCustomJobsRequest(parent=self.parent, filter=self.active_filter(), page_size=100)
        with map_gcp_errors("listing unfinished custom jobs"):
            listed = list(self.client.list_custom_jobs(request=request))
        found = []
        for custom_job in listed:
            job = CustomJobState.of(custom_job)
            labels = job.labels
            parsed = parse_native_name(job.display_name)
            if labels.get(LABEL_MANAGED) != "true" or parsed is None or labels.get(LABEL_JOB_ID) != parsed[0]:
                continue  # the filter asks for the labels; a job without them is never jobplane's to stop
            stage = labels.get(LABEL_STAGE)
            attempt = labels.get(LABEL_ATTEMPT, "")
            found.append(
                ManagedResource(
                    backend=self.name,
                    resource_id=job.name,
                    kind=ResourceKind.JOB,
                    state=job.state,
                    power=PowerState.RUNNING,
                    stage=self.settings.stage if stage == label_value(self.settings.stage) else stage,
                    native_name=job.display_name,
                    job_id=parsed[0],
                    attempt=int(attempt) if attempt.isdigit() else parsed[1],
                    launched_at=job.start_time or job.update_time,
                )
            )
        return found

    def _stop_resource_impl(self, resource: ManagedResource, reason: str) -> None:
        """customJobs.cancel (it takes no reason, and a custom job's labels cannot be changed)."""
        from google.api_core.exceptions import NotFound

        with map_gcp_errors(f"cancelling custom job {resource.resource_id}"):
            try:
                self.client.cancel_custom_job(name=resource.resource_id)
            except NotFound:
                return

    def _parse_event_impl(self, raw: dict[str, Any]) -> Observation | None:
        """A Cloud Logging entry about a custom job is only a hint: the job is read again from the API, by
        REST (customJobs.get: rest.py), so that an event does not import aiplatform_v1."""
        from chalicelib.backends.gcp import rest

        name = custom_job_name(raw.get("detail") or {}, self.settings)
        if name is None:
            return None
        with map_gcp_errors(f"getting custom job {name}"):
            found = rest.get_custom_job(self.settings, name)
        if found is None:
            return None
        observed = self.observe(CustomJobState.from_json(found))
        return observed if observed.job_id is not None else None  # not this deployment's custom job


def custom_job_name(entry: dict[str, Any], settings) -> str | None:
    """projects/P/locations/L/customJobs/ID of the custom job a log entry is about, or None."""
    resource = entry.get("resource") or {}
    labels = resource.get("labels") or {}
    if resource.get("type") == "ml_job" and str(labels.get("job_id", "")).isdigit():
        project = labels.get("project_id") or settings.gcp_project
        return f"projects/{project}/locations/{settings.gcp_region}/customJobs/{labels['job_id']}"
    payload = entry.get("protoPayload") or {}
    for candidate in (payload.get("resourceName"), (payload.get("response") or {}).get("name")):
        if isinstance(candidate, str) and "/customJobs/" in candidate:
            head, _, job = candidate.partition("/customJobs/")
            job = job.split("/")[0]
            if job.isdigit() and head.startswith("projects/") and "/locations/" in head:
                return f"{head}/customJobs/{job}"
    return None
