"""Reconcile cost vs history size: 50 active jobs among 1,000 and among 100,000 finished ones."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dynamodb_requests import Counter, _hook  # noqa: E402

ACTIVE = 50


class InSyncBackend:
    """Reports every job RUNNING, as a healthy fleet would; reconcile then has nothing to change."""

    name = "local"
    reaps = False

    def describe(self, handle):
        from chalicelib.backends.base import Observation
        from chalicelib.jobs.model import JobStatus

        return Observation(JobStatus.RUNNING, "Running", handle.native_name, handle.job_id, handle.attempt)


def _populate(store, finished: int, active: int) -> None:
    from chalicelib.jobs.model import Job, JobStatus, utcnow
    from chalicelib.jobs.spec_types import JobSpec

    now = utcnow()
    jobs = []
    for i in range(finished + active):
        done = i < finished
        jobs.append(
            Job(
                job_id=f"{i:032x}",
                name=f"job-{i}",
                owner=f"user{i % 20}",
                status=JobStatus.SUCCEEDED if done else JobStatus.RUNNING,
                backend="local",
                spec=JobSpec.from_dict({"name": f"job-{i}", "command": ["true"]}),
                created_at=now - timedelta(seconds=i),
                native_id=f"jp-{i:032x}",
                started_at=now,
                finished_at=now if done else None,
            )
        )
    with store.Job.batch_write() as batch:
        for job in jobs:
            batch.save(store._item(job))


def measure(history_sizes=(1_000, 100_000)) -> list[dict]:
    from chalicelib.config import Settings
    from chalicelib.jobs.service import JobService
    from chalicelib.reaper import reconcile
    from chalicelib.store.dynamo import DynamoJobStore
    from jobplane.local.emulator import start_moto

    server, endpoint = start_moto()
    rows = []
    try:
        for size in history_sizes:
            settings = Settings.from_env({"AWS_ENDPOINT_URL": endpoint, "JOBPLANE_TABLE_PREFIX": f"bench{size}"})
            store = DynamoJobStore(settings)
            store.create_tables()
            started = time.perf_counter()
            _populate(store, size, ACTIVE)
            populate_s = time.perf_counter() - started
            counter = Counter()
            _hook(store, counter)
            scanned: list[int] = []

            def count_items(parsed, _scanned=scanned, **_):
                _scanned.append(parsed.get("ScannedCount", 0))

            for model in store.models.values():
                model._get_connection().connection.client.meta.events.register("after-call.dynamodb.Query", count_items)
            service = JobService(store, settings, backend_factory=lambda *_: InSyncBackend())
            reconcile(service)  # warm-up: connections, caches
            before = counter.snapshot()
            scanned.clear()
            timings = []
            for _ in range(5):
                started = time.perf_counter()
                actions = reconcile(service)
                timings.append(time.perf_counter() - started)
            after = counter.snapshot() - before
            timings.sort()
            rows.append(
                {
                    "finished": size,
                    "active": len(actions),
                    "requests": sum(after.values()) / 5,
                    "ops": {k: v / 5 for k, v in after.items()},
                    "seconds": timings[2],
                    "items_read": sum(scanned) / 5,
                    "populate_s": populate_s,
                }
            )
    finally:
        server.stop()
    return rows


def main() -> int:
    rows = measure()
    print(f"{'finished jobs':>14} {'active':>7} {'DynamoDB requests':>18} {'items read':>11} {'reconcile s':>12}")
    for row in rows:
        print(
            f"{row['finished']:14,d} {row['active']:7d} {row['requests']:18.1f} {row['items_read']:11.0f} "
            f"{row['seconds']:12.4f}  {row['ops']}"
        )
    ratio = rows[-1]["seconds"] / rows[0]["seconds"]
    print(
        f"time ratio {rows[-1]['finished']:,} / {rows[0]['finished']:,} history = {ratio:.2f} (target <= 1.2); "
        f"requests {rows[0]['requests']:.0f} vs {rows[-1]['requests']:.0f} (target: equal)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
