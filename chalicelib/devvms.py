"""Dev VMs: a GPU box a person starts by hand, which jobplane stops when idle or past its hours."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from chalicelib.errors import ConflictError, JobplaneError, NotFoundError, ValidationError
from chalicelib.jobs.model import iso, utcnow
from chalicelib.jobs.spec import GpuType
from chalicelib.jobs.spec_types import Resources

log = logging.getLogger("jobplane.devvms")


def devvm_backends() -> tuple[str, ...]:
    """The registered backends whose descriptor names a dev VM provider."""
    from chalicelib.backends import descriptors

    return tuple(d.name for d in descriptors() if d.devvm_provider)


def __getattr__(name: str) -> Any:
    # DEVVM_BACKENDS is read from the registry when asked for, so a backend registered later counts.
    if name == "DEVVM_BACKENDS":
        return devvm_backends()
    raise AttributeError(name)


class DevVmStatus(str, Enum):
    PENDING = "PENDING"  # asked for, not yet running
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"  # can be started again; its disk is kept
    TERMINATED = "TERMINATED"  # gone for good (or never came up)


class DevVmSpec(BaseModel):
    """POST /instances body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    backend: str | None = Field(
        None, description="a backend that hosts dev VMs (ec2, gce); default: the first such backend enabled"
    )
    gpu_type: GpuType | None = Field(None, description="default: the backend's (A10G on EC2, L4 on GCE)")
    gpus: int = Field(1, ge=1, le=8)
    spot: bool = False
    instance_type: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.\-]{1,62}$")
    idle_minutes: int = Field(30, ge=5, le=1440, description="stop after this long without GPU activity")
    max_hours: float = Field(8, gt=0, le=168, description="stop after this long running, whatever it does")

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str | None) -> str | None:
        valid = devvm_backends()
        if value is not None and value not in valid:
            raise ValueError(f"must be one of {', '.join(valid)}")
        return value


@dataclass(frozen=True)
class DevVm:
    vm_id: str
    owner: str
    spec: dict[str, Any]
    status: DevVmStatus
    created_at: datetime
    native_id: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    stop_reason: str | None = None
    instance_type: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "vm_id": self.vm_id,
            "owner": self.owner,
            "name": self.spec["name"],
            "status": self.status.value,
            "backend": self.spec["backend"],
            "instance_type": self.instance_type,
            "native_id": self.native_id,
            "gpu_type": self.spec["gpu_type"],
            "gpus": self.spec["gpus"],
            "spot": self.spec["spot"],
            "idle_minutes": self.spec["idle_minutes"],
            "max_hours": self.spec["max_hours"],
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "stopped_at": iso(self.stopped_at),
            "stop_reason": self.stop_reason,
        }


def parse_devvm_spec(data: Any) -> DevVmSpec:
    from chalicelib.jobs.spec import _details

    if not isinstance(data, dict):
        raise ValidationError("the body must be a JSON object", [{"field": "(body)", "message": "an object"}])
    try:
        return DevVmSpec.model_validate(data)
    except PydanticValidationError as exc:
        details = _details(exc)
        raise ValidationError(
            f"invalid instance request: {details[0]['field']}: {details[0]['message']}", details
        ) from None


class DevVmAction(str, Enum):
    """What the reaper did about one running dev VM (in reconcile's output next to reaper.Action's)."""

    #: idle over its idle_minutes, or past its max_hours: stopped (its disk is kept)
    STOP = "stop_devvm"
    #: asking its provider failed; recorded, and the next run tries again (the same word as reaper.Action)
    ERROR = "error"


@dataclass(frozen=True)
class DevVmDecision:
    """What the reaper did about one running dev VM, with why; one per VM, so one failure aborts nothing."""

    vm_id: str
    action: DevVmAction
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"vm_id": self.vm_id, "action": self.action.value, "reason": self.reason}


def decide_devvm(vm: DevVm, usage, now: datetime) -> str | None:
    """Pure: the reason to stop a running dev VM now, or None. `usage` is its Utilization (or None)."""
    if vm.status is not DevVmStatus.RUNNING or vm.started_at is None:
        return None
    ran = now - vm.started_at
    if ran >= timedelta(hours=float(vm.spec["max_hours"])):
        return f"reached max_hours ({vm.spec['max_hours']:g} h)"
    idle = timedelta(minutes=int(vm.spec["idle_minutes"]))
    if ran < idle:
        return None  # still booting: nothing to judge yet
    if usage is None:
        return None  # the provider cannot tell; max_hours still applies
    if usage.last_heartbeat is None or now - usage.last_heartbeat >= idle:
        return f"no heartbeat for {vm.spec['idle_minutes']} min"
    if usage.gpu_percent is not None and usage.gpu_percent < 1.0:
        return f"GPU idle for {vm.spec['idle_minutes']} min ({usage.gpu_percent:.1f}% utilisation)"
    return None


