"""The control plane's own bill: per 1,000 jobs and for an idle month, from counted requests and AWS's prices.

The counts come from running job lifecycles and an idle reconcile tick through the real service code against
moto, with botocore hooks; the prices are constants written here with their date. Besides Lambda, API Gateway and
DynamoDB it counts what a deployment also pays for: its secrets (SSM Parameter Store SecureStrings, decrypted with
the AWS managed key: KMS bills each decrypt; Secrets Manager, the alternative, bills $0.40 a secret a month),
CloudWatch Logs ingestion of every invocation's lines, and one Lambda invocation for every event the EventBridge
rule matches (jobplane's own, and, with a pattern as broad as the service sources, other workloads' too).
Compared with an always-on controller VM at about $0.25 per hour (~$180 a month).
"""

from __future__ import annotations

import collections
import logging
import math
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
    "eventbridge_aws_event": 0.0,  # AWS service state events on the default bus are free (the Lambda is not)
    "eventbridge_schedule": 0.0,  # a rate() rule on the default bus has no charge
    "secretsmanager_secret_month": 0.40,  # $ per secret per month
    "secretsmanager_call": 0.05 / 1e4,  # $ per GetSecretValue
    "ssm_standard_parameter_month": 0.0,  # standard parameters: no storage charge
    "ssm_standard_call": 0.0,  # standard throughput GetParameter: no charge
    "kms_request": 0.03 / 1e4,  # $ per Decrypt a SecureString read costs (AWS managed key aws/ssm; no free tier used)
    "cloudwatch_logs_gb": 0.50,  # $ per GB ingested (standard class)
}
PRICES_DATE = "2026-11"
CONTROLLER_VM_PER_HOUR = 0.25
LAMBDA_GB = 0.5  # memory of every function (.chalice/config.json)
HANDLER_SECONDS = 0.2  # billed duration assumed per invocation (measured in-process times are below it)
# Units per request: job items are 1-2 KB (2 WRU per write), history items < 1 KB; reads of items
# under 4 KB are 1 RRU strongly consistent; a transaction costs 2 units per item.
WRU_PER_WRITE = 2
RRU_PER_READ = 1
# A global secondary index answers only eventually consistent reads: 0.5 RRU per 4 KB (an empty page is one).
RRU_PER_INDEX_QUERY = 0.5
JOBS = 200
API_CALLS_PER_JOB = 3  # submit, one status read, one history read: a user who checks once
RECONCILES_PER_MONTH = 60 * 24 * 30
# An idle tick's billed time, from its counted requests (never from a timing, which the shared machine's load
# moves): this much per AWS request (DynamoDB in-region answers in single-digit milliseconds) plus the handler's
# own Python. The tick's in-process time against moto, requests included, is printed beside it (48-59 ms).
REQUEST_SECONDS = 0.010
HANDLER_OVERHEAD_SECONDS = 0.020
# Lambda writes START, END and REPORT lines for every invocation (about 320 bytes with the request id and the
# REPORT figures); the handler's own log lines are measured.
PLATFORM_LOG_BYTES = 320
# The secrets are read once per container; assumed: each function's container is replaced once an hour.
COLD_STARTS_PER_FUNCTION_MONTH = 24 * 30
SECRETS = 2  # the Slack webhook URL and the signing secret (.chalice/config.json); a bot token makes 3
IDLE_SECRET_READS = 1  # an idle tick's outbox drain reads the webhook URL
# Native state events per job that the narrowed rule still matches (SageMaker: Starting, Downloading, Training,
# Uploading, Completed; Batch: SUBMITTED..SUCCEEDED; ECS task and EC2 instance changes: 4-6): assumed 6.
NATIVE_EVENTS_PER_JOB = 6
# Another workload's state events a month (autoscaling groups, ECS services, other teams' Batch and SageMaker
# jobs): an assumption, to show what a pattern of sources alone would cost; the narrowed pattern matches none.
FOREIGN_EVENTS_PER_MONTH = 100_000
# An idle tick also lists each reaping backend's tagged VMs (EC2 DescribeInstances: no charge, but billed time).
REAP_LIST_CALLS = 1
WEBHOOK_PARAMETER = "ssm:/jobplane/bench/slack-webhook-url"


