"""Load on a real `jobplane local up`: concurrent GET /jobs and POST /jobs, and the embedded DynamoDB, over loopback."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"name": "load", "backend": "local", "command": [sys.executable, "-c", "pass"]}
# One job holds the only local slot, so the load's jobs wait in QUEUED: the figures are the API's
# and the store's, not those of a hundred job processes competing for the same two cores.
HOLDER = {"name": "holder", "backend": "local", "command": [sys.executable, "-c", "import time; time.sleep(900)"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stack(directory: Path, port: int) -> tuple[subprocess.Popen, dict]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "JOBPLANE_LOCAL_DIR": str(directory),
        "JOBPLANE_CAPACITY_LIMITS": "local:cpu=1",
    }
    env.pop("AWS_ENDPOINT_URL", None)
    log = open(directory / "stack.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobplane.cli", "local", "up", "--port", str(port), "--reconcile-seconds", "3600"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the stack exited: {(directory / 'stack.log').read_text()}")
        try:
            state = json.loads((directory / "local.json").read_text())
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, state
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the stack did not come up in 60 s")


def burst(host: str, port: int, make_request, concurrency: int, timeout: float = 60.0) -> dict:
    """`concurrency` clients, each on its own new connection, released at once by a barrier."""
    barrier = threading.Barrier(concurrency)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    lock = threading.Lock()

    def one(i: int) -> None:
        method, path, body, headers = make_request(i)
        barrier.wait()
        start = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            conn.close()
            outcome = str(response.status)
        except ConnectionResetError:
            outcome = "reset"
        except TimeoutError:
            outcome = "timeout"
        except OSError as exc:
            outcome = type(exc).__name__
        elapsed = time.perf_counter() - start
        with lock:
            latencies.append(elapsed)
            statuses[outcome] = statuses.get(outcome, 0) + 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall
    latencies.sort()
    return {
        "n": concurrency,
        "statuses": statuses,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max": latencies[-1],
        "wall": wall,
    }


def _merge(runs: list[dict]) -> dict:
    latencies = sorted(r["p50"] for r in runs)
    statuses: dict[str, int] = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return {
        "n": len(runs),
        "statuses": statuses,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max": latencies[-1],
    }


def _dynamodb_request(table: str):
    body = json.dumps({"TableName": table, "Key": {"token_hash": {"S": "0" * 64}}})
    headers = {
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "DynamoDB_20120810.GetItem",
        "Authorization": "AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/dynamodb/aws4_request, "
        "SignedHeaders=host, Signature=0",
    }
    return lambda _: ("POST", "/", body, headers)


def measure(gets: int = 200, posts: int = 50, seed_jobs: int = 50) -> list[tuple[str, dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        proc, state = start_stack(Path(tmp), port)
        try:
            auth = {"Authorization": f"Bearer {state['admin_token']}", "Content-Type": "application/json"}
            warm = burst("127.0.0.1", port, lambda _: ("POST", "/jobs", json.dumps(HOLDER), auth), 1)
            assert warm["statuses"] == {"201": 1}, warm
            seeded = burst("127.0.0.1", port, lambda _: ("POST", "/jobs", json.dumps(SPEC), auth), seed_jobs)
            results = [(f"POST /jobs x{seed_jobs} (seed)", seeded)]
            alone = [burst("127.0.0.1", port, lambda _: ("GET", "/jobs", None, auth), 1) for _ in range(20)]
            results.append(("GET /jobs x1, 20 in a row (baseline)", _merge(alone)))
            listing = burst("127.0.0.1", port, lambda _: ("GET", "/jobs", None, auth), gets)
            results.append((f"GET /jobs x{gets}", listing))

            def post(i):
                return "POST", "/jobs", json.dumps(SPEC), {**auth, "Idempotency-Key": f"load-{i}-{time.time_ns()}"}

            results.append((f"POST /jobs x{posts}", burst("127.0.0.1", port, post, posts)))
            aws = state["aws_endpoint"].rsplit(":", 1)
            tokens = state["env"].get("JOBPLANE_TOKENS_TABLE", "jobplane-local-tokens")
            moto_host, moto_port = aws[0].removeprefix("http://"), int(aws[1])
            results.append((f"moto GetItem x{gets}", burst(moto_host, moto_port, _dynamodb_request(tokens), gets)))
            return results
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()


def transactions(sizes=(100, 1_000, 10_000), rounds: int = 30) -> list[str]:
    """A two-item TransactWriteItems (a job's guarded update and its history append) on tables of growing
    size, with moto's own backup (a deep copy of each table it touches) and the emulator's (the items it
    names), alternated on the same tables in this process."""
    sys.path.insert(0, str(ROOT))
    import boto3
    from moto.dynamodb.models import DynamoDBBackend, dynamodb_backends

    from jobplane.local.emulator import start_moto

    emulator, url = start_moto()
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    patched = DynamoDBBackend.transact_write_items
    original = patched.moto_original
    backend = dynamodb_backends["123456789012"]["us-east-1"]
    lines = []
    try:
        for size in sizes:
            for name in ("bench-txn-jobs", "bench-txn-history"):
                if name in backend.tables:
                    backend.delete_table(name)
                client.create_table(
                    TableName=name,
                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                    BillingMode="PAY_PER_REQUEST",
                )
                for i in range(size):
                    backend.put_item(name, {"pk": {"S": f"k{i}"}, "spec": {"S": "x" * 300}})
            times: dict[str, list[float]] = {"moto": [], "items": []}
            for r in range(rounds):
                for label, method in (("moto", original), ("items", patched)):
                    ops = [
                        {"Put": {"TableName": "bench-txn-jobs", "Item": {"pk": {"S": f"k{r}"}, "n": {"N": str(r)}}}},
                        {"Put": {"TableName": "bench-txn-history", "Item": {"pk": {"S": f"h{r}-{label}"}}}},
                    ]
                    started = time.perf_counter()
                    method(backend, ops)
                    times[label].append(time.perf_counter() - started)
            moto_ms, item_ms = (statistics.median(times[k]) * 1000 for k in ("moto", "items"))
            lines.append(
                f"TransactWriteItems of 2 items, 2 tables of {size:,} items: moto's table copy {moto_ms:.2f} ms, "
                f"item-level backup {item_ms:.3f} ms (x{moto_ms / item_ms:.0f})"
            )
    finally:
        emulator.stop()
    return lines


def queries(sizes=(100, 1_000, 10_000), rounds: int = 20) -> list[str]:
    """A 20-item page of an index (GET /jobs: one owner's newest) and one job's history (a table query)
    on tables of growing size, with moto's own Query path and the emulator's, alternated in one process
    on the same tables. The items are what jobplane stores, in size: a job of ~1 KB, 10 owners."""
    sys.path.insert(0, str(ROOT))
    import boto3
    from moto.dynamodb.models import dynamodb_backends

    from jobplane.local.emulator import moto_queries, start_moto

    emulator, url = start_moto()
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    backend = dynamodb_backends["123456789012"]["us-east-1"]
    attrs = [("pk", "S"), ("owner", "S"), ("created", "S")]
    client.create_table(
        TableName="bench-q-jobs",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, t in attrs],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by_owner",
                "KeySchema": [
                    {"AttributeName": "owner", "KeyType": "HASH"},
                    {"AttributeName": "created", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.create_table(
        TableName="bench-q-history",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "seq", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "seq", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )

    def page():
        client.query(
            TableName="bench-q-jobs",
            IndexName="by_owner",
            KeyConditionExpression="#o = :o",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":o": {"S": "u1"}},
            Limit=20,
            ScanIndexForward=False,
        )

    def history():
        client.query(
            TableName="bench-q-history",
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "j1"}},
        )

    lines, n = [], 0
    try:
        for size in sizes:
            while n < size:
                job = {"pk": {"S": f"j{n}"}, "owner": {"S": f"u{n % 10}"}, "created": {"S": f"{n:08d}"}}
                backend.put_item("bench-q-jobs", {**job, "spec": {"S": "x" * 1000}})
                backend.put_item("bench-q-history", {"pk": {"S": f"j{n % max(1, size // 10)}"}, "seq": {"N": str(n)}})
                n += 1
            times: dict[str, list[float]] = {"moto page": [], "ours page": [], "moto history": [], "ours history": []}
            for _ in range(rounds):
                for label in ("moto", "ours"):
                    for what, call in (("page", page), ("history", history)):
                        if label == "moto":
                            with moto_queries():
                                started = time.perf_counter()
                                call()
                        else:
                            started = time.perf_counter()
                            call()
                        times[f"{label} {what}"].append(time.perf_counter() - started)
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            lines.append(
                f"Query on {size:,} jobs: an owner's page of 20 {med['moto page']:.1f} -> {med['ours page']:.1f} ms, "
                f"a job's history {med['moto history']:.1f} -> {med['ours history']:.1f} ms (moto's walk -> by key)"
            )
    finally:
        emulator.stop()
    return lines


def servers(calls: int = 400) -> list[str]:
    """The emulator's HTTP server: moto's own (werkzeug: one connection per request, a thread per
    connection) and the one the stack runs (waitress: keep-alive, a pool of workers), serving the same
    app in one process, alternated. CPU time per GetItem (client and server: one process) and the TCP
    connections the SDK opened, which do not depend on the machine's load."""
    sys.path.insert(0, str(ROOT))
    import boto3
    import urllib3.connection
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import ThreadedWSGIServer

    from jobplane.local.emulator import start_moto

    emulator, ours = start_moto()
    theirs = ThreadedWSGIServer("127.0.0.1", 0, emulator.persistent, handler=MotoRequestHandler)
    threading.Thread(target=theirs.serve_forever, daemon=True).start()
    connects = {"n": 0}
    real_connect = urllib3.connection.HTTPConnection.connect

    def counting(self):
        connects["n"] += 1
        return real_connect(self)

    urllib3.connection.HTTPConnection.connect = counting
    try:
        clients = {
            "moto's server": boto3.client(
                "dynamodb", endpoint_url=f"http://127.0.0.1:{theirs.server_address[1]}", region_name="us-east-1"
            ),
            "the stack's": boto3.client("dynamodb", endpoint_url=ours, region_name="us-east-1"),
        }
        clients["the stack's"].create_table(
            TableName="bench-servers",
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        clients["the stack's"].put_item(TableName="bench-servers", Item={"k": {"S": "a"}, "v": {"S": "x" * 1000}})
        cpu = {name: 0.0 for name in clients}
        opened = {name: 0 for name in clients}
        for _ in range(calls // 20):
            for name, client in clients.items():
                before, started = connects["n"], time.process_time()
                for _ in range(20):
                    client.get_item(TableName="bench-servers", Key={"k": {"S": "a"}})
                cpu[name] += time.process_time() - started
                opened[name] += connects["n"] - before
    finally:
        urllib3.connection.HTTPConnection.connect = real_connect
        theirs.shutdown()
        theirs.server_close()
        emulator.stop()
    per = {name: cpu[name] / calls * 1000 for name in cpu}
    a, b = "moto's server", "the stack's"
    return [
        f"emulator server, {calls} GetItem: CPU {per[a]:.2f} -> {per[b]:.2f} ms a call "
        f"({per[a] / per[b]:.2f}x), TCP connections {opened[a]} -> {opened[b]} (werkzeug -> waitress)"
    ]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _burst_cpu(state: dict, gets: int, seed_jobs: int) -> tuple[float, float]:
    """(busiest process, all processes) CPU seconds of the stack for a burst of `gets` GET /jobs."""
    port = int(state["api"].rsplit(":", 1)[1])
    auth = {"Authorization": f"Bearer {state['admin_token']}", "Content-Type": "application/json"}
    seeded = burst("127.0.0.1", port, lambda _: ("POST", "/jobs", json.dumps(SPEC), auth), seed_jobs)
    assert set(seeded["statuses"]) == {"201"}, seeded
    burst("127.0.0.1", port, lambda _: ("GET", "/jobs", None, auth), 10)  # warm every worker
    pids = state["api_processes"]
    before = [_cpu_seconds(p) for p in pids]
    done = burst("127.0.0.1", port, lambda _: ("GET", "/jobs", None, auth), gets)
    assert set(done["statuses"]) == {"200"}, done
    spent = [_cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
    return max(spent), sum(spent)


def processes(counts=(0, 2), gets: int = 200, seed_jobs: int = 50, rounds: int = 2) -> list[str]:
    """Where a burst of GET /jobs spends CPU, with the API in the stack's own process (0 workers) and
    in worker processes: each process's CPU seconds for the burst, read from /proc. A process runs on
    one core at a time (one GIL), so the busiest one bounds the throughput whatever else the machine
    runs; the sum is the work. Alternated, on the same number of jobs."""
    per: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}
    for _ in range(rounds):
        for count in counts:
            os.environ["JOBPLANE_LOCAL_API_PROCESSES"] = str(count)
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    proc, state = start_stack(Path(tmp), _free_port())
                    try:
                        per[count].append(_burst_cpu(state, gets, seed_jobs))
                    finally:
                        proc.send_signal(signal.SIGINT)
                        try:
                            proc.wait(timeout=40)
                        except subprocess.TimeoutExpired:
                            proc.kill()
            finally:
                os.environ.pop("JOBPLANE_LOCAL_API_PROCESSES", None)
    lines = []
    for count in counts:
        busiest = statistics.median(m for m, _ in per[count]) / gets * 1000
        total = statistics.median(t for _, t in per[count]) / gets * 1000
        where = "the stack's own process" if not count else f"{count} worker processes"
        lines.append(
            f"GET /jobs x{gets} ({seed_jobs} jobs), API in {where}: busiest process {busiest:.1f} ms CPU a request, "
            f"all {total:.1f} ms; bound {1000 / busiest:.0f} requests/s"
        )
    return lines


REPLAY = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
started = time.perf_counter()
from jobplane.local.emulator import start_moto
emulator, _ = start_moto(state=Path(sys.argv[1]))
print(json.dumps({**emulator.replayed, "start": time.perf_counter() - started}))
emulator.stop()
"""


def _replay(state: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", REPLAY, str(state), str(ROOT)], capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def persistence(records: int = 15_000, writes: int = 300) -> list[str]:
    """What the journal costs: per write (fsync before the answer), and at start-up (replay)."""
    sys.path.insert(0, str(ROOT))
    import boto3

    from jobplane.local import emulator as emulator_module

    item = {"pk": {"S": ""}, "spec": {"S": "x" * 1000}, "n": {"N": "1"}}
    key = [{"AttributeName": "pk", "KeyType": "HASH"}]
    attrs = [{"AttributeName": "pk", "AttributeType": "S"}]
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "aws"
        # Both emulators at once, their writes interleaved: the ratio is measured under the same load.
        memory, memory_url = emulator_module.start_moto()
        journaled, journaled_url = emulator_module.start_moto(state=state)
        clients = {}
        for label, url in (("memory", memory_url), ("journaled", journaled_url)):
            clients[label] = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
            clients[label].create_table(
                TableName=f"bench-{label}", KeySchema=key, AttributeDefinitions=attrs, BillingMode="PAY_PER_REQUEST"
            )
        times: dict[str, list[float]] = {"memory": [], "journaled": []}
        for i in range(writes):
            for label, client in clients.items():
                started = time.perf_counter()
                client.put_item(TableName=f"bench-{label}", Item={**item, "pk": {"S": f"w{i}"}})
                times[label].append(time.perf_counter() - started)
        emulator_module.COMPACT_MIN_BYTES = 1 << 40  # keep it all in the journal, to measure replaying one
        for start in range(0, records, 25):
            puts = [{"PutRequest": {"Item": {**item, "pk": {"S": f"r{i}"}}}} for i in range(start, start + 25)]
            clients["journaled"].batch_write_item(RequestItems={"bench-journaled": puts})
        memory.stop()
        journaled.stop()
        mem, jour = (statistics.median(times[k]) * 1000 for k in ("memory", "journaled"))
        lines = [
            f"PutItem, median of {writes} interleaved: in memory {mem:.2f} ms, journaled {jour:.2f} ms "
            f"(x{jour / mem:.2f}; one write + fsync per acknowledged write)"
        ]
        size = sum(p.stat().st_size for p in state.glob("journal-*.jsonl")) / 1e6
        journal = _replay(state)  # this start folds the journal into a snapshot: it outgrew 8 MiB
        snapshot = _replay(state)
        lines.append(
            f"start-up with {records + writes:,} items of 1 KB: from the journal ({size:.1f} MB, "
            f"{journal['applied']:,} requests) {journal['start']:.2f} s incl. compaction; "
            f"from the snapshot ({snapshot['applied']:,} requests) {snapshot['start']:.2f} s"
        )
    return lines


def main() -> int:
    print("== the journal (embedded emulator, in this process) ==")
    for line in persistence():
        print(line)
    for line in transactions():
        print(line)
    for line in queries():
        print(line)
    for line in servers():
        print(line)
    for line in processes():
        print(line)
    print()
    results = measure()
    head = "load on jobplane local up (one client)"
    print(f"{head:40} {'ok':>5} {'errors':>6} {'p50 s':>7} {'p99 s':>7} {'max s':>7}")
    failed = False
    for name, r in results:
        ok = sum(v for k, v in r["statuses"].items() if k.startswith("2"))
        errors = r["n"] - ok
        failed |= errors > 0
        detail = "" if not errors else "  " + json.dumps(r["statuses"])
        print(f"{name:40} {ok:5d} {errors:6d} {r['p50']:7.3f} {r['p99']:7.3f} {r['max']:7.3f}{detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
