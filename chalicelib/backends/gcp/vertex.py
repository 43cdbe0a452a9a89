"""The `vertex` backend: Vertex AI custom jobs (the successor of AI Platform Training), low-level aiplatform_v1."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chalicelib.backends.base import (
    ComputeBackend,
    Handle,
    LaunchResult,
    LogChunk,
    Observation,
    Offset,
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
    job_labels,
    label_value,
    machine_for,
    map_gcp_errors,
)
from chalicelib.backends.gcp.cloudlogging import CloudLogging, read_entries
from chalicelib.backends.gcp.descriptors import VERTEX, VERTEX_EVENT_SOURCE
from chalicelib.errors import BackendError, UnsupportedError
from chalicelib.jobs.model import FailureKind, JobStatus
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
    if value is None or not isinstance(value, datetime) or value.timestamp() <= 0:
        return None
    return value


class VertexBackend(ComputeBackend):
    descriptor = VERTEX

    def __init__(self, settings, client=None) -> None:
        super().__init__(settings)
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from google.cloud import aiplatform_v1

            host = f"{self.settings.gcp_region}-aiplatform.googleapis.com"
            self._client = aiplatform_v1.JobServiceClient(**client_kwargs(self.settings, host))
        return self._client

    @property
    def parent(self) -> str:
        return f"projects/{self.settings.gcp_project}/locations/{self.settings.gcp_region}"

    # --- request building (pure: the client library's own types) ---------------------------
    def _validate_impl(self, spec: JobSpec) -> None:
        if not spec.image:
            raise UnsupportedError(
                "Vertex AI runs container images", [{"field": "image", "message": "required for backend vertex"}]
            )
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
        env = job_env(spec, handle)
        scheduling = aiplatform_v1.Scheduling(
            timeout=duration_pb2.Duration(seconds=spec.max_runtime_minutes * 60),
            strategy=aiplatform_v1.Scheduling.Strategy.SPOT
            if spec.resources.spot
            else aiplatform_v1.Scheduling.Strategy.ON_DEMAND,
            # One attempt per jobplane attempt: retries follow the spec's retries policy, not Vertex's.
            restart_job_on_worker_restart=False,
        )
        job_spec = aiplatform_v1.CustomJobSpec(
            worker_pool_specs=[
                aiplatform_v1.WorkerPoolSpec(
                    machine_spec=self.machine_spec(spec),
                    replica_count=1,
                    container_spec=aiplatform_v1.ContainerSpec(
                        image_uri=spec.image,
                        command=list(spec.command),
                        env=[aiplatform_v1.EnvVar(name=k, value=v) for k, v in sorted(env.items())],
                    ),
                )
            ],
            scheduling=scheduling,
        )
        if self.settings.vertex_service_account:
            job_spec.service_account = self.settings.vertex_service_account
        if spec.outputs and spec.outputs.startswith("gs://"):
            job_spec.base_output_directory = aiplatform_v1.GcsDestination(output_uri_prefix=spec.outputs)
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
        """A CustomJob as jobplane sees it; job_id is None when it is not this deployment's job."""
        state = custom_job.state
        state_name = getattr(state, "name", None) or str(state)
        if state_name not in STATES:
            raise BackendError(f"custom job {custom_job.name} reports state {state_name}, which jobplane does not map")
        status, kind = STATES[state_name]
        labels = dict(custom_job.labels)
        parsed = parse_native_name(custom_job.display_name)
        ours = (
            labels.get(LABEL_MANAGED) == "true"
            and labels.get(LABEL_STAGE) == label_value(self.settings.stage)
            and parsed is not None
            and labels.get(LABEL_JOB_ID) == parsed[0]
        )
        reason = ""
        error = custom_job.error
        if status is JobStatus.FAILED:
            spot = custom_job.job_spec.scheduling.strategy.name == "SPOT"
            kind = (
                FailureKind.TIMEOUT
                if state_name == "JOB_STATE_EXPIRED"
                else failure_kind_of(error.code, error.message, spot)
            )
            reason = error.message or state_name
        elif status is JobStatus.CANCELLED:
            reason = error.message or "cancelled on Vertex AI"
        return Observation(
            status=status,
            native_status=state_name,
            native_id=custom_job.name,
            job_id=parsed[0] if ours else None,
            attempt=int(labels.get(LABEL_ATTEMPT) or parsed[1]) if ours else None,
            reason=reason,
            failure_kind=kind if status is JobStatus.FAILED else None,
            at=_when(custom_job.end_time) or _when(custom_job.update_time),
            started_at=_when(custom_job.start_time),
        )

    def _parse_event_impl(self, raw: dict[str, Any]) -> Observation | None:
        """A Cloud Logging entry about a custom job is only a hint: the job is read again from the API."""
        name = custom_job_name(raw.get("detail") or {}, self.settings)
        if name is None:
            return None
        found = self._find(Handle("", "", native_id=name))
        if found is None:
            return None
        observed = self.observe(found)
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
