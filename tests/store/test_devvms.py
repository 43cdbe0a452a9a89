"""The dev VM store contract on DynamoDB (moto) and in memory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.devvms import DevVm, DevVmStatus
from chalicelib.errors import AlreadyExistsError, ConflictError
from chalicelib.store.devvms import DynamoDevVmStore, InMemoryDevVmStore
from tests.factories import make_settings

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SPEC = {
    "name": "box",
    "backend": "ec2",
    "gpu_type": "A10G",
    "gpus": 1,
    "spot": False,
    "idle_minutes": 30,
    "max_hours": 8,
}


@pytest.fixture(params=["dynamo", "memory"])
def store(request, tmp_path):
    if request.param == "memory":
        return InMemoryDevVmStore()
    store = DynamoDevVmStore(make_settings(tmp_path, request.getfixturevalue("moto_endpoint")))
    store.create_tables()
    return store


def make_vm(owner="alice", minutes=0, status=DevVmStatus.PENDING, **fields) -> DevVm:
    return DevVm(uuid.uuid4().hex, owner, dict(SPEC), status, T0 + timedelta(minutes=minutes), **fields)


def test_can_put_and_get_a_dev_vm_with_every_field_intact(store):
    vm = make_vm(
        status=DevVmStatus.STOPPED,
        native_id="i-0abc",
        instance_type="g5.xlarge",
        started_at=T0 + timedelta(minutes=1),
        stopped_at=T0 + timedelta(minutes=9),
        stop_reason="stopped by alice",
    )
    store.put_devvm(vm)
    assert store.get_devvm(vm.vm_id) == vm
    assert store.get_devvm(uuid.uuid4().hex) is None


def test_a_taken_vm_id_is_refused_and_keeps_the_first(store):
    vm = make_vm()
    store.put_devvm(vm)
    with pytest.raises(AlreadyExistsError):
        store.put_devvm(DevVm(vm.vm_id, "bob", dict(SPEC), DevVmStatus.PENDING, T0))
    assert store.get_devvm(vm.vm_id).owner == "alice"


def test_list_is_newest_first_and_scoped_to_the_owner(store):
    a1, b1, a2 = make_vm("alice", 1), make_vm("bob", 2), make_vm("alice", 3)
    for vm in (a1, b1, a2):
        store.put_devvm(vm)
    assert [v.vm_id for v in store.list_devvms("alice")] == [a2.vm_id, a1.vm_id]
    assert [v.vm_id for v in store.list_devvms(None)] == [a2.vm_id, b1.vm_id, a1.vm_id]
    assert store.list_devvms("carol") == []


def test_update_is_guarded_on_the_status(store):
    vm = make_vm()
    store.put_devvm(vm)
    running = store.update_devvm(vm, DevVmStatus.PENDING, status=DevVmStatus.RUNNING, native_id="i-0def")
    assert (running.status, running.native_id) == (DevVmStatus.RUNNING, "i-0def")
    assert store.get_devvm(vm.vm_id) == running
    with pytest.raises(ConflictError):
        store.update_devvm(vm, DevVmStatus.PENDING, status=DevVmStatus.TERMINATED)
    assert store.get_devvm(vm.vm_id).status is DevVmStatus.RUNNING


def test_an_update_to_none_clears_the_field(store):
    vm = make_vm(status=DevVmStatus.STOPPED, stopped_at=T0, stop_reason="idle")
    store.put_devvm(vm)
    store.update_devvm(vm, DevVmStatus.STOPPED, status=DevVmStatus.RUNNING, stopped_at=None, stop_reason=None)
    after = store.get_devvm(vm.vm_id)
    assert (after.status, after.stopped_at, after.stop_reason) == (DevVmStatus.RUNNING, None, None)


def test_only_running_dev_vms_are_in_the_running_index(store):
    pending, running, stopped = make_vm(), make_vm(status=DevVmStatus.RUNNING), make_vm()
    for vm in (pending, running, stopped):
        store.put_devvm(vm)
    store.update_devvm(pending, DevVmStatus.PENDING, status=DevVmStatus.RUNNING)
    store.update_devvm(stopped, DevVmStatus.PENDING, status=DevVmStatus.RUNNING)
    store.update_devvm(stopped, DevVmStatus.RUNNING, status=DevVmStatus.STOPPED)
    assert {v.vm_id for v in store.iter_running_devvms()} == {pending.vm_id, running.vm_id}
