"""The SDK's exceptions: one class per kind of failure, mapped once from the API's error codes."""

from __future__ import annotations

from typing import Any


class JobplaneError(Exception):
    """Base of every error the SDK raises; `message` is one line, `hint` says what to do when known."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint


# --- not the API's answer ---------------------------------------------------------------


class ConnectionFailed(JobplaneError):
    """The API did not answer (refused, unresolvable, timed out)."""


class NotConfigured(JobplaneError):
    """No API address or token was found (arguments, environment, config file, local stack)."""


class SpecError(JobplaneError):
    """A spec file cannot be read or parsed on this side (missing, a folder, bad YAML, a duplicate key)."""


class AmbiguousJob(JobplaneError):
    """A prefix or a name matches more than one job; `candidates` are their ids."""

    def __init__(self, ref: str, candidates: list[str]) -> None:
        self.candidates = candidates
        shown = ", ".join(candidates[:8]) + (" ..." if len(candidates) > 8 else "")
        super().__init__(f"{ref!r} names {len(candidates)} jobs: {shown}", "give more of the id")


class WaitTimeout(JobplaneError):
    """wait() gave up; the job keeps running (`job` is its last state)."""

    def __init__(self, job: Any, timeout: float) -> None:
        self.job = job
        super().__init__(f"job {job.job_id} still {job.status} after {timeout:g}s (it keeps running)")


# --- the API's error answers ------------------------------------------------------------


class APIError(JobplaneError):
    """An error answer: `status`, the API's `code`, its `message` and per-field `details`."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        err = body.get("error", {}) if isinstance(body, dict) else {}
        err = err if isinstance(err, dict) else {}
        self.code: str = err.get("code") or f"http_{status}"
        self.details: list[dict[str, Any]] = [d for d in err.get("details") or [] if isinstance(d, dict)]
        text = err.get("message") or (str(body)[:300] if body else f"HTTP {status}")
        lines = [f"{d.get('field')}: {d.get('message')}" for d in self.details]
        super().__init__(f"HTTP {status}: {text}" + "".join(f"\n  - {line}" for line in lines))


class InvalidRequest(APIError):
    """400: the request (a spec, a parameter) is not valid; `details` name each field."""


class Unauthenticated(APIError):
    """401: no token, or one that is unknown or revoked."""

    hint = "check --token / $JOBPLANE_TOKEN (see `jobplane token create`)"


class Forbidden(APIError):
    """403: the token is valid but may not do this."""


class NotFound(APIError):
    """404: no such job, endpoint or token (another user's look the same)."""


class Conflict(APIError):
    """409: the resource is in a state that forbids this (terminal already, a reused idempotency key ...)."""


class PayloadTooLarge(APIError):
    """413: the body is above the limit."""


class BackendFailed(APIError):
    """502/503: the compute backend (or the endpoint's handler: code `model_error`) refused or failed."""


class ServerError(APIError):
    """500 and anything else unexpected: a bug on the server side."""


# The API's codes first (they are precise), the status otherwise.
_BY_CODE: dict[str, type[APIError]] = {
    "invalid_request": InvalidRequest,
    "unsupported": InvalidRequest,
    "unauthenticated": Unauthenticated,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "idempotency_key_reused": Conflict,
    "stale_state": Conflict,
    "already_exists": Conflict,
    "condition_failed": Conflict,
    "capacity_exhausted": Conflict,
    "payload_too_large": PayloadTooLarge,
    "backend_error": BackendFailed,
    "backend_forbidden": BackendFailed,
    "backend_rejected": BackendFailed,
    "no_capacity": BackendFailed,
    "quota_exceeded": BackendFailed,
    "throttled": BackendFailed,
    "model_error": BackendFailed,
    "internal_error": ServerError,
}
_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    405: InvalidRequest,
    409: Conflict,
    413: PayloadTooLarge,
    415: InvalidRequest,
    502: BackendFailed,
    503: BackendFailed,
}


def api_error(status: int, body: Any) -> APIError:
    """The exception for an error answer: by the API's code when it names one, else by status."""
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(status, body)
