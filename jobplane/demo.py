"""`make demo`: start the local stack, run the example jobs to the end (one with its own code and inputs), serve
the model one of them trained as an endpoint, and show their metrics, artifacts, the prediction and Slack messages."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from jobplane.local.state import read_state

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _wait_for_stack(directory: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the local stack exited early with code {proc.returncode}")
        state = read_state(directory)
        if state:
            try:
                if requests.get(state["api"] + "/health", timeout=2).ok:
                    return state
            except requests.RequestException:
                pass
        time.sleep(0.2)
    raise SystemExit("the local stack did not come up within 60 s")


def _upload_trigger(state: dict) -> bool:
    """A real object upload to the embedded S3 starts a job (S3 -> SQS -> on_upload -> rule)."""
    import boto3

    key = "datasets/demo-images.csv"
    _say(f"uploading s3://{state['upload_bucket']}/{key}: the checked-in rule local-datasets starts a job")
    s3 = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=state["aws_endpoint"],
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the embedded emulator accepts any key
    )
    s3.put_object(Bucket=state["upload_bucket"], Key=key, Body=b"path,label\nimg1.png,cat\n")
    headers = {"Authorization": f"Bearer {state['admin_token']}"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = requests.get(state["api"] + "/jobs?limit=20", headers=headers, timeout=10).json()["jobs"]
        found = [j for j in jobs if j["name"] == "ingest-demo-images"]
        if found and found[0]["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            job = found[0]
            logs = requests.get(f"{state['api']}/jobs/{job['job_id']}/logs", headers=headers, timeout=10).json()
            print(f"    job {job['name']} ({job['job_id']}) by {job['owner']}: {job['status']}")
            print(f"    its output: {logs['text'].strip()}")
            return job["status"] == "SUCCEEDED"
        time.sleep(0.5)
    print("    no job started from the upload within 60 s")
    return False


def final_metrics(job: dict) -> list[str]:
    """The job record's latest metrics, one `key  value` line each (its JOBPLANE_METRICS lines, read by jobplane)."""
    from chalicelib.jobs.metrics import format_value

    metrics = job.get("metrics") or {}
    if not metrics:
        return ["(the job reported no metrics)"]
    return [f"{key:<16} {format_value(value)}" for key, value in sorted(metrics.items())]


DATASETS = "jobplane-local-datasets"


def _workdir_job(state: dict, jp: list[str], env: dict) -> tuple[bool, str | None]:
    """A job with its own code (examples/workdir-demo), a setup step and two named inputs from the embedded S3;
    its artifacts (what it wrote to $JOBPLANE_OUTPUT_DIR) are listed afterwards."""
    import boto3

    s3 = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=state["aws_endpoint"],
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the embedded emulator accepts any key
    )
    s3.create_bucket(Bucket=DATASETS)
    samples = {"demo/samples/part-0.csv": b"img1,cat\nimg2,dog\n", "demo/samples/more/part-1.csv": b"img3,bird\n"}
    for key, body in {**samples, "demo/labels.txt": b"cat dog bird\n"}.items():
        s3.put_object(Bucket=DATASETS, Key=key, Body=body)
    _say(f"inputs uploaded to s3://{DATASETS}/demo/; submitting examples/train-workdir-local.yaml (workdir, setup)")
    submit = subprocess.run(
        [*jp, "submit", "examples/train-workdir-local.yaml", "--wait", "--timeout", "120"], cwd=ROOT, env=env
    )
    headers = {"Authorization": f"Bearer {state['admin_token']}"}
    jobs = requests.get(state["api"] + "/jobs?limit=1", headers=headers, timeout=10).json()["jobs"]
    if not jobs or jobs[0]["name"] != "workdir-demo":
        return False, None
    job_id = jobs[0]["job_id"]
    _say(f"its artifacts (`jobplane artifacts {job_id}`), under {jobs[0]['artifacts_uri']}")
    listed = requests.get(f"{state['api']}/jobs/{job_id}/artifacts", headers=headers, timeout=10).json()
    for item in listed["artifacts"]:
        print(f"    {item['key']:<24} {item['size']:>6} bytes")
    return submit.returncode == 0 and len(listed["artifacts"]) == 2, job_id


DEMO_REQUEST = {"text": "  DOG!! "}