class _LogBytes(logging.Handler):
    """Counts the bytes the handlers log (what CloudWatch Logs would ingest), at INFO and above."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.bytes = 0
        self.setFormatter(logging.Formatter("[%(levelname)s] %(asctime)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.bytes += len(self.format(record).encode()) + 1


from chalicelib.backends.base import ComputeBackend, LaunchResult  # noqa: E402


class InstantBackend(ComputeBackend):
    """Launches nothing and costs nothing (the local backend at its default price); the bench plays the events."""

    name = "local"
    reaps = False
    named_by_us = True  # its id is the name it is given, as the local backend's is

    def validate(self, spec):
        return None

    def _launch_impl(self, job, handle):
        return LaunchResult(handle.native_name)

    def _describe_impl(self, handle):
        return None

    def _cancel_impl(self, handle):
        return None

    def release(self, handle, reason):
        return None

    def estimate_cost(self, job, until=None):
        return 0.0

    def hourly_quote(self, spec, region, usage=None):
        from datetime import date

        from chalicelib.pricing import Price

        return self.name, Price(0.0, date.today(), "bench")


def measure() -> dict:
    from chalicelib import deps
    from chalicelib.auth import Principal
    from chalicelib.budgets.service import BudgetService, evaluate_safely
    from chalicelib.config import Settings
    from chalicelib.jobs.model import EventSource, JobEvent, JobStatus
    from chalicelib.jobs.service import JobService
    from chalicelib.jobs.spec import parse_spec
    from chalicelib.reaper import reconcile_all
    from chalicelib.store.budgets import DynamoBudgetStore
    from chalicelib.store.dynamo import DynamoJobStore
    from chalicelib.store.endpoints import DynamoEndpointStore
    from chalicelib.store.slack import DynamoSlackStore
    from jobplane.local.emulator import start_moto

    server, endpoint = start_moto()
    try:
        settings = Settings.from_env(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "JOBPLANE_TABLE_PREFIX": "cost",
                "JOBPLANE_LOCAL_STATE_DIR": tempfile.mkdtemp(),
                "JOBPLANE_SLACK_WEBHOOK_SECRET": WEBHOOK_PARAMETER,
            }
        )
        store = DynamoJobStore(settings)
        store.create_tables()
        budget_store = DynamoBudgetStore(settings)
        budget_store.create_tables()
        instant = lambda *_: InstantBackend(settings)  # noqa: E731
        budgets = BudgetService(budget_store, store, settings, backend_factory=instant)
        service = JobService(store, settings, backend_factory=instant, budgets=budgets)
        counter = Counter()
        _hook(store, counter)
        _hook(budget_store, counter)
        # The tick as deployed: Slack configured (its outbox drained every tick), endpoints reconciled.
        slack, endpoints = DynamoSlackStore(settings), DynamoEndpointStore(settings)
        for extra in (slack, endpoints):
            extra.create_tables()
            _hook(extra, counter)
        deps.override(
            settings=settings,
            store=store,
            slack_store=slack,
            endpoint_store=endpoints,
            service=service,
            **{f"secret:{WEBHOOK_PARAMETER}": "http://127.0.0.1:9/never-called"},  # the outbox stays empty
        )
        logs = _LogBytes()
        logging.getLogger().addHandler(logs)
        logging.getLogger().setLevel(logging.INFO)
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
            # The stream batch of the job's end asks the budgets (one Query of the budgets table: none are set).
            invoke("notify", evaluate_safely, service, [], lambda *_: None)
        transitions = JOBS * 4  # QUEUED, LAUNCHING, RUNNING, SUCCEEDED: one stream record each
        lifecycle_logs = logs.bytes
        ops = counter.snapshot()
        endpoint_service = deps.get_endpoint_service()
        reconcile_all(service, None, None, endpoint_service)  # warm: the container of a tick a minute ago
        logs.bytes = 0
        before = counter.snapshot()
        started = time.perf_counter()
        reconcile_all(service, None, None, endpoint_service)
        idle_seconds = time.perf_counter() - started
        reconcile_ops = counter.snapshot() - before
        return {
            "ops": ops,
            "reconcile_ops": reconcile_ops,
            "idle_seconds": idle_seconds,
            "idle_log_bytes": logs.bytes,
            "lifecycle_log_bytes": lifecycle_logs,
            "invocations": invocations,
            "seconds": seconds,
            "transitions": transitions,
        }
    finally:
        logging.getLogger().removeHandler(logs)
        deps.reset()
        server.stop()


def lambda_cost(invocations: float, seconds: float = HANDLER_SECONDS) -> float:
    return invocations * (PRICES["lambda_request"] + LAMBDA_GB * seconds * PRICES["lambda_gb_second"])


def logs_cost(invocations: float, handler_bytes: float = 0.0) -> float:
    return (invocations * PLATFORM_LOG_BYTES + handler_bytes) / 1e9 * PRICES["cloudwatch_logs_gb"]


def secrets_month(reads: float, secrets_manager: bool = False) -> float:
    """A month of the secrets: storage plus `reads` decrypted reads."""
    if secrets_manager:
        return SECRETS * PRICES["secretsmanager_secret_month"] + reads * PRICES["secretsmanager_call"]
    return SECRETS * PRICES["ssm_standard_parameter_month"] + reads * (
        PRICES["ssm_standard_call"] + PRICES["kms_request"]
    )


def idle_month(result: dict, secrets_manager: bool = False, foreign_events: float = 0.0) -> dict:
    """A month with nothing submitted: reconcile every minute; optionally other workloads' events invoking it."""
    requests = sum(result["reconcile_ops"].values())
    # Every request of an idle tick is a Query of a sparse index (active jobs, queued jobs, active endpoints, the
    # outbox's open-due): checked, since the price per request below holds only for those.
    assert set(result["reconcile_ops"]) == {"Query"}, result["reconcile_ops"]
    billed = math.ceil((HANDLER_OVERHEAD_SECONDS + (requests + REAP_LIST_CALLS) * REQUEST_SECONDS) * 1000) / 1000
    ticks = RECONCILES_PER_MONTH
    lines = {
        "Lambda (reconcile)": lambda_cost(ticks, billed),
        "DynamoDB reads (reconcile)": ticks * requests * RRU_PER_INDEX_QUERY * PRICES["dynamodb_rru"],
        "CloudWatch Logs": logs_cost(ticks, ticks * result["idle_log_bytes"]),
        "secrets": secrets_month(COLD_STARTS_PER_FUNCTION_MONTH * IDLE_SECRET_READS, secrets_manager),
    }
    if foreign_events:
        lines["Lambda (other workloads' events)"] = lambda_cost(foreign_events) + logs_cost(foreign_events)
    return {"lines": lines, "total": sum(lines.values()), "billed_seconds": billed, "requests": requests}


