"""The GCE startup script: stage one job attempt, run it, enforce max runtime, upload to GCS, report, power off."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chalicelib.backends.agent import CHECKPOINT_INTERVAL, GPU_SAMPLE_SH, VM_ROOT, VmContract, devvm_script, vm_script
from chalicelib.backends.shell import assign

# Seconds between uploads of the job's output to log.txt next to the exit report while it runs.
LOG_INTERVAL = 60
MAX_METADATA_VALUE = 256 * 1024  # GCE's limit for one metadata value


def registry_host(image: str | None) -> str:
    """The Artifact Registry or Container Registry host of an image ("" for any other registry)."""
    if not image or "/" not in image:
        return ""
    host = image.split("/", 1)[0]
    return host if host.endswith("-docker.pkg.dev") or host == "gcr.io" or host.endswith(".gcr.io") else ""


# Guest attributes carry the heartbeat and GPU use to the control plane (no agent, no extra API): the
# job VMs' and the dev VMs' scripts write them the same way, and GceBackend.utilization reads them.
GUEST_ATTRIBUTES_SH = r"""
METADATA='http://metadata.google.internal/computeMetadata/v1/instance'
put_attr() {
  curl -fsS -m 5 -X PUT -H 'Metadata-Flavor: Google' --data "$2" \
    "${METADATA}/guest-attributes/jobplane/$1" >/dev/null 2>&1 || true
}
"""

# The cloud's part: GCS through gcloud storage (the VM's service account), guest attributes, Pub/Sub.
_BODY = r"""

store_get() { gcloud storage cp "$1" "$2" --quiet; }
store_put() { gcloud storage cp "$1" "$2" --quiet; }
store_sync() { gcloud storage rsync --recursive "$1" "$2" --quiet; }
store_restore() {
  # gcloud refuses to rsync from a prefix with no objects: a first attempt has no checkpoint yet.
  if gcloud storage ls "$1" >/dev/null 2>&1; then store_sync "$1" "$2"; else echo "jobplane: no checkpoint yet"; fi
}

registry_login() {
  if [ -n "$REGISTRY" ]; then gcloud auth configure-docker "$REGISTRY" --quiet; fi
}


heartbeat() {
  local samples=() gpu mean
  while true; do
    gpu=$(gpu_now)
    if [ -n "$gpu" ]; then samples+=("$gpu"); fi
    if [ "${#samples[@]}" -gt "$IDLE_SAMPLES" ]; then samples=("${samples[@]:1}"); fi
    if [ "${#samples[@]}" -gt 0 ]; then
      mean=$(printf '%s\n' "${samples[@]}" | awk '{ s += $1 } END { printf "%.1f", s / NR }')
      put_attr gpu_percent "$mean"
    fi
    put_attr heartbeat "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    sleep 60
  done
}

deliver_report() {
  local _
  for _ in 1 2 3 4 5; do
    store_put "$REPORT_FILE" "$REPORT_URI" >>"$LOG" 2>&1 && break
    sleep 5
  done
  if [ -n "$EVENTS_TOPIC" ]; then
    gcloud pubsub topics publish "$EVENTS_TOPIC" --message "$(cat "$REPORT_FILE")" \
      --attribute "jobplane-source=jobplane.gce,jobplane-native-id=${NATIVE_ID}" --quiet || true
  fi
}

power_off() { shutdown -h now; }

# Startup scripts run on every boot: a machine whose job already ended only powers off again.
if gcloud storage ls "$REPORT_URI" >/dev/null 2>&1; then
  shutdown -h now
  exit 0
fi

put_attr heartbeat "$STARTED_AT"
heartbeat &
trap finish_job EXIT
run_agent
"""


def startup_script(
    *,
    job_id: str,
    native_id: str,
    image: str | None,
    command: Sequence[str],
    env: Mapping[str, str],
    status_uri: str,
    events_topic: str | None,
    max_runtime_seconds: int,
    idle_samples: int,
    log_interval_seconds: int = LOG_INTERVAL,
    gpus: int = 0,
    setup: Sequence[Sequence[str]] = (),
    code_uri: str | None = None,
    code_sha256: str | None = None,
    inputs: Mapping[str, str] | None = None,
    artifacts_uri: str | None = None,
    checkpoint_uri: str | None = None,
    root: str = VM_ROOT,
    checkpoint_interval_seconds: int = CHECKPOINT_INTERVAL,
) -> str:
    """The script, with the exit report at `status_uri` and the job's log at log.txt in the same folder;
    the job's code, inputs, outputs and checkpoints below `root` (code/, inputs/<name>/, ...)."""
    contract = VmContract(
        job_id=job_id,
        native_id=native_id,
        command=command,
        env=tuple(env.items()),
        max_runtime_seconds=max_runtime_seconds,
        report_uri=status_uri,
        log_uri=status_uri.rsplit("/", 1)[0] + "/log.txt",
        scheme="gs",
        image=image,
        gpus=gpus,
        setup=setup,
        code_uri=code_uri,
        code_sha256=code_sha256,
        inputs=tuple((inputs or {}).items()),
        artifacts_uri=artifacts_uri,
        checkpoint_uri=checkpoint_uri,
        root=root,
        log_interval_seconds=log_interval_seconds,
        checkpoint_interval_seconds=checkpoint_interval_seconds,
    )
    head = [
        assign("REGISTRY", registry_host(image)),
        assign("EVENTS_TOPIC", events_topic or ""),
        assign("IDLE_SAMPLES", int(idle_samples)),
    ]
    return vm_script(head, contract, GPU_SAMPLE_SH + GUEST_ATTRIBUTES_SH + _BODY)


# A dev VM's part: its usage as the same guest attributes a job VM writes (gpu_percent is the busiest
# sample of the idle window, "" until a GPU answered), and a stop that keeps the disk (a guest shutdown
# leaves a GCE instance TERMINATED, which instances.start brings back).
_DEVVM_PART = r"""
publish_usage() {
  if [ -n "$1" ]; then put_attr gpu_percent "$1"; fi
  put_attr heartbeat "$2"
}
power_off() {
  put_attr stop_reason "$1"
  shutdown -h now
}
"""


def devvm_startup_script(*, idle_minutes: int, max_hours: float, sample_seconds: int = 60) -> str:
    """The startup script of a GCE dev VM (run again at every boot, so a restarted VM is watched again)."""
    return devvm_script(
        idle_minutes=idle_minutes,
        max_hours=max_hours,
        sample_seconds=sample_seconds,
        cloud_part=GUEST_ATTRIBUTES_SH + _DEVVM_PART,
    )
