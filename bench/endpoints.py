"""Inference endpoints: DynamoDB requests per endpoint lifecycle, provider calls per reconcile tick (the idle
check included), and what the API's invocation path adds to a model server's answer (a ratio in one run).

Real parts throughout: the endpoint service, its DynamoDB store and the SageMaker backend against the local
stack's moto server (in this process), a real local model-server process, and the Vertex backend's official
aiplatform_v1 client over its REST transport with tests/fakegcp.py's session. Calls are counted with botocore
before-call hooks and the fake session's request log."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dynamodb_requests import Counter, _delta, _hook  # noqa: E402
from reconcile_cost import record_calls  # noqa: E402

HANDLER = """
import os


def load(model_dir):
    with open(os.path.join(model_dir, "scale.txt")) as fh:
        return float(fh.read())


def preprocess(request):
    return [float(x) for x in request["x"]]


def predict(model, inputs):
    return [model * x for x in inputs]


def postprocess(outputs):
    return {"y": outputs}
"""


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scale.txt").write_text("3")
    (folder / "serve.py").write_text(HANDLER)
    return folder


def _settings(endpoint: str, state: str, **more):
    from chalicelib.config import Settings

    return Settings.from_env(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "JOBPLANE_TABLE_PREFIX": f"bench-ep-{int(time.time() * 1000) % 10**9}",
            "JOBPLANE_LOCAL_STATE_DIR": state,
            "JOBPLANE_LOCAL_RUN_AS": "self",
            **more,
        }
    )


def _wait(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def lifecycle(endpoint: str) -> dict[str, dict]:
    """DynamoDB requests of each step of a local endpoint's life, on the DynamoDB store over moto."""
    from chalicelib.auth import Principal
    from chalicelib.endpoints.model import EndpointStatus
    from chalicelib.endpoints.service import EndpointService
    from chalicelib.endpoints.spec import parse_endpoint_spec
    from chalicelib.store.endpoints import DynamoEndpointStore

    state = tempfile.mkdtemp(prefix="jobplane-bench-ep-")
    settings = _settings(endpoint, f"{state}/jobs")
    store = DynamoEndpointStore(settings)
    store.create_tables()
    counter = Counter()
    _hook(store, counter)
    service = EndpointService(store, settings)
    user = Principal("bench")
    model = _model(Path(state) / "model")
    spec = parse_endpoint_spec(
        {"name": "bench", "model": {"uri": f"file://{model}"}, "backend": "local", "idle_minutes": 5}
    )
    phases: dict[str, dict] = {}
    try:
        before = counter.snapshot()
        created = service.create(user, spec)
        phases["POST /endpoints (record, history, native id)"] = _delta(counter.snapshot(), before)
        backend = service.backend("local")
        _wait(lambda: backend.describe(created.native_id).status is EndpointStatus.IN_SERVICE, "the server")
        before = counter.snapshot()
        live = service.get(user, created.endpoint_id)
        phases["GET while CREATING: read through, -> IN_SERVICE"] = _delta(counter.snapshot(), before)
        assert live.status is EndpointStatus.IN_SERVICE, live
        before = counter.snapshot()
        service.get(user, created.endpoint_id)
        phases["GET in service"] = _delta(counter.snapshot(), before)
        body = json.dumps({"x": [1, 2]}).encode()
        before = counter.snapshot()
        service.invoke(user, created.endpoint_id, body)
        phases["POST /invocations"] = _delta(counter.snapshot(), before)
        before = counter.snapshot()
        service.reconcile()
        phases["reconcile tick, 1 endpoint in service"] = _delta(counter.snapshot(), before)
        before = counter.snapshot()
        service.reconcile(now=service.clock() + timedelta(minutes=6))
        phases["reconcile tick, idle 6 of 5 min: deleted"] = _delta(counter.snapshot(), before)
        assert store.get_endpoint(created.endpoint_id).status is EndpointStatus.DELETED
        before = counter.snapshot()
        service.reconcile()
        phases["reconcile tick, nothing active"] = _delta(counter.snapshot(), before)
    finally:
        for found in store.list_endpoints(None):
            if found.native_id and found.status is not EndpointStatus.DELETED:
                service.backend(found.backend).delete(found.native_id)
    return phases


