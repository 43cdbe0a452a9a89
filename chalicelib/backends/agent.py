"""The VM agent contract: one exit-report format, one table of exit rules, one parser for every backend."""

from __future__ import annotations

import json
import logging
import signal
from enum import Enum
from typing import Any

from chalicelib.backends.base import Observation, parse_native_name
from chalicelib.jobs.model import FailureKind, JobStatus, native_name, parse_iso

log = logging.getLogger(__name__)

REPORT_VERSION = 1


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
# so every value it prints into JSON is a number, a fixed word or a jobplane-made name.
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
  # $1: file, $2: the command's exit status, $3: seconds it ran. Written whole, then moved into place.
  local state
  state=$(report_state "$2" "$3")
  printf '{"v": 1, "job_id": "%s", "attempt": %d, "native_name": "%s", "state": "%s", "exit_code": %d, ' \
    "$JOB_ID" "$ATTEMPT" "$NATIVE_ID" "$state" "$2" >"$1.tmp"
  printf '"reason": "", "max_runtime_seconds": %d, "started_at": "%s", "finished_at": "%s"}\n' \
    "$MAX_RUNTIME_SECONDS" "$STARTED_AT" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$1.tmp" && mv -f "$1.tmp" "$1"
}
"""


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