class DevVmService:
    """Create, start, stop, list dev VMs, and stop the idle ones (called by reconcile)."""

    def __init__(self, store, settings, provider_factory) -> None:
        self.store = store
        self.settings = settings
        self._provider = provider_factory

    def provider(self, name: str):
        return self._provider(name, self.settings)

    def _mine(self, principal, vm_id: str) -> DevVm:
        vm = self.store.get_devvm(vm_id) if len(vm_id) == 32 and vm_id.isalnum() else None
        if vm is None or (not principal.admin and vm.owner != principal.user):
            raise NotFoundError(f"no instance {vm_id!r}")
        return vm

    def resolve(self, spec: DevVmSpec) -> DevVmSpec:
        """The spec with its backend (the deployment's first dev VM backend when none is named) and GPU
        type (the backend's default) filled in, checked against what that backend offers."""
        enabled = [b for b in self.settings.enabled_backends if b in devvm_backends()]
        backend = spec.backend or (enabled[0] if enabled else None)
        if backend is None or backend not in enabled:
            named = f"dev VMs on {backend} are" if backend else "dev VMs are"
            raise ValidationError(
                f"{named} not enabled in this deployment",
                [{"field": "backend", "message": f"enabled here: {', '.join(enabled) or 'none'}"}],
            )
        provider = self.provider(backend)
        spec = spec.model_copy(update={"backend": backend, "gpu_type": spec.gpu_type or provider.default_gpu_type})
        try:
            provider.validate_devvm(spec)
        except ValidationError as exc:
            # The backends word their limits in a job spec's terms (resources.gpu_type); here it is gpu_type.
            details = [{**d, "field": str(d.get("field", "")).removeprefix("resources.")} for d in exc.details]
            raise ValidationError(exc.message, details) from None
        return spec

    def create(self, principal, spec: DevVmSpec) -> DevVm:
        spec = self.resolve(spec)
        vm = DevVm(uuid.uuid4().hex, principal.user, spec.model_dump(mode="json"), DevVmStatus.PENDING, utcnow())
        self.store.put_devvm(vm)
        try:
            native_id, instance_type = self.provider(spec.backend).launch_devvm(vm)
        except JobplaneError as exc:
            return self.store.update_devvm(
                vm,
                DevVmStatus.PENDING,
                status=DevVmStatus.TERMINATED,
                stopped_at=utcnow(),
                stop_reason=f"launch failed: {exc.message}",
            )
        return self.store.update_devvm(
            vm,
            DevVmStatus.PENDING,
            status=DevVmStatus.RUNNING,
            native_id=native_id,
            instance_type=instance_type,
            started_at=utcnow(),
        )

    def get(self, principal, vm_id: str) -> DevVm:
        return self._mine(principal, vm_id)

    def list(self, principal) -> list[DevVm]:
        return self.store.list_devvms(None if principal.admin else principal.user)

    def start(self, principal, vm_id: str) -> DevVm:
        vm = self._mine(principal, vm_id)
        if vm.status is DevVmStatus.RUNNING:
            return vm
        if vm.status is not DevVmStatus.STOPPED:
            raise ConflictError(
                f"instance {vm_id} is {vm.status.value}; only a STOPPED one can be started",
                [{"field": "status", "message": vm.status.value}],
            )
        self.provider(vm.spec["backend"]).start_devvm(vm)
        return self.store.update_devvm(
            vm, DevVmStatus.STOPPED, status=DevVmStatus.RUNNING, started_at=utcnow(), stopped_at=None, stop_reason=None
        )

    def stop(self, principal, vm_id: str, reason: str | None = None) -> DevVm:
        vm = self._mine(principal, vm_id)
        if vm.status in (DevVmStatus.STOPPED, DevVmStatus.TERMINATED):
            return vm
        return self._stop(vm, reason or f"stopped by {principal.user}")

    def _stop(self, vm: DevVm, reason: str) -> DevVm:
        self.provider(vm.spec["backend"]).stop_devvm(vm, reason)
        return self.store.update_devvm(
            vm, vm.status, status=DevVmStatus.STOPPED, stopped_at=utcnow(), stop_reason=reason
        )

    def reap(self, now: datetime | None = None) -> list[DevVmDecision]:
        """Stop every running dev VM that is idle or past its hours; one failure stops nothing else."""
        now = now or utcnow()
        results = []
        for vm in self.store.iter_running_devvms():
            try:
                usage = self.provider(vm.spec["backend"]).devvm_utilization(vm, int(vm.spec["idle_minutes"]))
                reason = decide_devvm(vm, usage, now)
                if reason is None:
                    continue
                self._stop(vm, f"stopped by jobplane reaper: {reason}")
                results.append(DevVmDecision(vm.vm_id, DevVmAction.STOP, reason))
            except JobplaneError as exc:
                results.append(DevVmDecision(vm.vm_id, DevVmAction.ERROR, exc.message))
        return results


def devvm_resources(spec) -> Resources:
    """A dev VM's machine in a job's terms, so each backend sizes it with the table its jobs use."""
    return Resources(
        gpus=spec.gpus, gpu_type=spec.gpu_type, instance_type=spec.instance_type, spot=spec.spot, cpus=8, memory_gb=30
    )


def devvm_identity(vm: DevVm, stage: str) -> dict[str, str]:
    """What every dev VM carries as tags or labels (each backend spells the keys its provider's way): whose
    it is, which deployment's, and that it is a dev VM (the job sweep leaves those alone)."""
    return {"managed": "true", "stage": stage, "kind": "devvm", "devvm-id": vm.vm_id, "owner": vm.owner}


def devvm_provider(name: str, settings):
    """The dev VM provider of backend `name`, as its descriptor names it (module:Class)."""
    import importlib

    from chalicelib.backends import descriptor_or_none

    found = descriptor_or_none(name)
    if found is None or not found.devvm_provider:
        from chalicelib.errors import BackendError

        raise BackendError(f"no dev VM provider for {name!r}")
    module, _, cls = found.devvm_provider.partition(":")
    return getattr(importlib.import_module(module), cls)(settings)


def with_changes(vm: DevVm, **changes) -> DevVm:
    return replace(vm, **changes)
