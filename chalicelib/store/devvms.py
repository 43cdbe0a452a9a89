"""The dev VM store: its interface, its DynamoDB table (sparse running index) and its in-memory twin."""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING

from chalicelib.errors import AlreadyExistsError, ConflictError
from chalicelib.jobs.model import iso
from chalicelib.store.edge import DynamoStore, dynamo_errors, get_or_none, share_botocore_loader, table_meta

if TYPE_CHECKING:
    from pynamodb.models import Model

    from chalicelib.config import Settings
    from chalicelib.devvms import DevVm, DevVmStatus

# The single partition of the all-created index; stored items carry this value, so it never changes.
ALL_PK = "jobs"
RUNNING_PK = "running"


class DevVmStore(ABC):
    """Dev VMs: their spec, status and EC2 instance, listed per owner and read by the reaper."""

    @abstractmethod
    def put_devvm(self, vm: DevVm) -> None:
        """Store a new dev VM; AlreadyExistsError if the id is taken."""

    @abstractmethod
    def get_devvm(self, vm_id: str) -> DevVm | None: ...

    @abstractmethod
    def list_devvms(self, owner: str | None) -> list[DevVm]:
        """Newest first; owner None means every owner."""

    @abstractmethod
    def update_devvm(self, vm: DevVm, expected: DevVmStatus, **changes) -> DevVm:
        """Guarded on the status still being `expected`; ConflictError when it moved."""

    @abstractmethod
    def iter_running_devvms(self) -> Iterator[DevVm]:
        """Dev VMs that are RUNNING (a sparse index: stopped ones cost no read)."""

    def create_tables(self) -> None:
        """Create whatever backing tables are missing (tests, the local stack)."""


def _moved(vm: DevVm, expected: DevVmStatus) -> ConflictError:
    return ConflictError(f"instance {vm.vm_id} is no longer {expected.value}")


class InMemoryDevVmStore(DevVmStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devvms: dict[str, DevVm] = {}

    def put_devvm(self, vm: DevVm) -> None:
        with self._lock:
            if vm.vm_id in self._devvms:
                raise AlreadyExistsError(f"instance {vm.vm_id} already exists")
            self._devvms[vm.vm_id] = vm

    def get_devvm(self, vm_id: str) -> DevVm | None:
        return self._devvms.get(vm_id)

    def list_devvms(self, owner: str | None) -> list[DevVm]:
        vms = [v for v in self._devvms.values() if owner is None or v.owner == owner]
        return sorted(vms, key=lambda v: (v.created_at, v.vm_id), reverse=True)

    def update_devvm(self, vm: DevVm, expected: DevVmStatus, **changes) -> DevVm:
        from chalicelib.devvms import with_changes

        with self._lock:
            current = self._devvms.get(vm.vm_id)
            if current is None or current.status is not expected:
                raise _moved(vm, expected)
            updated = with_changes(current, **changes)
            self._devvms[vm.vm_id] = updated
            return updated

    def iter_running_devvms(self) -> Iterator[DevVm]:
        from chalicelib.devvms import DevVmStatus

        return iter([v for v in list(self._devvms.values()) if v.status is DevVmStatus.RUNNING])


def build_models(settings: Settings) -> dict[str, type[Model]]:
    """The dev VM table's model and its indexes, bound to this deployment's table name and endpoint."""
    from pynamodb.attributes import UnicodeAttribute, UTCDateTimeAttribute
    from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
    from pynamodb.models import Model

    class DevVmOwnerIndex(GlobalSecondaryIndex):
        class Meta:
            index_name = "owner-created"
            projection = AllProjection()

        owner = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)

    class DevVmAllIndex(GlobalSecondaryIndex):
        class Meta:
            index_name = "all-created"
            projection = AllProjection()

        all_pk = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)

    class DevVmRunningIndex(GlobalSecondaryIndex):
        """Sparse: only RUNNING dev VMs carry running_pk; the reaper reads nothing else."""

        class Meta:
            index_name = "running-created"
            projection = AllProjection()

        running_pk = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)

    class DevVmModel(Model):
        class Meta(table_meta(settings)):
            table_name = settings.devvms_table

        vm_id = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute()
        owner = UnicodeAttribute()
        all_pk = UnicodeAttribute(default=ALL_PK)
        running_pk = UnicodeAttribute(null=True)
        status = UnicodeAttribute()
        spec = UnicodeAttribute()  # JSON
        created_at = UTCDateTimeAttribute()
        native_id = UnicodeAttribute(null=True)
        instance_type = UnicodeAttribute(null=True)
        started_at = UTCDateTimeAttribute(null=True)
        stopped_at = UTCDateTimeAttribute(null=True)
        stop_reason = UnicodeAttribute(null=True)

        by_owner = DevVmOwnerIndex()
        by_all = DevVmAllIndex()
        running = DevVmRunningIndex()

    return {"devvms": DevVmModel}


class DynamoDevVmStore(DynamoStore, DevVmStore):
    _FIELDS = ("owner", "created_at", "native_id", "instance_type", "started_at", "stopped_at", "stop_reason")

    def __init__(self, settings: Settings) -> None:
        share_botocore_loader()
        self.models = build_models(settings)
        self.DevVm = self.models["devvms"]

    def _devvm(self, item) -> DevVm:
        from chalicelib.devvms import DevVm, DevVmStatus

        return DevVm(
            item.vm_id,
            item.owner,
            json.loads(item.spec),
            DevVmStatus(item.status),
            item.created_at,
            **{f: getattr(item, f) for f in self._FIELDS if f not in ("owner", "created_at")},
        )

    def put_devvm(self, vm: DevVm) -> None:
        from chalicelib.devvms import DevVmStatus

        item = self.DevVm(
            vm.vm_id,
            sk=f"{iso(vm.created_at)}#{vm.vm_id}",
            status=vm.status.value,
            spec=json.dumps(vm.spec, sort_keys=True),
            running_pk=RUNNING_PK if vm.status is DevVmStatus.RUNNING else None,
            **{f: getattr(vm, f) for f in self._FIELDS},
        )
        with dynamo_errors(conditional=AlreadyExistsError(f"instance {vm.vm_id} already exists")):
            item.save(condition=self.DevVm.vm_id.does_not_exist())

    def get_devvm(self, vm_id: str) -> DevVm | None:
        item = get_or_none(self.DevVm, vm_id, consistent_read=True)
        return self._devvm(item) if item is not None else None

    def list_devvms(self, owner: str | None) -> list[DevVm]:
        M = self.DevVm
        index, key = (M.by_owner, owner) if owner else (M.by_all, ALL_PK)
        return [self._devvm(i) for i in index.query(key, scan_index_forward=False)]

    def update_devvm(self, vm: DevVm, expected: DevVmStatus, **changes) -> DevVm:
        from chalicelib.devvms import DevVmStatus, with_changes

        M = self.DevVm
        fields = dict(changes)
        if "status" in fields:
            fields["running_pk"] = RUNNING_PK if fields["status"] is DevVmStatus.RUNNING else None
        actions = []
        for name, value in fields.items():
            value = value.value if isinstance(value, DevVmStatus) else value
            attr = getattr(M, name)
            actions.append(attr.remove() if value is None else attr.set(value))
        with dynamo_errors(conditional=_moved(vm, expected)):
            M(vm.vm_id).update(actions=actions, condition=(M.status == expected.value))
        return with_changes(vm, **changes)

    def iter_running_devvms(self) -> Iterator[DevVm]:
        for item in self.DevVm.running.query(RUNNING_PK):
            yield self._devvm(item)
