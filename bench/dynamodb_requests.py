"""Count DynamoDB requests per job lifecycle (submit -> SUCCEEDED) against moto, with botocore event hooks."""

from __future__ import annotations

import collections
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}


class Counter:
    def __init__(self) -> None:
        self.ops: collections.Counter[str] = collections.Counter()

    def __call__(self, model, params, **kwargs):  # botocore 'before-call' hook
        self.ops[kwargs["event_name"].rsplit(".", 1)[-1]] += 1

    def snapshot(self) -> collections.Counter[str]:
        return collections.Counter(self.ops)


def _hook(store, counter: Counter) -> None:
    for model in store.models.values():
        client = model._get_connection().connection.client
        client.meta.events.register("before-call.dynamodb", counter)


def _delta(after, before) -> dict[str, int]:
    diff = after - before
    writes = sum(v for k, v in diff.items() if k in WRITES)
    return {"requests": sum(diff.values()), "writes": writes, "reads": sum(diff.values()) - writes, "ops": dict(diff)}


def _local_event(detail: dict) -> dict:
    return {
        "version": "0",
        "id": "bench",
        "detail-type": "jobplane Local Job State Change",
        "source": "jobplane.local",
        "account": "000000000000",
        "time": detail["at"][:19] + "Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


def measure() -> dict:
    from jobplane.local.emulator import start_moto

    server, endpoint = start_moto()
    try:
        from chalicelib.auth import Principal
        from chalicelib.config import Settings
        from chalicelib.events import handle_state_change
        from chalicelib.jobs.service import JobService
        from chalicelib.jobs.spec import parse_spec
        from chalicelib.store.dynamo import DynamoJobStore

        state = tempfile.mkdtemp(prefix="jobplane-bench-")
        settings = Settings.from_env(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "JOBPLANE_TABLE_PREFIX": "bench",
                "JOBPLANE_LOCAL_STATE_DIR": state,
            }
        )
        store = DynamoJobStore(settings)
        store.create_tables()
        service = JobService(store, settings)
        counter = Counter()
        _hook(store, counter)
        spec = parse_spec({"name": "bench", "backend": "local", "command": [sys.executable, "-c", "print(1)"]})
        user = Principal("bench")

        before = counter.snapshot()
        job, _ = service.submit(user, spec)
        submit = _delta(counter.snapshot(), before)
        folder = Path(state) / job.native_id
        deadline = time.monotonic() + 30
        while not (folder / "status.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        running = json.loads((folder / "runner.json").read_text())
        finished = json.loads((folder / "status.json").read_text())

        phases = {"submit (QUEUED + LAUNCHING)": submit}
        for label, detail in (
            ("event RUNNING", running),
            ("event SUCCEEDED", finished),
            ("duplicate SUCCEEDED event", finished),
            ("late RUNNING event", running),
        ):
            before = counter.snapshot()
            handle_state_change(_local_event(detail), service)
            phases[label] = _delta(counter.snapshot(), before)
        final = store.get_job(job.job_id)
        transitions = len(store.history(job.job_id))
        total = {k: sum(p[k] for p in list(phases.values())[:3]) for k in ("requests", "writes", "reads")}
        return {"final_status": final.status.value, "transitions": transitions, "phases": phases, "lifecycle": total}
    finally:
        server.stop()


def main() -> int:
    result = measure()
    print(f"job lifecycle submit -> {result['final_status']}: {result['transitions']} history entries")
    print(f"{'phase':32} {'requests':>8} {'writes':>7} {'reads':>6}  operations")
    for label, p in result["phases"].items():
        print(f"{label:32} {p['requests']:8d} {p['writes']:7d} {p['reads']:6d}  {p['ops']}")
    t = result["lifecycle"]
    print(f"{'lifecycle total':32} {t['requests']:8d} {t['writes']:7d} {t['reads']:6d}")
    print(
        f"writes per transition: {t['writes'] / result['transitions']:.2f} "
        f"(target <= 2: one guarded write + one history append)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
