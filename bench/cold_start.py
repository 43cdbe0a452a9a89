"""Cold start served, not imported: a fresh process's first real state event and API requests, against boto3.

The AWS rows run what Lambda runs: the function zip and the layer `make package` builds (with their compiled
bytecode), unpacked as /var/task and /opt, with this venv's boto3/botocore as the runtime's SDK.
`--from-source` runs them from the checkout instead (every module of the app compiled at each start).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVENTS = ROOT / "tests" / "fixtures" / "events"
GCP_FIXTURES = ROOT / "tests" / "fixtures" / "gcp"
PLACEHOLDER = "0123456789abcdef0123456789abcdef"
PROJECT = "my-project"
ZONE = "us-central1-a"

# Each child reads its input from JOBPLANE_BENCH_INPUT and exits non-zero unless it was served as expected,
# so a row can never time a failure.
FIRST_EVENT = """
import json, os
import app
event = json.loads(os.environ["JOBPLANE_BENCH_INPUT"])
result = app.on_job_state_change(event, None)
assert result["outcome"] == "applied" and result["status"] == "SUCCEEDED", result
"""

FIRST_REQUEST = """
import json, os
import app
event = json.loads(os.environ["JOBPLANE_BENCH_INPUT"])
response = app.app(event, None)
assert response["statusCode"] in (200, 201), response
"""

FIRST_GCP_EVENT = """
import json, os, sys
sys.path.insert(0, "gcp_functions")
import main
from cloudevents.http import CloudEvent
event = json.loads(os.environ["JOBPLANE_BENCH_INPUT"])
result = main.on_job_event(CloudEvent(event["attributes"], event["data"]))
assert result["outcome"] == "applied", result
"""


LAYER_SITE = "python/lib/python3.11/site-packages"  # where Lambda puts a layer's Python libraries (/opt/...)


def _run(code: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall s, the child's own CPU s: user + system). The CPU time leaves out what the child waits for (moto,
    in this process, or the fake) and the other processes' share of the cores, so it holds under load."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code], cwd=env.get("JOBPLANE_BENCH_CWD", ROOT), env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, child.args)
    return wall, usage.ru_utime + usage.ru_stime


def packaged() -> dict[str, str]:
    """`make package`'s function zip and layer unpacked; the env that puts them first on a child's sys.path
    (the function's folder is the child's working directory, as /var/task is Lambda's)."""
    import zipfile

    out = Path(tempfile.mkdtemp(prefix="jobplane-cold-package-"))
    subprocess.run(
        ["make", "package", "STAGE=dev", f"PACKAGE_DIR={out / 'package'}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env=os.environ,
    )
    zipfile.ZipFile(out / "package" / "deployment.zip").extractall(out / "task")
    zipfile.ZipFile(out / "package" / "layer-deployment.zip").extractall(out / "opt")
    task, layer = out / "task", out / "opt" / LAYER_SITE
    assert (task / "chalicelib" / "__pycache__").is_dir(), "the function zip holds no bytecode"
    return {"JOBPLANE_BENCH_CWD": str(task), "PYTHONPATH": os.pathsep.join([str(task), str(layer)])}


def _child_env(settings_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBPLANE_", "AWS_"))}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(settings_env)
    return env


class AwsWorld:
    """moto (started outside the timed processes) with the tables, a token and a SageMaker job per round."""

    def __init__(self, endpoint: str) -> None:
        from chalicelib.auth import Principal, create_token
        from chalicelib.config import Settings
        from chalicelib.jobs.service import JobService
        from chalicelib.store.tables import dynamo_stores

        self.env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "JOBPLANE_STAGE": "bench",
            "JOBPLANE_TABLE_PREFIX": f"cold{uuid.uuid4().hex[:6]}",
            "JOBPLANE_BACKENDS": "sagemaker",
            "JOBPLANE_LOCAL_STATE_DIR": tempfile.mkdtemp(prefix="jobplane-cold-"),
        }
        for key, value in _child_env(self.env).items():
            os.environ.setdefault(key, value)
        settings = Settings.from_env(self.env)
        stores = dynamo_stores(settings)
        for store in stores.values():
            store.create_tables()
        self.service = JobService(stores["jobs"], settings)
        self.principal = Principal("bench")
        self.token = create_token(stores["tokens"], "bench")
        self.sample = (EVENTS / "sagemaker-training-job-state-change.json").read_text()

    def spec(self) -> dict:
        return {
            "name": "cold",
            "backend": "sagemaker",
            "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1",
            "command": ["python", "train.py"],
            "resources": {"gpus": 1, "gpu_type": "A10G"},
        }

    def state_event(self) -> dict:
        from chalicelib.jobs.spec import parse_spec

        job, _ = self.service.submit(self.principal, parse_spec(self.spec()))
        return json.loads(self.sample.replace(PLACEHOLDER, job.job_id))


class GcpWorld:
    """The loopback fake of the Google APIs and DynamoDB on moto, with a Vertex and a GCE job per round."""

    def __init__(self, endpoint: str) -> None:
        from chalicelib.auth import Principal
        from chalicelib.config import Settings
        from chalicelib.jobs.service import JobService
        from chalicelib.store.dynamo import DynamoJobStore
        from tests.fakegcp import FakeGcp

        self.fake = FakeGcp().start()
        self.env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "JOBPLANE_STAGE": "bench",
            "JOBPLANE_TABLE_PREFIX": f"coldgcp{uuid.uuid4().hex[:6]}",
            "JOBPLANE_BACKENDS": "vertex,gce",
            "JOBPLANE_LOCAL_STATE_DIR": tempfile.mkdtemp(prefix="jobplane-cold-"),
            "JOBPLANE_GCP_PROJECT": PROJECT,
            "JOBPLANE_GCP_REGION": "us-central1",
            "JOBPLANE_GCE_ZONE": ZONE,
            "JOBPLANE_GCP_STATUS_URI": "gs://jp-status/bench",
            "JOBPLANE_GCP_EVENTS_TOPIC": f"projects/{PROJECT}/topics/jobplane-bench-events",
            "JOBPLANE_GCP_API_ENDPOINT": self.fake.endpoint,
        }
        settings = Settings.from_env(self.env)
        store = DynamoJobStore(settings)
        store.create_tables()
        self.service = JobService(store, settings)
        self.principal = Principal("bench")
        self.push = json.loads((GCP_FIXTURES / "pubsub_push_body.json").read_text())

    def _submit(self, backend: str, **spec):
        from chalicelib.jobs.spec import parse_spec

        body = {"name": "cold", "backend": backend, "command": ["python", "train.py"], **spec}
        return self.service.submit(self.principal, parse_spec(body))[0]

    def _cloud_event(self, entry: dict) -> dict:
        import base64

        data = copy.deepcopy(self.push)
        data["message"]["data"] = base64.b64encode(json.dumps(entry).encode()).decode()
        data["message"]["attributes"] = {}
        attributes = {
            "id": str(uuid.uuid4()),
            "source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/jobplane-bench-events",
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "specversion": "1.0",
        }
        return {"attributes": attributes, "data": data}

    def vertex_event(self) -> dict:
        job = self._submit("vertex", image="us-docker.pkg.dev/p/r/i:1")
        self.fake.custom_jobs[job.native_id]["state"] = "JOB_STATE_SUCCEEDED"
        entry = json.loads((GCP_FIXTURES / "logentry_vertex_ml_job.json").read_text())
        entry["resource"]["labels"]["job_id"] = job.native_id.rsplit("/", 1)[1]
        entry["resource"]["labels"]["project_id"] = PROJECT
        return self._cloud_event(entry)

    def gce_event(self) -> dict:
        job = self._submit("gce", image="us-docker.pkg.dev/p/r/i:1", resources={"spot": True})
        self.fake.instances[(ZONE, job.native_id)]["status"] = "TERMINATED"
        entry = json.loads((GCP_FIXTURES / "logentry_gce_preempted.json").read_text())
        entry["protoPayload"]["resourceName"] = f"projects/{PROJECT}/zones/{ZONE}/instances/{job.native_id}"
        return self._cloud_event(entry)


def measure(rounds: int = 9, from_source: bool = False) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each variant's fresh-process wall times and CPU times, the variants interleaved round by round."""
    from jobplane.local.emulator import start_moto
    from tests.factories import api_event

    lambda_env = {} if from_source else packaged()
    server, endpoint = start_moto()
    try:
        aws = AwsWorld(endpoint)
        gcp = GcpWorld(endpoint)
        aws_env = {**_child_env(aws.env), **lambda_env}
        gcp_env = _child_env(gcp.env)
        variants = {
            "python (no import)": lambda: ("pass", aws_env),
            "import boto3": lambda: ("import boto3", aws_env),
            "import app": lambda: ("import app", aws_env),
            "first state event (SageMaker)": lambda: (FIRST_EVENT, _with(aws_env, aws.state_event())),
            "first GET /jobs": lambda: (FIRST_REQUEST, _with(aws_env, api_event("GET", "/jobs", aws.token))),
            "first POST /jobs (SageMaker)": lambda: (
                FIRST_REQUEST,
                _with(aws_env, api_event("POST", "/jobs", aws.token, aws.spec())),
            ),
            "GCP first Vertex event": lambda: (FIRST_GCP_EVENT, _with(gcp_env, gcp.vertex_event())),
            "GCP first GCE event": lambda: (FIRST_GCP_EVENT, _with(gcp_env, gcp.gce_event())),
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for make in variants.values():
            _run(*make())  # warm the file cache, so every sample measures the same thing
        for _ in range(rounds):
            for name, make in variants.items():  # interleaved: machine noise hits every variant alike
                code, env = make()  # the round's inputs are made outside the timed process
                wall, used = _run(code, env)
                samples[name].append(wall)
                cpu[name].append(used)
        gcp.fake.stop()
    finally:
        server.stop()
        if lambda_env:
            shutil.rmtree(Path(lambda_env["JOBPLANE_BENCH_CWD"]).parent, ignore_errors=True)
    return samples, cpu


def _with(env: dict[str, str], payload: dict) -> dict[str, str]:
    return {**env, "JOBPLANE_BENCH_INPUT": json.dumps(payload)}


AWS_TARGET = 1.5
GCP_TARGET_S = 1.5
PYTHON, BOTO3 = "python (no import)", "import boto3"
# The two AWS rows (a first state event, a first API request) and the one that also launches.
AWS_TARGETED = ("first state event (SageMaker)", "first GET /jobs")
AWS_LAUNCH = "first POST /jobs (SageMaker)"
GCP_ROWS = ("GCP first Vertex event", "GCP first GCE event")


def ratios(samples: dict[str, list[float]]) -> dict[str, float]:
    """Per variant: the median over rounds of (variant - python) / (import boto3 - python), each round's own
    processes only, so load that changes during the run moves both sides of a ratio alike."""
    rounds = range(len(samples[PYTHON]))
    found = {}
    for name, values in samples.items():
        if name == PYTHON:
            continue
        per_round = [(values[i] - samples[PYTHON][i]) / (samples[BOTO3][i] - samples[PYTHON][i]) for i in rounds]
        found[name] = statistics.median(per_round)
    return found


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9, help="fresh processes per variant (at least 5)")
    parser.add_argument(
        "--from-source", action="store_true", help="AWS rows from the checkout, not the unpacked Lambda zips"
    )
    args = parser.parse_args(argv)
    rounds = max(5, args.rounds)
    load_before = _load()
    samples, cpu = measure(rounds, args.from_source)
    load_after = _load()
    where = "the checkout's sources" if args.from_source else "the unpacked function zip and layer (`make package`)"
    print(f"AWS rows run from {where}")
    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratio, cpu_ratio = ratios(samples), ratios(cpu)
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    base = medians[PYTHON]
    print(f"load average (1, 5, 15 min): {load_before} before, {load_after} after; {rounds} rounds, medians")
    print(
        f"{'cold start (fresh process)':32} {'process s':>10} {'net s':>7} {'x boto3':>8} {'CPU s':>7} {'x boto3':>8}"
    )
    for name, value in medians.items():
        shown = "" if name == PYTHON else f"{ratio[name]:8.2f}"
        shown_cpu = "" if name == PYTHON else f"{cpu_ratio[name]:8.2f}"
        print(f"{name:32} {value:10.3f} {value - base:7.3f} {shown:>8} {cpu_medians[name]:7.3f} {shown_cpu}")
    worst = max(AWS_TARGETED, key=ratio.__getitem__)
    verdict = "met" if ratio[worst] <= AWS_TARGET else "not met"
    print(
        f"first state event and first API request: worst {ratio[worst]:.2f} x import boto3 ({worst}); "
        f"target <= {AWS_TARGET}: {verdict}"
    )
    verdict = "met" if ratio[AWS_LAUNCH] <= AWS_TARGET else "not met"
    print(
        f"{AWS_LAUNCH} (validates and launches): {ratio[AWS_LAUNCH]:.2f} x import boto3; "
        f"target <= {AWS_TARGET}: {verdict}"
    )
    for name in GCP_ROWS:
        verdict = "met" if medians[name] <= GCP_TARGET_S else "not met"
        print(f"{name}: {medians[name]:.3f} s per process; target <= {GCP_TARGET_S} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
