"""What the sweep reads per tick: a VM younger than the idle window has no heartbeat read (it cannot be idle yet)."""

from __future__ import annotations

from datetime import timedelta

from chalicelib.backends.base import ManagedResource, PowerState, ResourceKind, Utilization
from chalicelib.jobs.model import JobStatus, utcnow
from chalicelib.jobs.service import JobService
from chalicelib.reaper import Action, sweep
from tests.factories import ScriptedBackend, make_history, make_job, make_settings


class _Vms(ScriptedBackend):
    reaps = True

    def __init__(self, settings, resources):
        super().__init__(settings)
        self.listed = resources
        self.read: list[str] = []
        self.stopped: list[str] = []

    def _list_managed_impl(self):
        return self.listed

    def utilization(self, resource, window_minutes):
        self.read.append(resource.resource_id)
        return Utilization(gpu_percent=1.0, last_heartbeat=utcnow())

    def _stop_resource_impl(self, resource, reason):
        self.stopped.append(resource.resource_id)


def test_only_vms_older_than_the_idle_window_have_their_heartbeat_read(memory_store, tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_IDLE_MINUTES="30")
    now = utcnow()
    jobs = [make_job("local", status=JobStatus.RUNNING) for _ in range(2)]
    for job in jobs:
        memory_store.create_job(job, make_history(job))
    young, old = (
        ManagedResource(
            "local",
            f"vm-{i}",
            ResourceKind.VM,
            "running",
            PowerState.RUNNING,
            settings.stage,
            job_id=job.job_id,
            attempt=1,
            launched_at=now - timedelta(minutes=age),
        )
        for i, (job, age) in enumerate(zip(jobs, (5, 40), strict=True))
    )
    backend = _Vms(settings, [young, old])
    service = JobService(memory_store, settings, backend_factory=lambda *_: backend)
    decisions = sweep(service, {j.job_id: j for j in jobs}, now)
    assert backend.read == ["vm-1"]  # 5 minutes old: nothing to judge yet, no read
    assert [(d.job_id, d.action) for d in decisions] == [(jobs[1].job_id, Action.STOP_IDLE)]
