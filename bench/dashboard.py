"""The dashboard's refresh with 1,000 jobs on the local stack: requests, bytes and DynamoDB requests per refresh,
the old full read (up to 10 pages of GET /jobs) against the incremental one (GET /jobs?updated_since=).

The stack runs in this process (`LocalStack`, as `jobplane local up` runs it: the API over loopback HTTP, the
embedded DynamoDB), so every DynamoDB request it serves is counted where it arrives. Reconcile is set to once
an hour: the figures are the dashboard's alone. The jobs are written straight to the table, last written a day
ago (a history), and then some are touched, as running jobs and state changes touch them.
"""

from __future__ import annotations

import collections
import http.client
import json
import sys
import tempfile
import threading
import time
import urllib.parse
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# What the page does (chalicelib/dashboard/index.html): a refresh at most every 10 s, endpoints every 6th.
REFRESHES_PER_MINUTE = 6
ENDPOINT_READS_PER_MINUTE = 1
OLD_REFRESHES_PER_MINUTE = 30  # the old page's 2 s timer (it fell behind with 1,000 jobs: refreshes piled up)
MINUTES_PER_MONTH = 30 * 24 * 60


class DynamoCounter:
    """Counts the DynamoDB requests the embedded AWS serves (by their X-Amz-Target), wrapped around its WSGI app."""

    def __init__(self) -> None:
        self.ops: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def install(self) -> None:
        from jobplane.local import emulator

        original = emulator._Persistent.__call__
        counter = self

        def counted(self, environ, start_response):
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            if target.startswith("DynamoDB_20120810."):
                with counter.lock:
                    counter.ops[target.partition(".")[2]] += 1
            return original(self, environ, start_response)

        emulator._Persistent.__call__ = counted

    def total(self) -> int:
        with self.lock:
            return sum(self.ops.values())


class Api:
    """One keep-alive connection per refresh, as a browser holds one while it reads (the stack's server
    closes idle ones)."""

    def __init__(self, url: str) -> None:
        self.host, port = urllib.parse.urlparse(url).netloc.split(":")
        self.port = int(port)
        self.conn: http.client.HTTPConnection | None = None

    def request(self, *args, **kwargs) -> None:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        self.conn.request(*args, **kwargs)

    def getresponse(self):
        return self.conn.getresponse()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _get(conn: Api, path: str, token: str) -> tuple[dict, int]:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    raw = response.read()
    assert response.status == 200, raw[:300]
    return json.loads(raw), len(raw)


def _seed(store, total: int, owner: str) -> list:
    from chalicelib.jobs.model import Job, JobStatus, iso, utcnow
    from chalicelib.jobs.spec import parse_spec

    # A typical job's spec: a command, an image, env, resources, labels (about the size a real one has).
    spec = parse_spec(
        {
            "name": "resnet-sweep",
            "backend": "local",
            "command": ["python", "train.py", "--epochs", "30", "--lr", "0.01"],
            "env": {"WANDB_PROJECT": "vision", "DATA": "s3://datasets/cifar10"},
            "labels": {"team": "vision", "sweep": "lr"},
            "resources": {"gpus": 1, "gpu_type": "A10G", "cpus": 4, "memory_gb": 16},
            "max_runtime_minutes": 240,
        }
    )
    start = utcnow() - timedelta(days=30)
    day_ago = iso(utcnow() - timedelta(days=1))
    jobs = []
    with store.Job.batch_write() as batch:
        for i in range(total):
            at = start + timedelta(minutes=i)
            job = Job(
                f"{i:032x}",
                f"resnet-sweep-{i}",
                owner,
                JobStatus.SUCCEEDED if i % 7 else JobStatus.FAILED,
                "local",
                spec,
                at,
                started_at=at + timedelta(seconds=30),
                finished_at=at + timedelta(minutes=40),
                updated_at=at + timedelta(minutes=40),
                cost_estimate_usd=round(0.4 + i % 5 * 0.1, 2),
                planner_reason="backend 'local' requested by the spec",
                status_reason="exit code 0" if i % 7 else "exit code 1",
            )
            item = store._item(job)
            item.changed = day_ago  # last written a day ago: history, not news
            batch.save(item)
            jobs.append(job)
    return jobs


def _refresh_old(conn, token) -> dict:
    """What the old page did each 2 s: up to 10 pages of 100, newest first."""
    requests_, size, next_token = 0, 0, None
    for _ in range(10):
        query = {"limit": "100", **({"next_token": next_token} if next_token else {})}
        body, n = _get(conn, "/jobs?" + urllib.parse.urlencode(query), token)
        requests_ += 1
        size += n
        next_token = body["next_token"]
        if not next_token:
            break
    return {"requests": requests_, "bytes": size, "as_of": None}


def _refresh_new(conn, token, since: str) -> dict:
    requests_, size, next_token, as_of, jobs = 0, 0, None, None, 0
    for _ in range(10):
        query = {"limit": "100", "updated_since": since, **({"next_token": next_token} if next_token else {})}
        body, n = _get(conn, "/jobs?" + urllib.parse.urlencode(query), token)
        as_of = as_of or body["as_of"]
        requests_ += 1
        size += n
        jobs += len(body["jobs"])
        next_token = body["next_token"]
        if not next_token:
            break
    return {"requests": requests_, "bytes": size, "as_of": as_of, "jobs": jobs}


