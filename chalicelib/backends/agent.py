"""The VM agent contract: one exit-report format, one table of exit rules, one parser for every backend."""

from __future__ import annotations

import json
import logging
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from chalicelib.backends.base import Observation, Utilization, parse_native_name
from chalicelib.jobs.contract import CODE_MAX_MEMBERS, CODE_MAX_UNPACKED_BYTES
from chalicelib.jobs.model import FailureKind, JobStatus, native_name, parse_iso

log = logging.getLogger(__name__)

REPORT_VERSION = 1
HEARTBEAT_VERSION = 1
#: the heartbeat's object, next to the exit report (status.json) and the log (log.txt)
HEARTBEAT_OBJECT = "heartbeat.json"


class ExitState(str, Enum):
    """How one attempt's command ended, as its agent (EC2 user data, GCE startup script, local runner) saw it."""

    #: the command exited 0
    SUCCEEDED = "SUCCEEDED"
    #: the command exited non-zero or was killed by a signal the agent did not send
    FAILED = "FAILED"
    #: the agent stopped the command at max_runtime_minutes
    TIMEOUT = "TIMEOUT"
    #: a cancel request reached the agent and it stopped the command
    CANCELLED = "CANCELLED"
    #: the machine was taken away under the command (spot reclaim, preemption, host shutdown)
    INTERRUPTED = "INTERRUPTED"


class StopCause(str, Enum):
    """Why the agent itself ended the command (None when the command ended on its own)."""

    TIMEOUT = "timeout"
    CANCEL = "cancel"
    INTERRUPT = "interrupt"


# What a report's state means for the job: the one place the three agents' endings are judged.
OUTCOMES: dict[ExitState, tuple[JobStatus, FailureKind | None]] = {
    ExitState.SUCCEEDED: (JobStatus.SUCCEEDED, None),
    ExitState.FAILED: (JobStatus.FAILED, FailureKind.USER_ERROR),
    ExitState.TIMEOUT: (JobStatus.FAILED, FailureKind.TIMEOUT),
    ExitState.CANCELLED: (JobStatus.CANCELLED, None),
    ExitState.INTERRUPTED: (JobStatus.FAILED, FailureKind.INTERRUPTED),
}
_BY_CAUSE = {
    StopCause.TIMEOUT: ExitState.TIMEOUT,
    StopCause.CANCEL: ExitState.CANCELLED,
    StopCause.INTERRUPT: ExitState.INTERRUPTED,
}
# Exit statuses in shell terms, as timeout(1) returns them: 124 when it stopped the command itself.
TIMEOUT_EXIT = 124
SIGKILL_EXIT = 128 + signal.SIGKILL


def exit_state(exit_code: int | None, stopped_by: StopCause | None = None) -> ExitState:
    """The exit rules: the agent's own stop decides first, then 0 succeeds and anything else fails.

    The VM scripts apply the same rules in bash (SHELL_FUNCTIONS below), where timeout(1)'s 124
    (or 137 once the command outlived the TERM past its limit) is how they know they stopped it."""
    if stopped_by is not None:
        return _BY_CAUSE[stopped_by]
    return ExitState.SUCCEEDED if exit_code == 0 else ExitState.FAILED


def exit_reason(state: ExitState, exit_code: int | None, max_runtime_seconds: int | None = None) -> str:
    """The words a job's history shows for a report that brought none of its own."""
    if state is ExitState.TIMEOUT:
        limit = f" ({max_runtime_seconds // 60})" if isinstance(max_runtime_seconds, int) else ""
        return f"exceeded max_runtime_minutes{limit}"
    if state is ExitState.CANCELLED:
        return "cancelled on request"
    if state is ExitState.INTERRUPTED:
        return "the machine was shut down under the job"
    if exit_code is None:
        return "the command never ran"
    if exit_code > 128:
        try:
            name = signal.Signals(exit_code - 128).name
        except ValueError:
            name = f"signal {exit_code - 128}"
        return f"killed by signal {name} (exit code {exit_code})"
    return f"exit code {exit_code}"


def shell_exit_code(returncode: int) -> int:
    """Popen's returncode (-N: killed by signal N) in the shell's terms (128 + N), as every report writes it."""
    return 128 - returncode if returncode < 0 else returncode


