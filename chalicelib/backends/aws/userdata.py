"""EC2 user data for an ad-hoc job VM: stage the job, run it, enforce max runtime, upload, report to S3, shut down."""

from __future__ import annotations

import re
from dataclasses import dataclass

from chalicelib.backends.agent import (
    CHECKPOINT_INTERVAL,
    HEARTBEAT_OBJECT,
    HEARTBEAT_SH,
    VM_ROOT,
    VmContract,
    vm_script,
)
from chalicelib.backends.shell import assign

# EC2 refuses user data over 16 KiB (before base64).
MAX_USER_DATA = 16 * 1024
# Seconds past max runtime after which an independent timer powers the machine off.
HARD_STOP_GRACE = 600
# Seconds between uploads of the job's output to <status_uri>log.txt while it runs.
LOG_INTERVAL = 60
# Seconds between heartbeats (<status_uri>heartbeat.json, with the GPU use), the reaper's granularity.
HEARTBEAT_INTERVAL = 60
# <account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]: a private ECR registry, logged in with the VM's role.
ECR_HOST = re.compile(r"^[0-9]{12}\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


@dataclass(frozen=True)
class VmJob:
    """Everything the script needs, already decided by the backend; every string is data."""

    job_id: str
    native_id: str
    name: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    max_runtime_seconds: int
    status_uri: str  # s3://bucket/prefix/ (ends with /): status.json (the exit report) and log.txt go here
    region: str
    image: str | None = None
    gpus: int = 0
    checkpoint_uri: str | None = None  # s3://.../ restored before the job starts, synced while it runs
    workdir: str = VM_ROOT  # the VM's folder for the job: code/, inputs/<name>/, outputs/, checkpoints/
    log_interval_seconds: int = LOG_INTERVAL
    setup: tuple[tuple[str, ...], ...] = ()
    code_uri: str | None = None
    code_sha256: str | None = None
    inputs: tuple[tuple[str, str], ...] = ()
    artifacts_uri: str | None = None  # s3://.../<job_id>/ where $JOBPLANE_OUTPUT_DIR goes when the job ends
    checkpoint_interval_seconds: int = CHECKPOINT_INTERVAL
    heartbeat_interval_seconds: int = HEARTBEAT_INTERVAL
    idle_samples: int = 30  # heartbeats in the reaper's idle window: gpu_percent is the busiest of these


def ecr_registry(image: str | None) -> tuple[str, str] | None:
    """(registry host, region) when the image is in a private ECR registry."""
    host = (image or "").split("/", 1)[0]
    match = ECR_HOST.match(host) if "/" in (image or "") else None
    return (host, match[1]) if match else None


# The cloud's part: S3 through the AWS CLI (the instance profile's credentials), ECR, the hard stop.
_BODY = r"""
store_get() { aws s3 cp --region "$REGION" --only-show-errors "$1" "$2"; }
store_put() { aws s3 cp --region "$REGION" --only-show-errors "$1" "$2"; }
store_sync() { aws s3 sync --region "$REGION" --only-show-errors "$1" "$2"; }
store_restore() { store_sync "$1" "$2"; }

registry_login() {
  if [ -n "$ECR_REGISTRY" ]; then
    aws ecr get-login-password --region "$ECR_REGION" |
      docker login --username AWS --password-stdin "$ECR_REGISTRY"
  fi
}

deliver_report() {
  store_put "$REPORT_FILE" "$REPORT_URI" >>"$LOG" 2>&1 || true
}

power_off() {
  stop "${HARD_STOP:-}"
  # InstanceInitiatedShutdownBehavior=terminate: powering off ends the instance and its bill.
  shutdown -h now || poweroff
}

trap finish_job EXIT
# A second, independent stop: whatever the command does, the machine goes away.
every "$((MAX_RUNTIME_SECONDS + HARD_STOP_GRACE))" backstop >/dev/null 2>&1 &
HARD_STOP=$!
note "job name: $JOB_NAME"
start_heartbeat
run_agent
"""


def user_data(job: VmJob) -> str:
    """The bash script EC2 runs at first boot (cloud-init runs user data that starts with #!)."""
    if not job.status_uri.endswith("/"):
        raise ValueError("status_uri must end with /")
    contract = VmContract(
        job_id=job.job_id,
        native_id=job.native_id,
        command=job.command,
        env=job.env,
        max_runtime_seconds=job.max_runtime_seconds,
        report_uri=job.status_uri + "status.json",
        log_uri=job.status_uri + "log.txt",
        scheme="s3",
        image=job.image,
        gpus=job.gpus,
        setup=job.setup,
        code_uri=job.code_uri,
        code_sha256=job.code_sha256,
        inputs=job.inputs,
        artifacts_uri=job.artifacts_uri,
        checkpoint_uri=job.checkpoint_uri,
        root=job.workdir,
        log_interval_seconds=job.log_interval_seconds,
        checkpoint_interval_seconds=job.checkpoint_interval_seconds,
    )
    registry, registry_region = ecr_registry(job.image) or ("", "")
    head = [
        assign("JOB_NAME", job.name),
        assign("HARD_STOP_GRACE", HARD_STOP_GRACE),
        assign("REGION", job.region),
        assign("ECR_REGISTRY", registry),
        assign("ECR_REGION", registry_region),
        assign("HEARTBEAT_URI", job.status_uri + HEARTBEAT_OBJECT),
        assign("HEARTBEAT_INTERVAL", int(job.heartbeat_interval_seconds)),
        assign("IDLE_SAMPLES", max(1, int(job.idle_samples))),
    ]
    return vm_script(head, contract, HEARTBEAT_SH + _BODY)
