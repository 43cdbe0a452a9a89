"""Count DynamoDB requests per job lifecycle (notify's included) and per status-filtered page, against moto."""

from __future__ import annotations

import collections
import json
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}


class Counter:
    def __init__(self) -> None:
        self.ops: collections.Counter[str] = collections.Counter()

        self.items_read = 0

    def __call__(self, model, params, **kwargs):  # botocore 'before-call' hook
        self.ops[kwargs["event_name"].rsplit(".", 1)[-1]] += 1

    def read(self, parsed, **kwargs):  # botocore 'after-call' hook: what DynamoDB evaluated, filtered or not
        self.items_read += int(parsed.get("ScannedCount", parsed.get("Count", 0)) or 0)

    def snapshot(self) -> collections.Counter[str]:
        return collections.Counter(self.ops)


def _hook(store, counter: Counter) -> None:
    for model in store.models.values():
        client = model._get_connection().connection.client
        client.meta.events.register("before-call.dynamodb", counter)
        client.meta.events.register("after-call.dynamodb.Query", counter.read)


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


class _SlackSink(BaseHTTPRequestHandler):
    """A webhook that takes every message at once, so the count is DynamoDB's alone."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_):
        return


def _stream_records(endpoint: str, table: str) -> list[dict]:
    """Every record of the jobs table's stream so far, in Lambda's event shape."""
    import os

    import boto3

    os.environ.setdefault("AWS_ACCOUNT_ID_ENDPOINT_MODE", "disabled")  # botocore 1.44 and moto's streams
    streams = boto3.client("dynamodbstreams", region_name="us-east-1", endpoint_url=endpoint)
    arn = streams.list_streams(TableName=table)["Streams"][0]["StreamArn"]
    records = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=100)
            if not page.get("Records"):
                break
            records.extend(page["Records"])
            iterator = page.get("NextShardIterator")
    for record in records:
        record["eventSourceARN"] = arn
        ddb = record.get("dynamodb", {})
        if isinstance(ddb.get("ApproximateCreationDateTime"), datetime):
            ddb["ApproximateCreationDateTime"] = ddb["ApproximateCreationDateTime"].timestamp()
    return records


def _notify(store, settings, records: list[dict], counter: Counter) -> tuple[dict, list[dict]]:
    """The `notify` function over the lifecycle's stream records, its own DynamoDB requests counted."""
    from chalicelib.notify.slack import Notifier
    from chalicelib.store.slack import DynamoSlackStore

    slack = DynamoSlackStore(settings)
    slack.create_tables()
    _hook(slack, counter)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _SlackSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        notifier = Notifier(slack, settings, store.job_from_image, f"http://127.0.0.1:{sink.server_port}/hook")
        before = counter.snapshot()
        results = notifier.handle(records)
        return _delta(counter.snapshot(), before), results
    finally:
        sink.shutdown()
        sink.server_close()


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
                # The bench counts requests; as root, jobs would run as nobody, who cannot run this venv's Python.
                "JOBPLANE_LOCAL_RUN_AS": "self",
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
        # Signed as the job's runner signs its events (the event path refuses anything else).
        from chalicelib.backends import get_backend
        from chalicelib.backends.local.runner import sign_detail

        key = get_backend("local", settings).event_key(job.native_name)
        running, finished = ({**d, "signature": sign_detail(key, d)} for d in (running, finished))

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
        records = _stream_records(endpoint, settings.jobs_table)
        notify, results = _notify(store, settings, records, counter)
        sent = sum(1 for r in results if r.get("outcome") == "sent")
        phases[f"notify ({len(records)} stream records, {sent} sent)"] = notify
        lifecycle = [*list(phases.values())[:3], notify]
        total = {k: sum(p[k] for p in lifecycle) for k in ("requests", "writes", "reads")}
        return {"final_status": final.status.value, "transitions": transitions, "phases": phases, "lifecycle": total}
    finally:
        server.stop()


def measure_listing(total: int, failed: int = 10, limit: int = 20) -> dict:
    """GET /jobs?status=FAILED&limit=20 as the service serves it, with `failed` FAILED among `total` jobs
    (the failed ones the oldest, so a filter over history would read all of it)."""
    from jobplane.local.emulator import start_moto

    server, endpoint = start_moto()
    try:
        from chalicelib.auth import Principal
        from chalicelib.config import Settings
        from chalicelib.jobs.model import FailureKind, Job, JobStatus, utcnow
        from chalicelib.jobs.service import JobService
        from chalicelib.jobs.spec_types import JobSpec
        from chalicelib.store.dynamo import DynamoJobStore

        state = tempfile.mkdtemp(prefix="jobplane-bench-")
        settings = Settings.from_env(
            {"AWS_ENDPOINT_URL": endpoint, "JOBPLANE_TABLE_PREFIX": "list", "JOBPLANE_LOCAL_STATE_DIR": state}
        )
        store = DynamoJobStore(settings)
        store.create_tables()
        spec = JobSpec.from_dict({"name": "bench", "backend": "local", "command": ["true"]})
        start = utcnow() - timedelta(days=30)
        # Written in batches (25 items a request): the listing reads only the jobs table.
        with store.Job.batch_write() as batch:
            for i in range(total):
                status = JobStatus.FAILED if i < failed else JobStatus.SUCCEEDED
                job = Job(
                    f"{i:032x}",
                    "bench",
                    "alice",
                    status,
                    "local",
                    spec,
                    start + timedelta(seconds=i),
                    failure_kind=FailureKind.USER_ERROR if status is JobStatus.FAILED else None,
                )
                batch.save(store._item(job))
        service = JobService(store, settings)
        counter = Counter()
        _hook(store, counter)
        rows = {}
        for who in (Principal("alice"), Principal("admin", admin=True)):
            before, read = counter.snapshot(), counter.items_read
            began = time.perf_counter()
            jobs, token = service.list(who, JobStatus.FAILED, limit)
            seconds = time.perf_counter() - began
            diff = counter.snapshot() - before
            label = "admin (every owner)" if who.admin else "owner"
            rows[label] = {
                "returned": len(jobs),
                "queries": diff["Query"],
                "items_read": counter.items_read - read,
                "seconds": seconds,
                "next_token": token is not None,
            }
        return rows
    finally:
        server.stop()


def main(listing_sizes=(1_000, 10_000)) -> int:
    result = measure()
    print(f"job lifecycle submit -> {result['final_status']}: {result['transitions']} history entries")
    print(f"{'phase':32} {'requests':>8} {'writes':>7} {'reads':>6}  operations")
    for label, p in result["phases"].items():
        print(f"{label:32} {p['requests']:8d} {p['writes']:7d} {p['reads']:6d}  {p['ops']}")
    t = result["lifecycle"]
    print(f"{'lifecycle total':32} {t['requests']:8d} {t['writes']:7d} {t['reads']:6d}")
    print(
        f"writes per transition: {t['writes'] / result['transitions']:.2f} "
        f"(every write, notify's markers included; {result['transitions']} transitions)"
    )
    print()
    print(f"{'GET /jobs?status=FAILED&limit=20':44} {'returned':>8} {'queries':>7} {'items read':>10} {'s (moto)':>8}")
    for total in listing_sizes:
        for label, row in measure_listing(total).items():
            name = f"10 failed among {total:,}, {label}"
            print(f"{name:44} {row['returned']:8d} {row['queries']:7d} {row['items_read']:10d} {row['seconds']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