def make_report(
    *,
    job_id: str,
    attempt: int,
    exit_code: int | None,
    stopped_by: StopCause | None = None,
    started_at: str | None,
    finished_at: str,
    max_runtime_seconds: int | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """An exit report, format v1 (what the local runner writes; the VM scripts print the same keys).

    `v` 1; `job_id`, `attempt`, `native_name` (jp-<job_id>[-a<attempt>]): whose report it is;
    `state` one of ExitState; `exit_code` the command's status in shell terms (0-255, 128+N when
    signal N ended it, 124 when the agent's max-runtime timer did) or null when it never ran;
    `reason` the agent's words, or "" (the VM scripts: the parser words it from the state, as here);
    `max_runtime_seconds` the limit the agent enforced; `started_at`, `finished_at` ISO 8601 UTC.
    Readers ignore keys they do not know, so later agents may add some without a new version."""
    state = exit_state(exit_code, stopped_by)
    return {
        "v": REPORT_VERSION,
        "job_id": job_id,
        "attempt": attempt,
        "native_name": native_name(job_id, attempt),
        "state": state.value,
        "exit_code": exit_code,
        "reason": reason or exit_reason(state, exit_code, max_runtime_seconds),
        "max_runtime_seconds": max_runtime_seconds,
        "started_at": started_at,
        "finished_at": finished_at,
    }


# The bash half of the contract, pasted into both VM scripts. It reads JOB_ID, ATTEMPT, NATIVE_ID,
# MAX_RUNTIME_SECONDS and STARTED_AT from the script's quoted header (all checked by script_attempt),
# so every value it prints into JSON is a number, a fixed word or a jobplane-made name; a reason is a
# fixed phrase of the script's, at most naming an input (names are [A-Za-z0-9._-], checked by vm_header).
SHELL_FUNCTIONS = r"""
# --- the exit report, format v1 (chalicelib/backends/agent.py) ---
report_state() {
  # $1: the status timeout(1) returned, $2: seconds the command ran.
  if [ "$1" -eq 124 ] || { [ "$1" -eq 137 ] && [ "$2" -ge "$MAX_RUNTIME_SECONDS" ]; }; then
    echo TIMEOUT
  elif [ "$1" -eq 0 ]; then
    echo SUCCEEDED
  else
    echo FAILED
  fi
}

write_report() {
  # $1: file, $2: the command's exit status ("" when it never ran), $3: seconds it ran, $4: a reason or "".
  # Written whole, then moved into place.
  local state=FAILED code=null
  if [ -n "$2" ]; then
    state=$(report_state "$2" "$3")
    code=$(printf %d "$2")
  fi
  # The machine shutting down under the job ended it, whatever the command's status says; the script's
  # own backstop at max_runtime_minutes (backstop below) is a timeout, not an interruption to retry.
  case ${STOPPED_BY:-} in
    interrupt) state=INTERRUPTED ;;
    timeout) state=TIMEOUT ;;
  esac
  printf '{"v": 1, "job_id": "%s", "attempt": %d, "native_name": "%s", "state": "%s", "exit_code": %s, ' \
    "$JOB_ID" "$ATTEMPT" "$NATIVE_ID" "$state" "$code" >"$1.tmp"
  printf '"reason": "%s", "max_runtime_seconds": %d, "started_at": "%s", "finished_at": "%s"}\n' \
    "$4" "$MAX_RUNTIME_SECONDS" "$STARTED_AT" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$1.tmp" && mv -f "$1.tmp" "$1"
}
"""

# awk over `tar -tv` (GNU tar's and busybox's listing: type and mode, owner, size, date, time, name): prints why
# the archive must not be unpacked, or nothing. Refused: more members than mm or more bytes than mb (the
# contract's CODE_MAX_MEMBERS, CODE_MAX_UNPACKED_BYTES), a member that is not a file, folder or link, an
# absolute name or a `..` component, a link whose target leaves the folder (out() resolves it), a link name
# that cannot be read unambiguously. It stops reading at the first limit passed (tar then stops too), and the
# listing streams the decompressed archive: nothing is written to disk. Terse: it is in every EC2 user data.
CHECK_ARCHIVE_AWK = r"""
function out(p,n,i,x,d){if(p~/^\//)return 1;n=split(p,x,"/")
for(i=1;i<=n;i++)if(x[i]==".."){if(--d<0)return 1}else if(x[i]!=""&&x[i]!=".")d++}
function no(w){if(!bad)bad=w}
$0=="!"{no("not a .tar.gz");next}
{k=substr($1,1,1);r=$0;if(k!~/[-dlh]/)no("not a file, folder or link");if($3~/^[0-9]+$/)b+=$3
sub(/^[^ ]+ +[^ ]+ +[^ ]+ +[^ ]+ +[^ ]+ /,"",r)
if(k~/[lh]/){if(split(r,x,k=="l"?" -> ":" link to ")!=2)no("an unclear link");r=x[1];d=r;sub(/[^\/]*$/,"",d)
if(x[2]~/^\//||out(k=="l"?d x[2]:x[2]))no("a link out of its folder")}
if(r~/^\//||r~/(^|\/)\.\.(\/|$)/)no("members outside its folder (absolute or ..)")
if(++m>mm||b>mb)exit}
END{if(m>mm)print "over " mm " members (CODE_MAX_MEMBERS)"
else if(b>mb)print "over " mb " bytes (CODE_MAX_UNPACKED_BYTES)";else if(bad)print bad}
"""

# POSIX sh, shared by the VM scripts and the Vertex, ECS, Batch and Kubernetes wrappers: unpack packed code
# into an empty folder, refusing an archive whose digest is not code_sha256 or that CHECK_ARCHIVE_AWK refuses.
UNPACK_CODE_SH = (
    r"""
unpack_code() {
  # $1: the .tar.gz, $2: its sha256 or "", $3: an empty folder; $4, $5: limits (the contract's by default)
  if [ -n "$2" ] && [ "$(sha256sum "$1" | cut -d ' ' -f 1)" != "$2" ]; then
    echo "jobplane: code_uri: the archive's sha256 is not code_sha256" >&2
    return 1
  fi
  JOBPLANE_W_NO=$({ tar -tvzf "$1" || echo !; } 2>/dev/null |
    LC_ALL=C awk -v mm="${4:-"""
    + str(CODE_MAX_MEMBERS)
    + r"""}" -v mb="${5:-"""
    + str(CODE_MAX_UNPACKED_BYTES)
    + r"""}" '"""
    + CHECK_ARCHIVE_AWK
    + r"""')
  if [ -n "$JOBPLANE_W_NO" ]; then
    echo "jobplane: code_uri: the archive is refused: $JOBPLANE_W_NO" >&2
    return 1
  fi
  tar --no-same-owner -xzf "$1" -C "$3"
}
"""
)

# POSIX sh: run each step in turn in the current folder. Arguments: <n> and that step's n words,
# repeated; the last step is the command. The first step that fails ends the run with its status.
# A TERM (max runtime, the container stopping) goes to the step that runs, and the run waits for it.
RUN_STEPS_SH = r"""
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
child=
step=0
while [ "$#" -gt 0 ]; do
  n=$1
  shift
  step=$((step + 1))
  (
    total=$#
    i=0
    for word do
      if [ "$i" -lt "$n" ]; then set -- "$@" "$word"; fi
      i=$((i + 1))
    done
    shift "$total"
    exec "$@"
  ) &
  child=$!
  wait "$child"
  code=$?
  while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    code=$?
  done
  shift "$n"
  if [ "$code" -ne 0 ]; then
    if [ "$#" -gt 0 ]; then echo "jobplane: setup step $step failed with exit status $code" >&2; fi
    exit "$code"
  fi
done
exit 0
"""


# The job contract on a VM, in bash, shared by the EC2 user data and the GCE startup script. The script
# around it defines the object store (store_get SRC FILE, store_put FILE DST, store_sync SRC DST for
# folders and prefixes, store_restore URI DIR where a missing prefix is an empty one), registry_login,
# deliver_report and power_off, and its header sets the values vm_header() writes. The spec's env is
# never a variable of this shell: it reaches the job through env -i or docker --env only.
VM_AGENT = r"""
LOG="$ROOT/output.log"
REPORT_FILE="$ROOT/status.json"
BACKSTOP_FILE="$ROOT/backstop"
# Where a container finds the job's folders (the same on every VM).
C_INPUTS=/opt/jobplane/inputs
C_OUTPUTS=/opt/jobplane/outputs
C_CHECKPOINTS=/opt/jobplane/checkpoints
C_CODE=/opt/jobplane/code
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
mkdir -p "$ROOT"
rm -f "$BACKSTOP_FILE"
exit_code=""
ran_seconds=0
REASON=""
RAN=""
STOPPED_BY=""
JOB_PID=""
JOB_BEGAN=$SECONDS

note() { echo "jobplane: $*" >>"$LOG"; }

every() {
  # $1: seconds, then a command run every $1 seconds until TERM. A TERM interrupts the wait at once but
  # lets a run in flight finish, so nothing it uploads lands after the last upload.
  local interval=$1 pause=""
  shift
  trap '[ -z "$pause" ] || kill "$pause" 2>/dev/null; exit 0' TERM
  while true; do
    sleep "$interval" &
    pause=$!
    wait "$pause" || exit 0
    "$@"
  done
}

stop() {
  if [ -n "$1" ]; then
    kill "$1" 2>/dev/null
    # A stopped process (SIGSTOP) takes the TERM once continued.
    kill -CONT "$1" 2>/dev/null
    wait "$1" 2>/dev/null
  fi
}

wait_job() {
  # $1: the timeout(1) running the job, in the background so that a TERM reaches this shell at once;
  # timeout runs in a process group of its own, so shut_down passes the TERM on.
  JOB_PID=$1
  wait "$JOB_PID"
  exit_code=$?
  JOB_PID=""
}

backstop() {
  # The script's own last stop, past max_runtime_minutes: marked, so that the TERM the shutdown brings
  # is reported as the timeout it is.
  : >"$BACKSTOP_FILE"
  shutdown -h now
}

shut_down() {
  # A TERM to the agent is the machine shutting down (a spot reclaim, a preemption, a stop from outside).
  # The job gets the TERM and a moment to write its checkpoints; it is interrupted, and its checkpoints
  # and outputs still go up before the report (finish_job). When the backstop shut it down, it timed out.
  trap '' TERM
  if [ -e "$BACKSTOP_FILE" ]; then
    STOPPED_BY=timeout
    note "the job outlived max_runtime_minutes: the backstop stops the machine"
  else
    STOPPED_BY=interrupt
    note "the machine is shutting down under the job"
  fi
  if [ -n "$JOB_PID" ]; then
    kill -TERM "$JOB_PID" 2>/dev/null
    wait "$JOB_PID"
    exit_code=$?
    ran_seconds=$((SECONDS - JOB_BEGAN))
  fi
  exit 143
}

upload_log() {
  # A snapshot, so the upload never reads a file that grows under it.
  cp "$LOG" "$ROOT/log-snapshot.txt" 2>/dev/null || return 0
  store_put "$ROOT/log-snapshot.txt" "$LOG_URI" >/dev/null 2>&1 || true
}

sync_checkpoints() {
  if [ -n "$CHECKPOINT_URI" ]; then
    store_sync "$ROOT/checkpoints" "$CHECKPOINT_URI" >>"$LOG" 2>&1 || note "checkpoint upload failed"
  fi
}

stage() {
  # What the job finds before setup starts; on failure STAGE_ERROR names the part of the spec.
  local i name uri dir
  STAGE_ERROR="the VM's job folders could not be made"
  # From scratch each time (a GCE startup script runs again after a reboot): code unpacks into an empty folder.
  chmod -R u+w "$ROOT/inputs" 2>/dev/null
  rm -rf "$ROOT/code" "$ROOT/inputs" "$ROOT/code.tar.gz"
  mkdir -p "$ROOT/code" "$ROOT/inputs" "$ROOT/outputs" "$ROOT/checkpoints" || return 1
  if [ -n "$CODE_URI" ]; then
    STAGE_ERROR="code_uri could not be downloaded"
    store_get "$CODE_URI" "$ROOT/code.tar.gz" >>"$LOG" 2>&1 || return 1
    STAGE_ERROR="code_uri could not be unpacked"
    unpack_code "$ROOT/code.tar.gz" "$CODE_SHA256" "$ROOT/code" >>"$LOG" 2>&1 || return 1
  fi
  for i in "${!INPUT_NAMES[@]}"; do
    name=${INPUT_NAMES[$i]}
    uri=${INPUT_URIS[$i]}
    dir="$ROOT/inputs/$name"
    STAGE_ERROR="inputs.$name could not be downloaded"
    mkdir -p "$dir" || return 1
    # A prefix becomes a folder of the objects below it, an object a folder holding that one file.
    if [ "${uri: -1}" = / ]; then
      store_sync "$uri" "$dir" >>"$LOG" 2>&1 || return 1
    else
      store_get "$uri" "$dir/${uri##*/}" >>"$LOG" 2>&1 || return 1
    fi
  done
  chmod -R a-w "$ROOT/inputs"
  if [ -n "$CHECKPOINT_URI" ]; then
    # A retried attempt starts from the checkpoints of the one before.
    STAGE_ERROR="the checkpoint could not be restored"
    store_restore "$CHECKPOINT_URI" "$ROOT/checkpoints" >>"$LOG" 2>&1 || return 1
  fi
  STAGE_ERROR=""
}

run_job() {
  # Setup and the command under one max-runtime timer, in the code folder.
  local kv
  local -a run
  RAN=1
  JOB_BEGAN=$SECONDS
  if [ -z "$IMAGE" ]; then
    # env -i: the job gets the script's PATH and HOME, its own env, its folders; nothing else of this shell.
    (cd "$ROOT/code" && exec timeout --kill-after=60 "$MAX_RUNTIME_SECONDS" env -i -- \
      "PATH=$PATH" "HOME=${HOME:-/root}" "${JOB_ENV[@]}" "JOBPLANE_INPUT_DIR=$ROOT/inputs" \
      "JOBPLANE_OUTPUT_DIR=$ROOT/outputs" "JOBPLANE_CHECKPOINT_DIR=$ROOT/checkpoints" "${JOB_ARGV[@]}") \
      >>"$LOG" 2>&1 </dev/null &
    wait_job "$!"
  else
    registry_login >>"$LOG" 2>&1 || note "registry login failed"
    # The image may run as another user: it writes its outputs and checkpoints all the same.
    chmod a+rwx "$ROOT/outputs" "$ROOT/checkpoints"
    run=(docker run --rm --name "$NATIVE_ID" --network host -v "$ROOT/inputs:$C_INPUTS:ro"
      -v "$ROOT/outputs:$C_OUTPUTS" -v "$ROOT/checkpoints:$C_CHECKPOINTS")
    if [ -n "$CODE_URI" ]; then run+=(-v "$ROOT/code:$C_CODE" --workdir "$C_CODE"); fi
    if [ "$GPUS" -gt 0 ]; then run+=(--gpus all); fi
    for kv in "${JOB_ENV[@]}"; do run+=(--env "$kv"); done
    run+=(--env "JOBPLANE_INPUT_DIR=$C_INPUTS" --env "JOBPLANE_OUTPUT_DIR=$C_OUTPUTS"
      --env "JOBPLANE_CHECKPOINT_DIR=$C_CHECKPOINTS" --entrypoint "${JOB_ARGV[0]}" "$IMAGE" "${JOB_ARGV[@]:1}")
    timeout --kill-after=60 "$MAX_RUNTIME_SECONDS" "${run[@]}" >>"$LOG" 2>&1 </dev/null &
    wait_job "$!"
    if [ "$exit_code" -eq 124 ] || [ "$exit_code" -eq 137 ]; then docker kill "$NATIVE_ID" >/dev/null 2>&1; fi
  fi
  ran_seconds=$((SECONDS - JOB_BEGAN))
}

finish_job() {
  # Checkpoints and outputs go up before the report, for failed jobs too: a job seen ending has them.
  trap - EXIT
  # A shutdown that comes now waits for the uploads and the report (they are what it would lose).
  trap '' TERM
  stop "${CHECKPOINT_SYNCER:-}"
  stop "${HEARTBEATER:-}"
  if [ -n "$RAN" ]; then sync_checkpoints; fi
  if [ -n "$ARTIFACTS_URI" ] && [ -d "$ROOT/outputs" ]; then
    store_sync "$ROOT/outputs" "$ARTIFACTS_URI" >>"$LOG" 2>&1 || note "outputs could not be uploaded"
  fi
  note "exit status ${exit_code:-none}"
  stop "${LOG_SHIPPER:-}"
  write_report "$REPORT_FILE" "$exit_code" "$ran_seconds" "$REASON"
  # The whole log goes up before the exit report: a job seen ending has its complete log.
  upload_log
  deliver_report
  trap - TERM
  power_off
  exit 0
}

run_agent() {
  note "job $JOB_ID ($NATIVE_ID) starting at $STARTED_AT"
  trap shut_down TERM
  every "$LOG_INTERVAL" upload_log >/dev/null 2>&1 &
  LOG_SHIPPER=$!
  if stage; then
    every "$CHECKPOINT_INTERVAL" sync_checkpoints >/dev/null 2>&1 &
    CHECKPOINT_SYNCER=$!
    run_job
  else
    REASON="staging failed: $STAGE_ERROR"
    note "$REASON"
  fi
}
"""

# The heartbeat, format v1, for a VM whose control plane reads it from the object store (EC2). Every
# HEARTBEAT_INTERVAL seconds it samples the busiest GPU (nvidia-smi, when the machine has one) and uploads
# heartbeat.json to HEARTBEAT_URI; its gpu_percent is the busiest sample of the last IDLE_SAMPLES, so "under
# the threshold for the whole window" is one comparison (parse_heartbeat). Its pid is in $ROOT/heartbeat.pid.
HEARTBEAT_SH = r"""
GPU_SAMPLES=()
gpu_sample() {
  # The busiest GPU now, or nothing (no nvidia-smi, or a reading that is not a number).
  local busiest
  busiest=$(nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits 2>/dev/null | tr -d ' ' |
    sort -n | tail -n 1)
  if [[ $busiest =~ ^[0-9]+([.][0-9]+)?$ ]]; then echo "$busiest"; fi
}

heartbeat_json() {
  local sample peak=null
  sample=$(gpu_sample)
  if [ -n "$sample" ]; then GPU_SAMPLES+=("$sample"); fi
  if [ "${#GPU_SAMPLES[@]}" -gt "$IDLE_SAMPLES" ]; then GPU_SAMPLES=("${GPU_SAMPLES[@]:1}"); fi
  if [ "${#GPU_SAMPLES[@]}" -gt 0 ]; then peak=$(printf '%s\n' "${GPU_SAMPLES[@]}" | sort -n | tail -n 1); fi
  printf '{"v": 1, "job_id": "%s", "attempt": %d, "at": "%s", "interval_seconds": %d, "gpu_percent": %s, ' \
    "$JOB_ID" "$ATTEMPT" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$HEARTBEAT_INTERVAL" "$peak"
  printf '"gpu_samples": %d}\n' "${#GPU_SAMPLES[@]}"
}

send_heartbeat() {
  heartbeat_json >"$ROOT/heartbeat.tmp" && mv -f "$ROOT/heartbeat.tmp" "$ROOT/heartbeat.json"
  store_put "$ROOT/heartbeat.json" "$HEARTBEAT_URI" >/dev/null 2>&1 || true
}

start_heartbeat() {
  mkdir -p "$ROOT"
  (
    send_heartbeat
    every "$HEARTBEAT_INTERVAL" send_heartbeat
  ) >/dev/null 2>&1 &
  HEARTBEATER=$!
  echo "$HEARTBEATER" >"$ROOT/heartbeat.pid"
}
"""

#: the job's code, inputs, outputs and checkpoints on a VM: below ROOT
VM_ROOT = "/var/lib/jobplane"
#: seconds between uploads of $JOBPLANE_CHECKPOINT_DIR while the job runs (and once when it ends)
CHECKPOINT_INTERVAL = 60
INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class VmContract:
    """The job contract's values for one VM attempt; vm_header() writes them as quoted assignments."""

    job_id: str
    native_id: str
    command: Sequence[str]
    env: Sequence[tuple[str, str]]
    max_runtime_seconds: int
    report_uri: str
    log_uri: str
    scheme: str  # "s3" or "gs": every URI below must be one of the VM's own object store
    image: str | None = None
    gpus: int = 0
    setup: Sequence[Sequence[str]] = ()
    code_uri: str | None = None
    code_sha256: str | None = None
    inputs: Sequence[tuple[str, str]] = ()
    artifacts_uri: str | None = None
    checkpoint_uri: str | None = None
    root: str = VM_ROOT
    log_interval_seconds: int = 60
    checkpoint_interval_seconds: int = CHECKPOINT_INTERVAL


def vm_header(c: VmContract) -> list[str]:
    """The quoted assignments VM_AGENT reads; refuses values the agent could not keep as data."""
    from chalicelib.backends.shell import array, assign, env_array

    if not c.command:
        raise ValueError("a VM job needs a command")
    prefix = f"{c.scheme}://"
    for field, uri in (
        ("code_uri", c.code_uri),
        ("artifacts_uri", c.artifacts_uri),
        ("checkpoint_uri", c.checkpoint_uri),
        *((f"inputs.{name}", uri) for name, uri in c.inputs),
    ):
        if uri and not uri.startswith(prefix):
            raise ValueError(f"{field}: {uri!r} is not a {prefix} URI")
    for name, uri in c.inputs:
        if not INPUT_NAME.match(name):
            raise ValueError(f"inputs: {name!r} is not an input name ([A-Za-z0-9._-], starting alphanumeric)")
        if not uri.endswith("/") and uri.rsplit("/", 1)[-1] in ("", ".", ".."):
            raise ValueError(f"inputs.{name}: {uri!r} names no object")
    for field, uri in (("artifacts_uri", c.artifacts_uri), ("checkpoint_uri", c.checkpoint_uri)):
        if uri and not uri.endswith("/"):
            raise ValueError(f"{field} must end with /")
    if c.code_uri and not c.code_sha256:
        raise ValueError("code_uri comes with code_sha256")
    return [
        assign("JOB_ID", c.job_id),
        assign("NATIVE_ID", c.native_id),
        assign("ATTEMPT", script_attempt(c.job_id, c.native_id)),
        assign("IMAGE", c.image or ""),
        assign("GPUS", int(c.gpus)),
        assign("MAX_RUNTIME_SECONDS", int(c.max_runtime_seconds)),
        assign("ROOT", c.root),
        assign("REPORT_URI", c.report_uri),
        assign("LOG_URI", c.log_uri),
        assign("LOG_INTERVAL", int(c.log_interval_seconds)),
        assign("CHECKPOINT_INTERVAL", int(c.checkpoint_interval_seconds)),
        assign("CODE_URI", c.code_uri or ""),
        assign("CODE_SHA256", c.code_sha256 or ""),
        assign("ARTIFACTS_URI", c.artifacts_uri or ""),
        assign("CHECKPOINT_URI", c.checkpoint_uri or ""),
        array("INPUT_NAMES", [name for name, _ in c.inputs]),
        array("INPUT_URIS", [uri for _, uri in c.inputs]),
        array("JOB_ARGV", job_argv(c.setup, c.command)),
        env_array("JOB_ENV", dict(c.env)),
    ]


def vm_script(head: Sequence[str], c: VmContract, cloud_part: str) -> str:
    """One VM script: the cloud's header lines, the contract's, the shared functions, the cloud's part."""
    lines = [
        "#!/bin/bash",
        "# Generated by jobplane. Every job value is a single-quoted assignment below; nothing is evaluated.",
        "# SC2016: a $ or backtick inside those quotes is the job's data, meant to stay unexpanded.",
        "# shellcheck disable=SC2016",
        "set -uo pipefail",
        *vm_header(c),
        *head,
    ]
    body = SHELL_FUNCTIONS + UNPACK_CODE_SH + VM_AGENT + cloud_part
    return "\n".join([*lines, *_compact(body)]) + "\n"


def _compact(body: str) -> list[str]:
    """The body without its comment lines, blank lines and indentation (no line of it continues a quoted string
    or a here-document, where that would matter): EC2 user data has 16 KiB for everything."""
    return [line.strip() for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def step_words(setup: Sequence[Sequence[str]], command: Sequence[str]) -> list[str]:
    """Setup steps then the command as RUN_STEPS_SH's arguments: each argument list after its length."""
    words: list[str] = []
    for step in (*setup, command):
        if not step:
            raise ValueError("a setup step or command is an argument list of at least one word")
        words += [str(len(step)), *step]
    return words


def job_argv(setup: Sequence[Sequence[str]], command: Sequence[str]) -> list[str]:
    """What a VM runs as the job: the command itself, or, with setup, a fixed /bin/sh runner taking the
    steps as its arguments (data, never part of the script). A first word with = also goes through the
    runner, so env(1) cannot take the command for one of the job's variables."""
    if not setup and command and "=" not in command[0]:
        return list(command)
    return ["/bin/sh", "-c", RUN_STEPS_SH.lstrip("\n"), "jobplane", *step_words(setup, command)]


def script_attempt(job_id: str, name: str) -> int:
    """The attempt a VM script reports, from our name; refuses names that would not be safe JSON words."""
    parsed = parse_native_name(name)
    if parsed is None or parsed[0] != job_id:
        raise ValueError(f"native_id {name!r} is not jp-<job_id>[-a<attempt>] for job {job_id!r}")
    return parsed[1]


class _Malformed(ValueError):
    """A report that cannot be trusted; the message names the field."""


def parse_report(raw: bytes | str | dict[str, Any] | None, *, job_id: str, attempt: int) -> Observation | None:
    """One exit report -> Observation, for job `job_id` attempt `attempt`.

    None when there is no report or it is another attempt's (a stray file is not this attempt's end).
    A report that cannot be read is a FAILED / backend_error observation naming what is wrong, never
    an exception and never a SUCCEEDED."""
    if raw is None:
        return None
    try:
        data = _decode(raw)
        owner = (data.get("job_id"), data.get("attempt"))
        if owner != (job_id, attempt):
            log.warning("ignoring an exit report of job %s attempt %s read for %s attempt %s", *owner, job_id, attempt)
            return None
        return _observe(data)
    except _Malformed as exc:
        return Observation(
            status=JobStatus.FAILED,
            native_status="CORRUPT",
            job_id=job_id,
            attempt=attempt,
            reason=f"unreadable exit report: {exc}",
            failure_kind=FailureKind.BACKEND_ERROR,
        )


def _decode(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(raw, dict):
        data = raw
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Malformed(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _Malformed("not a JSON object")
    if data.get("v") != REPORT_VERSION:
        raise _Malformed(f"v: {data.get('v')!r} is not a version this control plane reads (expects {REPORT_VERSION})")
    return data


def _observe(data: dict[str, Any]) -> Observation:
    try:
        state = ExitState(data.get("state"))
    except ValueError:
        known = ", ".join(s.value for s in ExitState)
        raise _Malformed(f"state: {data.get('state')!r} is not one of {known}") from None
    code = data.get("exit_code")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255):
        raise _Malformed(f"exit_code: {code!r} is not an integer 0-255 or null")
    if state is ExitState.SUCCEEDED and code != 0:
        raise _Malformed(f"state: SUCCEEDED with exit_code {code!r}")
    reason = data.get("reason") or ""
    if not isinstance(reason, str):
        raise _Malformed("reason: not a string")
    limit = data.get("max_runtime_seconds")
    times = {}
    for field in ("started_at", "finished_at"):
        try:
            times[field] = parse_iso(data.get(field))
        except (TypeError, ValueError, AttributeError):
            raise _Malformed(f"{field}: {data.get(field)!r} is not an ISO 8601 time") from None
    status, kind = OUTCOMES[state]
    return Observation(
        status=status,
        native_status=state.value,
        job_id=data["job_id"],
        attempt=data["attempt"],
        reason=reason or exit_reason(state, code, limit if isinstance(limit, int) else None),
        failure_kind=kind,
        exit_code=code,
        at=times["finished_at"],
        started_at=times["started_at"],
    )


# --- dev VMs -----------------------------------------------------------------------------------------
# The GPU samplers the VM scripts use, "" on a machine without GPUs: gpu_now the mean utilisation over the
# machine's GPUs (a job VM's load), gpu_busiest the busiest GPU's (a dev VM is idle only when every GPU is).
GPU_SAMPLE_SH = r"""
gpu_now() {
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits 2>/dev/null \
    | awk '{ s += $1; n++ } END { if (n) printf "%.1f", s / n }'
}
gpu_busiest() {
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits 2>/dev/null \
    | awk 'n == 0 || $1 > m { m = $1 } { n++ } END { if (n) printf "%.1f", m }'
}
"""

# The dev VM agent in bash: every SAMPLE_SECONDS it publishes its heartbeat and the busiest GPU sample of
# the last IDLE_MINUTES samples (publish_usage PERCENT|"" TIME, defined by the cloud's part), and powers the
# machine off itself (power_off REASON) once every GPU sample of the window is under 1 % or it has run
# MAX_SECONDS since this boot. The control plane's reaper applies the same rules from outside
# (chalicelib.devvms.decide_devvm). A machine without nvidia-smi is never judged idle here.
DEVVM_AGENT_SH = r"""
devvm_watch() {
  local began=$SECONDS samples=() gpu busiest
  while true; do
    gpu=$(gpu_busiest)
    if [ -n "$gpu" ]; then samples+=("$gpu"); fi
    if [ "${#samples[@]}" -gt "$IDLE_MINUTES" ]; then samples=("${samples[@]:1}"); fi
    busiest=""
    if [ "${#samples[@]}" -gt 0 ]; then
      busiest=$(printf '%s\n' "${samples[@]}" | sort -n | tail -n 1)
    fi
    publish_usage "$busiest" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if [ $((SECONDS - began)) -ge "$MAX_SECONDS" ]; then
      power_off "reached max_hours"
      return 0
    fi
    if [ "${#samples[@]}" -ge "$IDLE_MINUTES" ] && awk -v g="$busiest" 'BEGIN { exit !(g < 1) }'; then
      power_off "GPU idle for ${IDLE_MINUTES} min"
      return 0
    fi
    sleep "$SAMPLE_SECONDS"
  done
}
"""


def devvm_script(*, idle_minutes: int, max_hours: float, cloud_part: str, sample_seconds: int = 60) -> str:
    """A dev VM's boot script: the watch loop above with its limits (numbers only: nothing else is
    interpolated) and the cloud's publish_usage and power_off."""
    from chalicelib.backends.shell import assign

    head = [
        assign("IDLE_MINUTES", int(idle_minutes)),
        assign("MAX_SECONDS", int(float(max_hours) * 3600)),
        assign("SAMPLE_SECONDS", int(sample_seconds)),
    ]
    body = "\n".join([GPU_SAMPLE_SH.strip(), DEVVM_AGENT_SH.strip(), cloud_part.strip(), "devvm_watch"])
    return "#!/bin/bash\nset -u\n" + "\n".join(head) + "\n" + body + "\n"


def parse_heartbeat(
    raw: bytes | str | None, *, job_id: str, attempt: int, received_at, window_minutes: float
) -> Utilization | None:
    """One heartbeat.json (HEARTBEAT_SH) -> Utilization over the idle window.

    `received_at` is when the object store took it (S3's LastModified): the heartbeat's time, whatever the
    VM's clock says. No object is no heartbeat (Utilization(None, None)); an unreadable one, or another
    attempt's, is None (the reaper cannot tell, and leaves the idle rule out). gpu_percent is the busiest
    sample of the window, and only once the samples cover the window (None before, or without a GPU)."""
    if raw is None:
        return Utilization(None, None)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        log.warning("unreadable heartbeat of %s attempt %s", job_id, attempt)
        return None
    if not isinstance(data, dict) or data.get("v") != HEARTBEAT_VERSION:
        log.warning("heartbeat of %s attempt %s is not format v%d", job_id, attempt, HEARTBEAT_VERSION)
        return None
    if (data.get("job_id"), data.get("attempt")) != (job_id, attempt):
        log.warning(
            "ignoring a heartbeat of %s attempt %s read for %s", data.get("job_id"), data.get("attempt"), job_id
        )
        return None
    gpu, samples, interval = data.get("gpu_percent"), data.get("gpu_samples"), data.get("interval_seconds")
    numbers = (gpu is None or _number(gpu)) and _count(samples) and _count(interval) and interval > 0
    if not numbers or (gpu is not None and not 0 <= gpu <= 100):
        log.warning("heartbeat of %s attempt %s has bad numbers: %r", job_id, attempt, data)
        return None
    covered = samples * interval >= window_minutes * 60
    return Utilization(float(gpu) if gpu is not None and covered else None, received_at)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