def sagemaker_ticks(endpoint: str) -> dict[str, dict[str, int]]:
    """SageMaker calls of one reconcile tick per endpoint, by state, against moto (autoscaled: min 1, max 3)."""
    from chalicelib.auth import Principal
    from chalicelib.endpoints.model import EndpointStatus
    from chalicelib.endpoints.service import EndpointService
    from chalicelib.endpoints.spec import parse_endpoint_spec
    from chalicelib.store.endpoints import InMemoryEndpointStore

    state = tempfile.mkdtemp(prefix="jobplane-bench-sm-")
    settings = _settings(
        endpoint,
        f"{state}/jobs",
        JOBPLANE_BACKENDS="sagemaker,local",
        JOBPLANE_ARTIFACTS_BUCKET="bench-ep-artifacts",
        JOBPLANE_SAGEMAKER_ROLE="arn:aws:iam::123456789012:role/bench",
    )
    service = EndpointService(InMemoryEndpointStore(), settings)
    backend = service.backend("sagemaker")
    s3 = backend.client("s3")
    for bucket in ("bench-ep-models", settings.artifacts_bucket):
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    for name in ("scale.txt", "serve.py"):
        s3.put_object(Bucket="bench-ep-models", Key=f"m/{name}", Body=(_model(Path(state) / "m") / name).read_bytes())
    calls = record_calls(backend)
    spec = parse_endpoint_spec(
        {
            "name": "bench",
            "model": {"uri": "s3://bench-ep-models/m/"},
            "backend": "sagemaker",
            "min_replicas": 1,
            "max_replicas": 3,
            "idle_minutes": 5,
        }
    )
    rows: dict[str, dict[str, int]] = {}

    def counted(label: str, call) -> None:
        before = dict(calls)
        call()
        rows[label] = {k: v - before.get(k, 0) for k, v in calls.items() if v - before.get(k, 0)}

    made = {}
    counted(
        "create (package, model, config, endpoint; in service: scaling)",
        lambda: made.update(e=service.create(Principal("bench"), spec)),
    )
    assert made["e"].status is EndpointStatus.IN_SERVICE, made["e"]
    counted("reconcile tick, in service, inside its idle window", service.reconcile)
    # In service for 10 minutes with no invocation (CloudWatch on moto holds none): past its 5-minute window.
    serving = service.store.get_endpoint(made["e"].endpoint_id)
    service.store.update_endpoint(
        serving, EndpointStatus.IN_SERVICE, in_service_at=service.clock() - timedelta(minutes=10)
    )
    decisions = []
    counted("reconcile tick, past the window, none invoked: deleted", lambda: decisions.extend(service.reconcile()))
    gone = service.store.get_endpoint(made["e"].endpoint_id)
    assert gone.status is EndpointStatus.DELETED, (gone, [d.to_dict() for d in decisions])
    return rows


def vertex_ticks() -> dict[str, int]:
    """HTTP requests of one Vertex describe (reconcile's step) by rollout state (aiplatform_v1 over REST)."""
    from chalicelib.endpoints.backends.base import Deployment
    from chalicelib.endpoints.backends.vertex import VertexEndpointBackend
    from tests.factories import GCP_PROJECT, gcp_env
    from tests.fakegcp import VertexEndpointsSession

    state = tempfile.mkdtemp(prefix="jobplane-bench-vx-")
    settings = _settings("http://127.0.0.1:9", f"{state}/jobs", **gcp_env("http://127.0.0.1:9"))
    backend = VertexEndpointBackend(settings)
    session = VertexEndpointsSession(GCP_PROJECT).install(backend)
    deployment = Deployment(
        endpoint_id="e" * 32,
        name="bench",
        stage=settings.stage,
        owner="bench",
        model_uri="gs://bench/m/",
        handler="serve.py",
        image="us-docker.pkg.dev/p/serve/bench:1",
    )
    native = backend.create(deployment)
    rows: dict[str, int] = {}

    def counted(label: str, call):
        before = len(session.requests)
        result = call()
        rows[label] = len(session.requests) - before
        return result

    session.hold_operations = True
    first = counted("describe: start the deploy", lambda: backend.describe(native))
    counted("describe: deploy still running", lambda: backend.describe(native, first.operation))
    session.finish(first.operation)
    counted("describe: deploy done, in service", lambda: backend.describe(native, first.operation))
    counted("describe: steady, in service", lambda: backend.describe(native))
    return rows


