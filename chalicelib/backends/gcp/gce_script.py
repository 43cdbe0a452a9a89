"""The GCE startup script: run one job attempt, enforce max runtime, ship the log and exit report to GCS, power off."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chalicelib.backends.agent import SHELL_FUNCTIONS, script_attempt
from chalicelib.backends.shell import array, assign, env_array

# Seconds between uploads of the job's output to log.txt next to the exit report while it runs.
LOG_INTERVAL = 60

# The body is a constant: every job-specific value reaches it only through the quoted header.
_BODY = r"""
METADATA='http://metadata.google.internal/computeMetadata/v1/instance'
LOG=${JOBPLANE_LOG:-/var/log/jobplane-job.log}
EXIT_FILE=${JOBPLANE_EXIT_FILE:-/var/run/jobplane-exit.json}

now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# Guest attributes carry the heartbeat and GPU use to the control plane (no agent, no extra API).
put_attr() {
  curl -fsS -m 5 -X PUT -H 'Metadata-Flavor: Google' --data "$2" \
    "${METADATA}/guest-attributes/jobplane/$1" >/dev/null 2>&1 || true
}

heartbeat() {
  local samples=() gpu mean
  while true; do
    gpu=$(nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits 2>/dev/null \
      | awk '{ s += $1; n++ } END { if (n) printf "%.1f", s / n }')
    if [ -n "$gpu" ]; then samples+=("$gpu"); fi
    if [ "${#samples[@]}" -gt "$IDLE_SAMPLES" ]; then samples=("${samples[@]:1}"); fi
    if [ "${#samples[@]}" -gt 0 ]; then
      mean=$(printf '%s\n' "${samples[@]}" | awk '{ s += $1 } END { printf "%.1f", s / NR }')
      put_attr gpu_percent "$mean"
    fi
    put_attr heartbeat "$(now)"
    sleep 60
  done
}

upload_log() {
  # A snapshot, so the upload never reads a file that grows under it.
  cp "$LOG" "$LOG.snapshot" 2>/dev/null || return 0
  gcloud storage cp "$LOG.snapshot" "$LOG_URI" --quiet >/dev/null 2>&1 || true
}

ship_logs() {
  # A TERM interrupts the wait at once but lets an upload in flight finish, so none lands after the last one.
  trap 'exit 0' TERM
  while true; do
    sleep "$LOG_INTERVAL" &
    wait "$!" || exit 0
    upload_log
  done
}

finish() {
  local code=$1 ran=$2
  kill "$LOG_SHIPPER" 2>/dev/null
  wait "$LOG_SHIPPER" 2>/dev/null
  write_report "$EXIT_FILE" "$code" "$ran"
  # The whole log goes up before the exit report: a job seen ending has its complete log.
  upload_log
  for _ in 1 2 3 4 5; do
    gcloud storage cp "$EXIT_FILE" "$STATUS_URI" --quiet && break
    sleep 5
  done
  if [ -n "$EVENTS_TOPIC" ]; then
    gcloud pubsub topics publish "$EVENTS_TOPIC" --message "$(cat "$EXIT_FILE")" \
      --attribute "jobplane-source=jobplane.gce,jobplane-native-id=${NATIVE_ID}" --quiet || true
  fi
  shutdown -h now
  exit 0
}

# Startup scripts run on every boot: a machine whose job already ended only powers off again.
if gcloud storage ls "$STATUS_URI" >/dev/null 2>&1; then
  shutdown -h now
  exit 0
fi

STARTED_AT=$(now)
echo "jobplane: job ${JOB_ID} (${NATIVE_ID}) starting at ${STARTED_AT}" >>"$LOG"
put_attr heartbeat "$STARTED_AT"
heartbeat &
ship_logs >/dev/null 2>&1 &
LOG_SHIPPER=$!

run_started=$SECONDS
if [ -n "$IMAGE" ]; then
  registry=${IMAGE%%/*}
  case "$registry" in
    *-docker.pkg.dev | gcr.io | *.gcr.io) gcloud auth configure-docker "$registry" --quiet >>"$LOG" 2>&1 ;;
  esac
  env_args=()
  for kv in "${JOB_ENV[@]}"; do env_args+=(--env "$kv"); done
  gpu_args=()
  if command -v nvidia-smi >/dev/null 2>&1; then gpu_args=(--gpus all); fi
  timeout --signal=TERM --kill-after=60 "$MAX_RUNTIME_SECONDS" \
    docker run --rm --name "$NATIVE_ID" "${gpu_args[@]}" "${env_args[@]}" \
    --entrypoint "${COMMAND[0]}" "$IMAGE" "${COMMAND[@]:1}" >>"$LOG" 2>&1
  code=$?
  if [ "$code" -eq 124 ]; then docker kill "$NATIVE_ID" >/dev/null 2>&1 || true; fi
else
  timeout --signal=TERM --kill-after=60 "$MAX_RUNTIME_SECONDS" env "${JOB_ENV[@]}" "${COMMAND[@]}" >>"$LOG" 2>&1
  code=$?
fi

finish "$code" "$((SECONDS - run_started))"
"""

MAX_METADATA_VALUE = 256 * 1024  # GCE's limit for one metadata value


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
) -> str:
    """The script, with the exit report at `status_uri` and the job's log at log.txt in the same folder."""
    attempt = script_attempt(job_id, native_id)
    header = "\n".join(
        [
            "#!/bin/bash",
            "# Values are single-quoted on purpose: nothing in them may expand.",
            "# shellcheck disable=SC2016",
            f"# jobplane: job {job_id}, {native_id}. Generated; every value below is one quoted literal.",
            "set -uo pipefail",
            assign("JOB_ID", job_id),
            assign("NATIVE_ID", native_id),
            assign("ATTEMPT", attempt),
            assign("IMAGE", image or ""),
            assign("STATUS_URI", status_uri),
            assign("LOG_URI", status_uri.rsplit("/", 1)[0] + "/log.txt"),
            assign("LOG_INTERVAL", int(log_interval_seconds)),
            assign("EVENTS_TOPIC", events_topic or ""),
            assign("MAX_RUNTIME_SECONDS", int(max_runtime_seconds)),
            assign("IDLE_SAMPLES", int(idle_samples)),
            array("COMMAND", command),
            env_array("JOB_ENV", env),
        ]
    )
    return header + "\n" + SHELL_FUNCTIONS + _BODY