def _quiet(counter, seconds: float = 2.0, timeout: float = 60.0) -> None:
    """Wait until the stack's own work (the stream's notifier reading and writing its tables after a
    write, a first reconcile) is done: no DynamoDB request for `seconds`."""
    deadline = time.monotonic() + timeout
    last, since = counter.total(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = counter.total()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
    raise RuntimeError("the stack never went quiet: the counts would not be the dashboard's alone")


def _measured(counter, refresh, *args) -> dict:
    _quiet(counter)
    if args:
        args[0].close()
    before = counter.total()
    started = time.perf_counter()
    result = refresh(*args)
    result["seconds"] = time.perf_counter() - started
    result["dynamodb"] = counter.total() - before
    return result


def measure(total: int = 1000, touched: tuple[int, ...] = (0, 10, 35, 60)) -> dict:
    counter = DynamoCounter()
    counter.install()
    from jobplane.local.stack import LocalStack

    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp) / "stack", api_port=0, reconcile_seconds=3600, echo=lambda _line: None)
        try:
            state = stack.start()
            from chalicelib import deps
            from chalicelib.auth import create_token

            store = deps.get_store()
            token = create_token(deps.get_token_store(), "alice")
            jobs = _seed(store, total, "alice")
            conn = Api(state["api"])
            _get(conn, "/whoami", token)  # a warm connection and a warm app, as a page that has signed in
            rows = {"old": _measured(counter, _refresh_old, conn, token)}
            # The new page's first read is the same full read, once per sign-in; its as_of starts the rest.
            since = _get(conn, "/jobs?limit=100", token)[0]["as_of"]
            for n in touched:
                for job in jobs[:n]:
                    store.update_job(job, job.status, planner_reason="touched by the bench")
                result = _measured(counter, _refresh_new, conn, token, since)
                rows[f"changed {n}"] = result
            endpoints = _measured(counter, lambda c: {"requests": 1, "bytes": _get(c, "/endpoints", token)[1]}, conn)
            rows["endpoints"] = endpoints
            conn.close()
        finally:
            try:
                stack.stop()
            except OSError as exc:  # waitress's shutdown can race its own trigger; the figures are taken
                print(f"(the stack's shutdown: {exc})", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in the table (default 1,000)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    rows = measure(args.jobs)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"dashboard refresh, {args.jobs:,} jobs (local stack)   requests   bytes  DynamoDB  s (local)")
    old = rows["old"]
    print(
        f"{'before: full read (10 pages of 100)':<44} {old['requests']:>8} {old['bytes']:>7} {old['dynamodb']:>9}"
        f" {old['seconds']:>10.3f}"
    )
    for key in [k for k in rows if k.startswith("changed")]:
        row = rows[key]
        n = key.split()[1]
        label = f"after: updated_since, {n} jobs written since"
        print(
            f"{label:<44} {row['requests']:>8} {row['bytes']:>7} {row['dynamodb']:>9} {row['seconds']:>10.3f}"
            f"   ({row['jobs']} returned)"
        )
    ep = rows["endpoints"]
    print(f"{'GET /endpoints (every 6th refresh)':<44} {ep['requests']:>8} {ep['bytes']:>7} {ep['dynamodb']:>9}")
    print("(the new page's first read after sign-in is the full read above, once)")
    worst = max((rows[k] for k in rows if k.startswith("changed")), key=lambda r: r["bytes"])
    target = worst["requests"] <= 1 and worst["bytes"] <= 50_000
    per_job = (worst["bytes"] - rows["changed 0"]["bytes"]) / max(worst["jobs"], 1)
    within = [int(k.split()[1]) for k in rows if k.startswith("changed") and rows[k]["bytes"] <= 50_000]
    print(
        f"per refresh: {rows['changed 0']['bytes']} bytes plus {per_job:,.0f} per job written in the last 40 s"
        f" (10 s since the last refresh + the 30 s overlap), 1 request up to 100 such jobs; target <= 1 request"
        f" and 50 KB: met while at most {max(within)} jobs are written in 40 s"
        + ("" if target else f" (beyond: {worst['jobs']} written, {worst['bytes']:,} bytes)")
    )
    new_month = (REFRESHES_PER_MINUTE + ENDPOINT_READS_PER_MINUTE) * MINUTES_PER_MONTH
    new_ddb = (REFRESHES_PER_MINUTE * rows["changed 0"]["dynamodb"] + ENDPOINT_READS_PER_MINUTE * ep["dynamodb"]) * (
        MINUTES_PER_MONTH
    )
    old_month = OLD_REFRESHES_PER_MINUTE * old["requests"] * MINUTES_PER_MONTH
    old_ddb = OLD_REFRESHES_PER_MINUTE * old["dynamodb"] * MINUTES_PER_MONTH
    print(
        f"one open tab, per month: {new_month:,} API requests and {new_ddb:,} DynamoDB requests"
        f" ({REFRESHES_PER_MINUTE} refreshes + {ENDPOINT_READS_PER_MINUTE} endpoints read a minute while visible,"
        f" nothing changing); before: {old_month:,} API and {old_ddb:,} DynamoDB requests"
        f" ({OLD_REFRESHES_PER_MINUTE} refreshes of {old['requests']} a minute)"
    )
    sys.path.insert(0, str(ROOT / "bench"))
    from cost import HANDLER_SECONDS, LAMBDA_GB, PRICES, PRICES_DATE, RRU_PER_READ

    def bill(api_requests: int, dynamodb_reads: int) -> float:
        per_request = PRICES["apigw_rest_request"] + PRICES["lambda_request"]
        per_request += LAMBDA_GB * HANDLER_SECONDS * PRICES["lambda_gb_second"]
        return api_requests * per_request + dynamodb_reads * RRU_PER_READ * PRICES["dynamodb_rru"]

    print(
        f"control-plane cost of one tab open a month (prices {PRICES_DATE}, us-east-1, {HANDLER_SECONDS} s a request"
        f" billed): ${bill(new_month, new_ddb):.2f}; before: ${bill(old_month, old_ddb):.2f}"
    )
    print("following a running job's log adds 30 requests a minute (one every 2 s) until its log is complete")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