def invocation_overhead(endpoint: str, rounds: int) -> dict[str, float]:
    """Median seconds of one invocation straight to the local model server and through the endpoint service
    (owner check, payload limit, the invocation counted in DynamoDB on moto, the backend's HTTP call),
    interleaved in one run; the ratio is the figure, the times depend on the machine."""
    from chalicelib.auth import Principal
    from chalicelib.endpoints.model import EndpointStatus
    from chalicelib.endpoints.service import EndpointService
    from chalicelib.endpoints.spec import parse_endpoint_spec
    from chalicelib.store.endpoints import DynamoEndpointStore, InMemoryEndpointStore

    state = tempfile.mkdtemp(prefix="jobplane-bench-inv-")
    settings = _settings(endpoint, f"{state}/jobs")
    model = _model(Path(state) / "model")
    spec = parse_endpoint_spec({"name": "bench", "model": {"uri": f"file://{model}"}, "backend": "local"})
    user = Principal("bench")
    dynamo = DynamoEndpointStore(settings)
    dynamo.create_tables()
    services = {
        "memory": EndpointService(InMemoryEndpointStore(), settings),
        "dynamo": EndpointService(dynamo, settings),
    }
    made = {k: s.create(user, spec) for k, s in services.items()}
    try:
        for key, service in services.items():
            _wait(lambda s=service, k=key: s.get(user, made[k].endpoint_id).status is EndpointStatus.IN_SERVICE, key)
        url = services["memory"].get(user, made["memory"].endpoint_id).url
        body = json.dumps({"x": [1, 2, 3]}).encode()

        def direct():
            request = urllib.request.Request(
                f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request) as answer:
                return json.loads(answer.read())

        times: dict[str, list[float]] = {"direct": [], "memory": [], "dynamo": []}
        calls = {
            "direct": direct,
            "memory": lambda: services["memory"].invoke(user, made["memory"].endpoint_id, body),
            "dynamo": lambda: services["dynamo"].invoke(user, made["dynamo"].endpoint_id, body),
        }
        for call in calls.values():  # warm up: connections, imports
            call()
        for _ in range(rounds):
            for key, call in calls.items():
                start = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - start)
        return {key: statistics.median(found) for key, found in times.items()}
    finally:
        for key, service in services.items():
            service.backend("local").delete(made[key].native_id)


def _ops(row: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(row.items())) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200, help="interleaved invocations per path")
    args = parser.parse_args(argv)
    from jobplane.local.emulator import start_moto

    server, endpoint = start_moto()
    try:
        print(f"{'DynamoDB requests per endpoint lifecycle (local)':<52} requests  writes  reads")
        for label, row in lifecycle(endpoint).items():
            print(f"{label:<52} {row['requests']:>8}  {row['writes']:>6}  {row['reads']:>5}")
        print("\nSageMaker calls per step, one endpoint (moto)")
        for label, row in sagemaker_ticks(endpoint).items():
            print(f"  {label}: {sum(row.values())} ({_ops(row)})")
        print("\nVertex requests per describe, one endpoint (aiplatform_v1 REST, fake session)")
        for label, count in vertex_ticks().items():
            print(f"  {label}: {count}")
        medians = invocation_overhead(endpoint, args.rounds)
        direct = medians["direct"]
        print(f"\nOne invocation, median of {args.rounds} interleaved (local model server)")
        print(f"  straight to the model server       {direct * 1000:7.2f} ms  1.00x")
        for key, label in (("memory", "service, in-memory store"), ("dynamo", "service, DynamoDB on moto")):
            print(f"  through the {label:<24}{medians[key] * 1000:7.2f} ms  {medians[key] / direct:.2f}x")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
