"""The `gce` backend: one ad-hoc Compute Engine VM per job attempt, stopped from inside and from outside."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from chalicelib.backends.agent import parse_report
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
    Utilization,
    job_env,
    parse_native_name,
)
from chalicelib.backends.gcp.base import (
    LABEL_ATTEMPT,
    LABEL_JOB_ID,
    LABEL_KIND,
    LABEL_STAGE,
    LABEL_STOP_REASON,
    LABEL_STOPPED_BY,
    StatusObjects,
    client_kwargs,
    gcp_quote,
    job_labels,
    label_value,
    machine_for,
    managed_filter,
    map_gcp_errors,
    refuse_foreign_uris,
)
from chalicelib.backends.gcp.cloudlogging import CloudLogging, read_entries
from chalicelib.backends.gcp.descriptors import GCE, GCE_EVENT_SOURCE, GCE_VM_EVENT_SOURCE
from chalicelib.backends.gcp.gce_script import MAX_METADATA_VALUE, startup_script
from chalicelib.errors import BackendError, UnsupportedError
from chalicelib.jobs import contract
from chalicelib.jobs.model import FailureKind, JobStatus, native_name, parse_iso
from chalicelib.jobs.spec_types import JobSpec

EVENT_SOURCE = GCE_EVENT_SOURCE
VM_EVENT_SOURCE = GCE_VM_EVENT_SOURCE  # the message a jobplane VM publishes when its job ends
# Instance.status -> what it says about the job while no exit status exists.
RUNNING_STATES = ("PROVISIONING", "STAGING", "RUNNING", "STOPPING", "SUSPENDING", "REPAIRING")
STOPPED_STATES = ("TERMINATED", "STOPPED", "SUSPENDED")


def power_state(status: str) -> PowerState:
    """Instance.status -> what it costs: a TERMINATED instance is only powered off (its disk remains)."""
    if status in RUNNING_STATES:
        return PowerState.RUNNING
    if status in STOPPED_STATES:
        return PowerState.STOPPED
    return PowerState.GONE


STOPPED_BY = "jobplane"
# Where the guest agent sends a startup script's output: google_metadata_script_runner (guest-agent),
# GCEMetadataScripts (the older guest environment).
STARTUP_SCRIPT_LOGS = ("google_metadata_script_runner", "GCEMetadataScripts")


class GceBackend(ComputeBackend):
    descriptor = GCE
    named_by_us = True  # the instance's name is the one we give it

    def __init__(self, settings, client=None, status_objects: StatusObjects | None = None, compute=None) -> None:
        super().__init__(settings)
        self._client = client
        self._compute = compute
        self.status_objects = status_objects or StatusObjects(settings)
        self._zones: dict[str, str] = {}  # instance name -> zone, as the last aggregated list saw it
        self._region_zones: dict[str, str] = {}  # region -> the zone jobs there are made in (regions.get)

    @property
    def client(self):
        """instances.get / setLabels / stop / delete by REST (rest.Instances): all an event or a stop needs,
        without importing compute_v1."""
        if self._client is None:
            from chalicelib.backends.gcp.rest import Instances

            self._client = Instances(self.settings)
        return self._client

    @property
    def compute(self):
        """The official compute_v1 InstancesClient: insert, aggregatedList, getGuestAttributes."""
        if self._compute is None:
            from google.cloud import compute_v1

            self._compute = compute_v1.InstancesClient(**client_kwargs(self.settings, "compute.googleapis.com"))
        return self._compute

    def zone_of(self, name: str) -> str:
        return self._zones.get(name, self.zone)

    @property
    def zone(self) -> str:
        """The zone of this call's region (base.CALL_REGION): JOBPLANE_GCE_ZONE in the deployment's region, else
        the region's first zone as Compute Engine lists it (regions.get `zones`, read once per region)."""
        region = CALL_REGION.get()
        if region in (None, self.settings.gcp_region):
            return self.settings.gce_zone
        if region not in self._region_zones:
            import urllib.parse

            from chalicelib.backends.gcp import rest

            base = (self.settings.gcp_api_endpoint or rest.COMPUTE).rstrip("/")
            project = urllib.parse.quote(self.settings.gcp_project or "", safe="")
            url = f"{base}/compute/v1/projects/{project}/regions/{urllib.parse.quote(region, safe='')}"
            with map_gcp_errors(f"getting region {region}"):
                answer = rest.request(self.settings, "GET", url)
            zones = sorted(str(z).rsplit("/", 1)[-1] for z in answer.get("zones") or [])
            if not zones:
                raise BackendError(f"Compute Engine lists no zone in region {region}")
            self._region_zones[region] = zones[0]
        return self._region_zones[region]

    # --- request building (pure: the client library's own types) ---------------------------
    def hourly_quote(self, spec, region, usage=None):
        # The VM is the machine and GPUs machine_for names (what the launch asks for), in the deployment's region.
        return gcp_quote(self.catalog, "gce", region or self.settings.gcp_region, spec)

    def _validate_impl(self, spec: JobSpec) -> None:
        refuse_foreign_uris(spec, "Compute Engine VMs")
        machine_for(spec)

    def instance(self, job, handle: Handle):
        """The Instance to insert for one attempt of `job` (deterministic: same job, same request)."""
        from google.cloud import compute_v1

        spec = job.spec
        machine = machine_for(spec)
        max_runtime = spec.max_runtime_minutes * 60
        env = job_env(spec, handle)
        bucket = self.settings.gcp_artifacts_bucket
        script = startup_script(
            job_id=handle.job_id,
            native_id=handle.native_name,  # the startup script's NATIVE_ID is our name (the instance's)
            image=spec.image,
            command=spec.command,
            env=env,
            status_uri=self.status_objects.uri(handle.native_name),
            events_topic=self.settings.gcp_events_topic,
            max_runtime_seconds=max_runtime,
            idle_samples=max(1, math.ceil(self.settings.idle_minutes)),
            # A2, A3 and G2 machine types come with GPUs even when the spec names only the machine type.
            gpus=machine.gpu_count or int(machine.machine_type.startswith(("a2-", "a3-", "g2-"))),
            setup=spec.setup,
            code_uri=spec.code_uri,
            code_sha256=spec.code_sha256,
            inputs=spec.inputs,
            artifacts_uri=contract.artifacts_uri(spec, handle.job_id, bucket, "gs"),
            checkpoint_uri=contract.checkpoint_location(spec, handle.job_id, bucket, "gs"),
        )
        if len(script.encode()) > MAX_METADATA_VALUE:
            raise UnsupportedError(
                "the job's command and env make a startup script over GCE's 256 KiB metadata limit",
                [{"field": "env", "message": "pass large values through object storage instead"}],
            )
        spot = spec.resources.spot
        scheduling = compute_v1.Scheduling(
            provisioning_model="SPOT" if spot else "STANDARD",
            # STOP keeps a preempted VM's record, so describe can tell a preemption from a loss;
            # the job's end (or the next attempt's launch) deletes it.
            instance_termination_action="STOP",
            # The provider-side backstop of max_runtime_minutes, past the reaper's grace.
            max_run_duration=compute_v1.Duration(seconds=max_runtime + (self.settings.overdue_grace_minutes + 10) * 60),
            on_host_maintenance="TERMINATE",  # required with GPUs; a migrated training job is no gain
            automatic_restart=False,
        )
        labels = job_labels(self.settings, handle.job_id, handle.attempt, spec.labels)
        return self.vm_resource(
            name=handle.native_name, machine=machine, labels=labels, script=script, scheduling=scheduling
        )

    def vm_resource(self, *, name: str, machine, labels: dict[str, str], script: str, scheduling):
        """The compute_v1 Instance every jobplane VM is (job VMs and dev VMs): the deployment's image, disk,
        network and service account, the machine's GPUs, the startup script and guest attributes on."""
        from google.cloud import compute_v1

        zone = self.zone
        accelerators = []
        if machine.gpu is not None and machine.machine_type.startswith("n1-"):
            # N1 takes attached GPUs; A2, A3 and G2 machine types come with theirs.
            accelerators.append(
                compute_v1.AcceleratorConfig(
                    accelerator_type=f"zones/{zone}/acceleratorTypes/{machine.gpu.gce_accelerator}",
                    accelerator_count=machine.gpu_count,
                )
            )
        return compute_v1.Instance(
            name=name,
            machine_type=f"zones/{zone}/machineTypes/{machine.machine_type}",
            labels=labels,
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=self.settings.gce_image, disk_size_gb=self.settings.gce_disk_gb
                    ),
                )
            ],
            network_interfaces=[
                compute_v1.NetworkInterface(
                    network=self.settings.gce_network,
                    access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")],
                )
            ],
            guest_accelerators=accelerators,
            scheduling=scheduling,
            service_accounts=[
                compute_v1.ServiceAccount(
                    email=self.settings.gce_service_account or "default",
                    scopes=["https://www.googleapis.com/auth/cloud-platform"],
                )
            ],
            metadata=compute_v1.Metadata(
                items=[
                    compute_v1.Items(key="startup-script", value=script),
                    compute_v1.Items(key="enable-guest-attributes", value="TRUE"),
                ]
            ),
        )

    # --- the interface ----------------------------------------------------------------------
    def _get(self, name: str, zone: str | None = None):
        """The instance (rest.Instance), or None when it does not exist."""
        with map_gcp_errors(f"getting instance {name}"):
            return self.client.get(project=self.settings.gcp_project, zone=zone or self.zone_of(name), instance=name)

    def _launch_impl(self, job, handle: Handle) -> LaunchResult:
        from google.api_core.exceptions import Conflict
        from google.cloud import compute_v1

        if handle.attempt > 1:  # the previous attempt's VM (stopped by a preemption) goes first
            previous = native_name(handle.job_id, handle.attempt - 1)
            self._delete(previous, self.zone_of(previous), f"replaced by attempt {handle.attempt}")
        request = compute_v1.InsertInstanceRequest(
            project=self.settings.gcp_project, zone=self.zone, instance_resource=self.instance(job, handle)
        )
        with map_gcp_errors(f"creating instance {handle.native_name}"):
            try:
                operation = self.compute.insert(request=request)
            except Conflict:  # a retried launch: the name is the job's, so this is the same VM
                return LaunchResult(handle.native_name, "AlreadyExists")
        error = getattr(operation, "error_message", None)
        if error:
            raise BackendError(f"creating instance {handle.native_name}: {error}")
        # The insert answers at once; a stockout ends the operation later (the VM never exists): describe reads it.
        return LaunchResult(handle.native_name, "PROVISIONING", operation=getattr(operation, "name", None) or None)

    def _describe_impl(self, handle: Handle) -> Observation | None:
        instance = self._get(handle.native_name)
        state = instance.status if instance is not None else None
        if state in RUNNING_STATES and state != "STOPPING":
            if state in ("PROVISIONING", "STAGING"):
                return self._obs(handle, JobStatus.LAUNCHING, state)
            return self._obs(handle, JobStatus.RUNNING, state, started=instance.last_start_timestamp)
        seen = self._from_exit(handle, self.status_objects.read(handle.native_name), state or "DELETED")
        if seen is not None:
            return seen
        if instance is None:
            return self._insert_outcome(handle)
        if state == "STOPPING":
            return self._obs(handle, JobStatus.RUNNING, state, started=instance.last_start_timestamp)
        if state not in STOPPED_STATES:
            raise BackendError(f"instance {handle.native_name} reports status {state}, which jobplane does not map")
        labels = dict(instance.labels)
        if labels.get(LABEL_STOPPED_BY) == STOPPED_BY:
            return self._obs(
                handle, JobStatus.CANCELLED, state, reason=f"stopped by jobplane: {labels.get(LABEL_STOP_REASON, '')}"
            )
        if instance.provisioning_model == "SPOT":
            return self._obs(
                handle, JobStatus.FAILED, state, FailureKind.INTERRUPTED, "spot VM preempted before its job ended"
            )
        return self._obs(
            handle, JobStatus.FAILED, state, FailureKind.BACKEND_ERROR, "the VM stopped without an exit status"
        )

    def _insert_outcome(self, handle: Handle) -> Observation | None:
        """No VM: the insert operation says whether it is still being made or why it never was (a stockout)."""
        if not handle.operation:
            return None
        with map_gcp_errors(f"reading operation {handle.operation}"):
            operation = self.client.operation(self.settings.gcp_project, self.zone, handle.operation)
        if operation is None:
            return None
        if operation.get("status") != "DONE":
            return self._obs(handle, JobStatus.LAUNCHING, f"insert {operation.get('status', 'PENDING')}")
        errors = (operation.get("error") or {}).get("errors") or []
        if not errors:
            return None  # the VM was made and is gone again: reconcile's lost-resource rules apply
        code, message = str(errors[0].get("code") or ""), str(errors[0].get("message") or "")
        return self._obs(
            handle, JobStatus.FAILED, f"insert DONE/{code}", insert_failure_kind(code), f"{code}: {message}"
        )

    def _obs(self, handle, status, native_status, kind=None, reason="", started=None, **extra) -> Observation:
        return Observation(
            status=status,
            native_status=native_status,
            native_id=handle.native_name,
            job_id=handle.job_id,
            attempt=handle.attempt,
            reason=reason,
            failure_kind=kind,
            started_at=parse_iso(started) if isinstance(started, str) and started else None,
            **extra,
        )

    def _from_exit(self, handle: Handle, report: dict[str, Any] | None, native_status: str) -> Observation | None:
        seen = parse_report(report, job_id=handle.job_id, attempt=handle.attempt)
        if seen is None:
            return None
        return replace(seen, native_status=f"{native_status}/{seen.native_status}", native_id=handle.native_name)

    # --- logs --------------------------------------------------------------------------------
    @property
    def cloud_logging(self) -> CloudLogging:
        if getattr(self, "_cloud_logging", None) is None:
            self._cloud_logging = CloudLogging(self.settings)
        return self._cloud_logging

    @cloud_logging.setter
    def cloud_logging(self, value: CloudLogging) -> None:
        self._cloud_logging = value

    def log_filter(self, handle: Handle) -> str:
        """The VM's startup-script entries: by instance id while the VM exists, else by its name label
        (a deleted VM's entries stay in Cloud Logging)."""
        project = self.settings.gcp_project
        names = " OR ".join(f'"projects/{project}/logs/{log}"' for log in STARTUP_SCRIPT_LOGS)
        instance = self._get(handle.native_name)
        if instance is not None and instance.id:
            which = f'resource.labels.instance_id="{instance.id}"'
        else:
            which = f'labels."compute.googleapis.com/resource_name"="{handle.native_name}"'
        return f'resource.type="gce_instance" AND {which} AND logName=({names})'

    def _logs_impl(self, handle: Handle, offset: Offset, limit: int) -> LogChunk:
        return read_entries(self.cloud_logging, self.log_filter(handle), offset, limit)

    def _cancel_impl(self, handle: Handle) -> None:
        instance = self._get(handle.native_name)
        if instance is None or instance.status in STOPPED_STATES:
            return
        self._label_stopped(instance, self.zone_of(handle.native_name), "cancel requested")
        with map_gcp_errors(f"stopping instance {handle.native_name}"):
            self.client.stop(
                project=self.settings.gcp_project, zone=self.zone_of(handle.native_name), instance=handle.native_name
            )

    def _label_stopped(self, instance, zone: str, reason: str) -> None:
        labels = {**dict(instance.labels), LABEL_STOPPED_BY: STOPPED_BY, LABEL_STOP_REASON: label_value(reason)}
        with map_gcp_errors(f"labelling instance {instance.name}"):
            self.client.set_labels(
                project=self.settings.gcp_project,
                zone=zone,
                instance=instance.name,
                labels=labels,
                label_fingerprint=instance.label_fingerprint,
            )

    def _delete(self, name: str, zone: str, reason: str, instance=None) -> None:
        instance = instance or self._get(name, zone)
        if instance is None:
            return
        self._label_stopped(instance, zone, reason)
        with map_gcp_errors(f"deleting instance {name}"):
            self.client.delete(project=self.settings.gcp_project, zone=zone, instance=name)  # None once gone

    # --- the reaper's view ----------------------------------------------------------------
    def _list_managed_impl(self) -> list[ManagedResource]:
        from google.cloud import compute_v1

        request = compute_v1.AggregatedListInstancesRequest(
            project=self.settings.gcp_project, filter=managed_filter(self.settings)
        )
        found = []
        with map_gcp_errors("listing jobplane instances"):
            for scope, scoped in self.compute.aggregated_list(request=request):
                zone = scope.rsplit("/", 1)[-1]
                for instance in scoped.instances:
                    labels = dict(instance.labels)
                    parsed = parse_native_name(instance.name)
                    self._zones[instance.name] = zone
                    launched = instance.last_start_timestamp or instance.creation_timestamp
                    devvm = labels.get(LABEL_KIND) == ResourceKind.DEVVM.value
                    found.append(
                        ManagedResource(
                            backend=self.name,
                            resource_id=instance.name,
                            # dev VMs have their own rules (idle_minutes, max_hours): the job sweep skips them
                            kind=ResourceKind.DEVVM if devvm else ResourceKind.VM,
                            state=instance.status,
                            power=power_state(instance.status),
                            stage=labels.get(LABEL_STAGE),
                            native_name=instance.name,
                            job_id=labels.get(LABEL_JOB_ID) or (parsed[0] if parsed else None),
                            attempt=int(labels[LABEL_ATTEMPT]) if labels.get(LABEL_ATTEMPT, "").isdigit() else None,
                            launched_at=parse_iso(launched) if launched else None,
                        )
                    )
        # The filter is the API's; the stage label is checked again by list_managed().
        return [r for r in found if r.stage == label_value(self.settings.stage)]

    def _stop_resource_impl(self, resource: ManagedResource, reason: str) -> None:
        self._delete(resource.resource_id, self.zone_of(resource.resource_id), reason)

    def _release_impl(self, handle: Handle, reason: str) -> None:
        self._delete(handle.native_name, self.zone_of(handle.native_name), reason)

    def utilization(self, resource: ManagedResource, window_minutes: int) -> Utilization | None:
        """The VM's own report (guest attributes jobplane/heartbeat and jobplane/gpu_percent, a mean over
        the idle window); None when they cannot be read."""
        return self.guest_usage(resource.resource_id, self.zone_of(resource.resource_id))

    def guest_usage(self, name: str, zone: str) -> Utilization | None:
        """Utilization from the guest attributes jobplane/heartbeat and jobplane/gpu_percent that a VM's
        script writes (job VMs and dev VMs alike); None when they cannot be read."""
        from google.api_core.exceptions import NotFound
        from google.cloud import compute_v1

        request = compute_v1.GetGuestAttributesInstanceRequest(
            project=self.settings.gcp_project, zone=zone, instance=name, query_path="jobplane/"
        )
        try:
            with map_gcp_errors(f"reading guest attributes of {name}"):
                attributes = self.compute.get_guest_attributes(request=request)
        except NotFound:  # nothing written yet: no heartbeat
            return Utilization(None, None)
        except BackendError:
            return None
        values = {item.key: item.value for item in attributes.query_value.items}
        try:
            gpu = float(values["gpu_percent"]) if values.get("gpu_percent") else None
            heartbeat = parse_iso(values.get("heartbeat"))
        except ValueError:
            return None
        return Utilization(gpu, heartbeat)

    # --- events -----------------------------------------------------------------------------
    def _parse_event_impl(self, raw: dict[str, Any]) -> Observation | None:
        """An audit log entry or a VM's own message is a hint: the instance and exit status are read again."""
        detail = raw.get("detail") or {}
        if raw.get("source") == VM_EVENT_SOURCE:
            name, zone = detail.get("native_id"), None
        else:
            name, zone = instance_of(detail)
        parsed = parse_native_name(name)
        if parsed is None:
            return None
        if zone:
            self._zones[name] = zone
        return self._describe_impl(Handle(parsed[0], name, parsed[1]))


def instance_of(entry: dict[str, Any]) -> tuple[str | None, str | None]:
    """(instance name, zone) a Compute Engine audit log entry is about."""
    payload = entry.get("protoPayload") or {}
    resource_name = payload.get("resourceName") or ""
    parts = resource_name.split("/")
    if len(parts) == 6 and parts[0] == "projects" and parts[2] == "zones" and parts[4] == "instances":
        return parts[5], parts[3]
    return None, None


#: Operation error codes of an insert that found no capacity (the _WITH_DETAILS form names the resource)
CAPACITY_CODES = frozenset({"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"})


def insert_failure_kind(code: str) -> FailureKind:
    """The failure kind of a finished insert operation's error code."""
    if code in CAPACITY_CODES:
        return FailureKind.NO_CAPACITY
    if code == "QUOTA_EXCEEDED" or "QUOTA" in code:
        return FailureKind.QUOTA
    return FailureKind.BACKEND_ERROR