def _endpoint_demo(jp: list[str], env: dict, job_id: str) -> bool:
    """Deploy the trained model from the finished job behind examples/workdir-demo/serve.py (found in the
    job's code), invoke it (preprocess cleans the text, postprocess turns counts into a share), print, delete."""
    command = "jobplane endpoint deploy --from-job ... --handler serve.py"
    _say(f"deploying the model of job {job_id} as an endpoint (`{command}`)")
    deploy = subprocess.run(
        [*jp, "endpoint", "deploy", "--from-job", job_id, "--handler", "serve.py", "--name", "demo-model"]
        + ["--backend", "local", "--wait", "--timeout", "60"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    print(deploy.stdout.rstrip())
    if deploy.returncode != 0:
        print(deploy.stderr.rstrip())
        return False
    endpoint_id = deploy.stdout.split()[0]
    _say(f"invoking it with {json.dumps(DEMO_REQUEST)} (`jobplane endpoint invoke {endpoint_id} < request.json`)")
    invoke = subprocess.run(
        [*jp, "endpoint", "invoke", endpoint_id],
        input=json.dumps(DEMO_REQUEST),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    print("   ", invoke.stdout.strip().replace("\n", "\n    ") or invoke.stderr.strip())
    _say("deleting the endpoint (its model server stops)")
    delete = subprocess.run([*jp, "endpoint", "delete", endpoint_id], cwd=ROOT, env=env)
    try:
        answer = json.loads(invoke.stdout)
    except ValueError:
        return False
    return invoke.returncode == 0 and delete.returncode == 0 and answer.get("label") == "dog"


def _say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def _others_can_run(program: str) -> bool:
    """True when a user with no rights of its own can execute `program` (every folder on its real path
    searchable by others, the file executable by others)."""
    path = Path(os.path.realpath(program))
    folders_ok = all(p.stat().st_mode & 0o001 for p in path.parents)
    return folders_ok and bool(path.stat().st_mode & 0o001)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the example job on a fresh local stack")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000), help="the API's port")
    args = parser.parse_args(argv)
    # The demo's own state folder, emptied first: state is durable now, and an earlier run's
    # jobs and uploads would answer for this one's.
    directory = ROOT / ".jobplane" / "demo"
    if read_state(directory):
        raise SystemExit(f"a demo stack is still running from {directory}: stop it first")
    shutil.rmtree(directory, ignore_errors=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if os.geteuid() == 0 and "JOBPLANE_LOCAL_RUN_AS" not in env and not _others_can_run(sys.executable):
        # As root the stack runs jobs as nobody, who cannot reach this Python (it lives under a 0700
        # home, as pyenv's does): the demo's jobs run as the stack's user instead, and says so.
        print(f"note: {sys.executable} is not reachable by nobody; demo jobs run as root (JOBPLANE_LOCAL_RUN_AS=self)")
        env["JOBPLANE_LOCAL_RUN_AS"] = "self"
    _say(f"starting the local stack (moto, API on http://127.0.0.1:{args.port}, local backend, event sources)")
    stack = subprocess.Popen(
        [
            *(str(BIN / "jobplane"), "--local-dir", str(directory), "local", "up"),
            *("--port", str(args.port), "--reconcile-seconds", "5"),
        ],
        cwd=ROOT,
        env=env,
    )
    ok = False
    try:
        state = _wait_for_stack(directory, stack)
        jp = [str(BIN / "jobplane"), "--local-dir", str(directory)]
        _say("submitting examples/train-local.yaml and following it")
        submit = subprocess.run(
            [*jp, "submit", "examples/train-local.yaml", "--wait", "--timeout", "300"], cwd=ROOT, env=env
        )
        ok = submit.returncode == 0
        jobs = requests.get(
            state["api"] + "/jobs?limit=1", headers={"Authorization": f"Bearer {state['admin_token']}"}, timeout=10
        ).json()["jobs"]
        if jobs:
            job = jobs[0]
            _say(f"the job's final metrics (on the job record; the series: `jobplane metrics {job['job_id']}`)")
            for line in final_metrics(job):
                print("   ", line)
        workdir_ok, trained = _workdir_job(state, jp, env)
        ok = workdir_ok and ok
        ok = (trained is not None and _endpoint_demo(jp, env, trained)) and ok
        ok = _upload_trigger(state) and ok
        time.sleep(1.5)  # the stream reader polls twice a second
        _say("messages the Slack webhook sink received")
        for line in Path(state["slack_log"]).read_text().splitlines():
            print("   ", json.loads(line)["text"])
    finally:
        _say("stopping the local stack (Ctrl-C)")
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.kill()
    _say("demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