def cost_per_1000(result: dict) -> dict:
    scale = 1000 / JOBS
    writes = sum(v for k, v in result["ops"].items() if k in WRITES) * scale
    api = result["invocations"]["api"] * scale
    # + one token lookup (GetItem) per API request, which the service-level count does not see
    reads = sum(v for k, v in result["ops"].items() if k not in WRITES) * scale + api
    transitions = result["invocations"]["event"] * scale
    # Every native state event the narrowed rule matches invokes on_job_state_change, news or not.
    events = 1000 * NATIVE_EVENTS_PER_JOB
    notify = result["transitions"] * scale
    lambdas = api + events + notify
    lines = {
        "API Gateway requests": api * PRICES["apigw_rest_request"],
        "Lambda requests": lambdas * PRICES["lambda_request"],
        "Lambda compute": lambdas * LAMBDA_GB * HANDLER_SECONDS * PRICES["lambda_gb_second"],
        "DynamoDB writes": writes * WRU_PER_WRITE * PRICES["dynamodb_wru"],
        "DynamoDB reads": reads * RRU_PER_READ * PRICES["dynamodb_rru"],
        "EventBridge events": events * PRICES["eventbridge_aws_event"],
        "CloudWatch Logs": logs_cost(lambdas, result["lifecycle_log_bytes"] * scale),
        # api_handler, on_job_state_change and notify containers read their secrets once each (cold starts of
        # the month are counted in the idle month; a busy month adds about one container per 1,000 jobs).
        "secrets (decrypts)": 3 * SECRETS * PRICES["kms_request"],
    }
    return {
        "lines": lines,
        "total": sum(lines.values()),
        "idle": idle_month(result),
        "idle_secrets_manager": idle_month(result, secrets_manager=True),
        "idle_broad_pattern": idle_month(result, foreign_events=FOREIGN_EVENTS_PER_MONTH),
        "counts": {
            "API requests": api,
            "jobplane transitions posted": transitions,
            "state events matched": events,
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
        print(f"  {name:28} {value:10,.0f}")
    print("  in-process handler time (ms, moto): " + ", ".join(f"{k} {v:.1f}" for k, v in per_call.items()))
    print(f"{'cost per 1,000 jobs':32} {'USD':>10}")
    for name, value in cost["lines"].items():
        print(f"  {name:30} {value:10.4f}")
    print(f"  {'total':30} {cost['total']:10.4f}")
    idle = cost["idle"]
    print(
        f"idle month (reconcile every minute, nothing running): {idle['requests']} DynamoDB requests and "
        f"{idle['billed_seconds'] * 1000:.0f} ms billed a tick "
        f"(in-process here: {result['idle_seconds'] * 1000:.0f} ms), "
        f"{result['idle_log_bytes']} log bytes a tick"
    )
    for name, value in idle["lines"].items():
        print(f"  {name:30} {value:10.4f}")
    print(f"  {'total':30} {idle['total']:10.4f}")
    print(
        f"  the same with the secrets in Secrets Manager: ${cost['idle_secrets_manager']['total']:.2f}; "
        f"with a pattern of sources alone and {FOREIGN_EVENTS_PER_MONTH:,} other workloads' events: "
        f"${cost['idle_broad_pattern']['total']:.2f}"
    )
    vm_month = CONTROLLER_VM_PER_HOUR * 24 * 30
    print(
        f"always-on controller VM at ${CONTROLLER_VM_PER_HOUR}/h: ${vm_month:.2f} per month, whatever the load "
        f"({vm_month / idle['total']:,.0f}x an idle month of jobplane)"
    )
    breakeven = (vm_month - idle["total"]) / cost["total"] * 1000
    print(f"jobplane costs less than that VM up to {breakeven:,.0f} jobs per month")
    return 0


if __name__ == "__main__":
    sys.exit(main())
