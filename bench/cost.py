"""Control-plane cost per 1,000 jobs, from counted requests and invocations and AWS's published prices.

The counts come from running job lifecycles through the real service code against moto, with
botocore hooks; the prices are constants written here with their date. Compared with an
always-on controller VM at about $0.25 per hour.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dynamodb_requests import WRITES, Counter, _hook  # noqa: E402

# Published us-east-1 prices, as of 2026-11 (AWS pricing pages; DynamoDB after the Nov 2024 cut).
PRICES = {
    "lambda_request": 0.20 / 1e6,  # $ per invocation
    "lambda_gb_second": 0.0000166667,  # $ per GB-second, x86
    "apigw_rest_request": 3.50 / 1e6,  # $ per REST API request (first 333M / month)
    "dynamodb_wru": 0.625 / 1e6,  # $ per on-demand write request unit
    "dynamodb_rru": 0.125 / 1e6,  # $ per on-demand read request unit
    "eventbridge_aws_event": 0.0,  # AWS service state events on the default bus are free
    "eventbridge_schedule": 0.0,  # a rate() rule on the default bus has no charge
}
PRICES_DATE = "2026-11"
CONTROLLER_VM_PER_HOUR = 0.25
LAMBDA_GB = 0.5  # memory of every function (.chalice/config.json)
HANDLER_SECONDS = 0.2  # billed duration assumed per invocation (measured in-process times are below it)
# Units per request: job items are 1-2 KB (2 WRU per write), history items < 1 KB; reads of items
# under 4 KB are 1 RRU strongly consistent; a transaction costs 2 units per item.
WRU_PER_WRITE = 2
RRU_PER_READ = 1
JOBS = 200
API_CALLS_PER_JOB = 3  # submit, one status read, one history read: a user who checks once
RECONCILES_PER_MONTH = 60 * 24 * 30


class InstantBackend:
    name = "local"
    reaps = False
    named_by_us = True  # its id is the name it is given, as the local backend's is

    def validate(self, spec):
        return None

    def launch(self, job):
        from chalicelib.backends.base import LaunchResult

        return LaunchResult(f"jp-{job.job_id}")

    def release(self, handle, reason):
        return None

    def estimate_cost(self, job, until=None):
        return 0.0


def measure() -> dict:
    from chalicelib.auth import Principal
    from chalicelib.config import Settings
    from chalicelib.jobs.model import EventSource, JobEvent, JobStatus
    from chalicelib.jobs.service import JobService
    from chalicelib.jobs.spec import parse_spec
    from chalicelib.reaper import reconcile
    from chalicelib.store.dynamo import DynamoJobStore
    from jobplane.local.emulator import start_moto

    server, endpoint = start_moto()
    try:
        settings = Settings.from_env(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "JOBPLANE_TABLE_PREFIX": "cost",
                "JOBPLANE_LOCAL_STATE_DIR": tempfile.mkdtemp(),
            }
        )
        store = DynamoJobStore(settings)
        store.create_tables()
        service = JobService(store, settings, backend_factory=lambda *_: InstantBackend())
        counter = Counter()
        _hook(store, counter)
        user = Principal("bench")
        invocations = collections.Counter()
        seconds = collections.Counter()

        def invoke(kind, func, *args):
            started = time.perf_counter()
            result = func(*args)
            seconds[kind] += time.perf_counter() - started
            invocations[kind] += 1
            return result

        for i in range(JOBS):
            spec = parse_spec({"name": f"job-{i}", "backend": "local", "command": ["true"]})
            job, _ = invoke("api", service.submit, user, spec)
            invoke("api", service.get, user, job.job_id)
            invoke("api", service.history, user, job.job_id)
            for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
                invoke("event", service.apply_event, JobEvent(job.job_id, status, EventSource.BACKEND))
        transitions = JOBS * 4  # QUEUED, LAUNCHING, RUNNING, SUCCEEDED: one stream record each
        before = counter.snapshot()
        invoke("reconcile", reconcile, service)
        reconcile_ops = counter.snapshot() - before
        ops = counter.snapshot() - reconcile_ops
        return {
            "ops": ops,
            "reconcile_ops": reconcile_ops,
            "invocations": invocations,
            "seconds": seconds,
            "transitions": transitions,
        }
    finally:
        server.stop()


def cost_per_1000(result: dict) -> dict:
    scale = 1000 / JOBS
    writes = sum(v for k, v in result["ops"].items() if k in WRITES) * scale
    api = result["invocations"]["api"] * scale
    # + one token lookup (GetItem) per API request, which the service-level count does not see
    reads = sum(v for k, v in result["ops"].items() if k not in WRITES) * scale + api
    events = result["invocations"]["event"] * scale
    notify = result["transitions"] * scale
    lambdas = api + events + notify
    lines = {
        "API Gateway requests": api * PRICES["apigw_rest_request"],
        "Lambda requests": lambdas * PRICES["lambda_request"],
        "Lambda compute": lambdas * LAMBDA_GB * HANDLER_SECONDS * PRICES["lambda_gb_second"],
        "DynamoDB writes": writes * WRU_PER_WRITE * PRICES["dynamodb_wru"],
        "DynamoDB reads": reads * RRU_PER_READ * PRICES["dynamodb_rru"],
        "EventBridge events": events * PRICES["eventbridge_aws_event"],
    }
    reconcile_requests = sum(result["reconcile_ops"].values())
    idle_month = RECONCILES_PER_MONTH * (
        PRICES["lambda_request"]
        + LAMBDA_GB * HANDLER_SECONDS * PRICES["lambda_gb_second"]
        + reconcile_requests * PRICES["dynamodb_rru"]
    )
    return {
        "lines": lines,
        "total": sum(lines.values()),
        "idle_month": idle_month,
        "counts": {
            "API requests": api,
            "state events": events,
            "notify invocations": notify,
            "Lambda invocations": lambdas,
            "DynamoDB writes": writes,
            "DynamoDB reads": reads,
        },
    }


def main() -> int:
    result = measure()
    cost = cost_per_1000(result)
    per_call = {k: result["seconds"][k] / max(result["invocations"][k], 1) * 1000 for k in result["invocations"]}
    print(f"counted over {JOBS} job lifecycles (submit -> SUCCEEDED), scaled to 1,000 jobs; prices {PRICES_DATE}")
    for name, value in cost["counts"].items():
        print(f"  {name:24} {value:10,.0f}")
    print("  in-process handler time (ms, moto): " + ", ".join(f"{k} {v:.1f}" for k, v in per_call.items()))
    print(f"{'cost per 1,000 jobs':32} {'USD':>10}")
    for name, value in cost["lines"].items():
        print(f"  {name:30} {value:10.4f}")
    print(f"  {'total':30} {cost['total']:10.4f}")
    vm_month = CONTROLLER_VM_PER_HOUR * 24 * 30
    print(f"idle month (reconcile every minute, nothing running): ${cost['idle_month']:.2f}")
    print(f"always-on controller VM at ${CONTROLLER_VM_PER_HOUR}/h: ${vm_month:.2f} per month, whatever the load")
    breakeven = (vm_month - cost["idle_month"]) / cost["total"] * 1000
    print(f"jobplane costs less than that VM up to {breakeven:,.0f} jobs per month")
    return 0


if __name__ == "__main__":
    sys.exit(main())
