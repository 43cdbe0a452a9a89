"""Dev VMs on GCE: a labelled GPU instance that stops (its disk kept) and starts again, watched like a job VM."""

from __future__ import annotations

import time

from chalicelib.backends.base import Utilization
from chalicelib.backends.gcp.base import (
    LABEL_STAGE,
    client_kwargs,
    label_value,
    machine_for_resources,
    map_gcp_errors,
)
from chalicelib.backends.gcp.gce import STOPPED_STATES, GceBackend
from chalicelib.backends.gcp.gce_script import devvm_startup_script
from chalicelib.devvms import DevVmSpec, devvm_identity, devvm_resources
from chalicelib.errors import BackendError

LABEL_DEVVM_ID = "jobplane-devvm-id"
# How long a request waits for its zone operation (an insert's or a start's) before answering: GPU
# capacity errors arrive on the operation, in seconds; a VM still booting after this is left to boot.
# Below API Gateway's 29 s.
OPERATION_WAIT_SECONDS = 20
POLL_SECONDS = 1.0
# The provider's own stop, past the machine's own at max_hours (the startup script) and the reaper's.
MAX_RUN_GRACE_SECONDS = 10 * 60


class GceDevVmProvider(GceBackend):
    """The GCE backend's settings, clients and error table, driving dev VMs instead of jobs."""

    default_gpu_type = "L4"

    def validate_devvm(self, spec: DevVmSpec) -> None:
        """UnsupportedError naming the field when Google Cloud offers no such machine."""
        machine_for_resources(devvm_resources(spec))

    @staticmethod
    def instance_name(vm) -> str:
        return f"jpdev-{vm.vm_id}"  # deterministic, so a retried create meets its first insert (409)

    def devvm_labels(self, vm) -> dict[str, str]:
        # jobplane-managed, -stage, -kind (devvm: the job sweep skips it), -devvm-id, -owner
        return {f"jobplane-{k}": label_value(v) for k, v in devvm_identity(vm, self.settings.stage).items()}

    def devvm_instance(self, vm):
        """The compute_v1 Instance of a dev VM (deterministic: same VM, same request)."""
        from google.cloud import compute_v1

        spec = DevVmSpec.model_validate(vm.spec)
        machine = machine_for_resources(devvm_resources(spec))
        scheduling = compute_v1.Scheduling(
            provisioning_model="SPOT" if spec.spot else "STANDARD",
            # STOP, not DELETE: a preempted or timed-out dev VM keeps its disk and can be started again.
            instance_termination_action="STOP",
            max_run_duration=compute_v1.Duration(seconds=int(spec.max_hours * 3600) + MAX_RUN_GRACE_SECONDS),
            on_host_maintenance="TERMINATE",  # required with GPUs
            automatic_restart=False,
        )
        script = devvm_startup_script(idle_minutes=spec.idle_minutes, max_hours=spec.max_hours)
        return self.vm_resource(
            name=self.instance_name(vm),
            machine=machine,
            labels=self.devvm_labels(vm),
            script=script,
            scheduling=scheduling,
        )

    @property
    def zone_operations(self):
        """compute_v1 ZoneOperationsClient on the deployment's endpoint (InstancesClient's own operation
        polling builds one on the default endpoint, which a fake or emulator endpoint would not reach)."""
        if getattr(self, "_zone_operations", None) is None:
            from google.cloud import compute_v1

            self._zone_operations = compute_v1.ZoneOperationsClient(
                **client_kwargs(self.settings, "compute.googleapis.com")
            )
        return self._zone_operations

    def _settle(self, operation, action: str) -> None:
        """Wait up to OPERATION_WAIT_SECONDS for a zone operation (zoneOperations.get each second): its error
        is raised, translated; one still running then is left to finish."""
        from google.api_core import exceptions
        from google.cloud import compute_v1

        deadline = time.monotonic() + OPERATION_WAIT_SECONDS
        polls = 0
        with map_gcp_errors(action):
            while operation.status != compute_v1.Operation.Status.DONE:
                if time.monotonic() >= deadline:
                    return
                if polls:
                    time.sleep(POLL_SECONDS)
                polls += 1
                operation = self.zone_operations.get(
                    project=self.settings.gcp_project, zone=self.settings.gce_zone, operation=operation.name
                )
            errors = list(operation.error.errors) if operation.error else []
            if errors or operation.http_error_status_code >= 400:
                words = "; ".join(f"{e.code}: {e.message}" for e in errors) or operation.http_error_message
                raise exceptions.from_http_status(operation.http_error_status_code or 500, words)

    def launch_devvm(self, vm) -> tuple[str, str]:
        from google.api_core.exceptions import Conflict
        from google.cloud import compute_v1

        resource = self.devvm_instance(vm)
        machine_type = resource.machine_type.rsplit("/", 1)[-1]
        request = compute_v1.InsertInstanceRequest(
            project=self.settings.gcp_project, zone=self.settings.gce_zone, instance_resource=resource
        )
        action = f"creating dev VM {resource.name}"
        with map_gcp_errors(action):
            try:
                operation = self.compute.insert(request=request)
            except Conflict:  # a retried create: the name is the VM's, so this is the same instance
                return resource.name, machine_type
        self._settle(operation, action)
        return resource.name, machine_type

    def _checked(self, vm):
        """The dev VM's instance, checked by its labels: never an instance jobplane did not start for it."""
        name = vm.native_id or self.instance_name(vm)
        instance = self._get(name, self.settings.gce_zone)
        labels = dict(instance.labels) if instance is not None else {}
        if (
            instance is None
            or name != self.instance_name(vm)
            or labels.get(LABEL_DEVVM_ID) != vm.vm_id
            or labels.get(LABEL_STAGE) != label_value(self.settings.stage)
        ):
            raise BackendError(f"instance {name} is not dev VM {vm.vm_id} of this deployment")
        return instance

    def start_devvm(self, vm) -> None:
        instance = self._checked(vm)
        action = f"starting dev VM {instance.name}"
        with map_gcp_errors(action):
            operation = self.compute.start(
                project=self.settings.gcp_project, zone=self.settings.gce_zone, instance=instance.name
            )
        self._settle(operation, action)

    def stop_devvm(self, vm, reason: str) -> None:
        if self._get(self.instance_name(vm), self.settings.gce_zone) is None:
            return  # never came up (an insert that failed after the request stopped waiting), or deleted
        instance = self._checked(vm)
        self._label_stopped(instance, self.settings.gce_zone, reason)
        if instance.status in STOPPED_STATES:  # it stopped itself (idle or max_hours on the machine)
            return
        with map_gcp_errors(f"stopping dev VM {instance.name}"):
            self.client.stop(project=self.settings.gcp_project, zone=self.settings.gce_zone, instance=instance.name)

    def devvm_utilization(self, vm, window_minutes: int) -> Utilization | None:
        """The guest attributes its startup script writes; a VM that stopped itself (or vanished) reports
        nothing, so the reaper records it stopped."""
        if not vm.native_id:
            return None
        instance = self._get(vm.native_id, self.settings.gce_zone)
        if instance is None or instance.status in STOPPED_STATES:
            return Utilization(gpu_percent=None, last_heartbeat=None)
        return self.guest_usage(vm.native_id, self.settings.gce_zone)
