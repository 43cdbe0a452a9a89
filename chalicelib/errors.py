"""One exception hierarchy for jobplane; SDK errors are translated at the backend edge."""

from __future__ import annotations

from typing import Any


class JobplaneError(Exception):
    """Base of every error jobplane raises on purpose; carries its HTTP status and code."""

    STATUS_CODE = 500
    CODE = "internal_error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.CODE, "message": self.message, "details": self.details}}


# --- configuration ---------------------------------------------------------------


class ConfigError(JobplaneError):
    """A setting is missing or malformed; the message names the variable."""

    CODE = "config_error"


# --- client errors -----------------------------------------------------------------


class ValidationError(JobplaneError):
    """The request is malformed; details name each field and what would be valid."""

    STATUS_CODE = 400
    CODE = "invalid_request"


class AuthenticationError(JobplaneError):
    """No bearer token, or one that matches no user."""

    STATUS_CODE = 401
    CODE = "unauthenticated"


class ForbiddenError(JobplaneError):
    """The caller is signed in but the route is an admin's (budgets)."""

    STATUS_CODE = 403
    CODE = "forbidden"


class BudgetExceededError(ValidationError):
    """A submission would take a monthly budget past its limit, and the budget refuses (on_exceed: refuse)."""

    CODE = "budget_exceeded"


class NotFoundError(JobplaneError):
    """No such resource, or one the caller may not see (never tell the two apart)."""

    STATUS_CODE = 404
    CODE = "not_found"


class ConflictError(JobplaneError):
    """The resource is in a state that forbids the request (e.g. cancel of a finished job)."""

    STATUS_CODE = 409
    CODE = "conflict"


class IdempotencyMismatchError(ConflictError):
    """An Idempotency-Key was reused with a different request body."""

    CODE = "idempotency_key_reused"


# --- store -----------------------------------------------------------------------


class StaleStateError(JobplaneError):
    """A guarded write lost a race: the record is no longer in the state it was read in."""

    STATUS_CODE = 409
    CODE = "stale_state"


class CapacityExhaustedError(JobplaneError):
    """A capacity pool of the quota-aware queue is full; the job waits in QUEUED."""

    STATUS_CODE = 409
    CODE = "capacity_exhausted"

    def __init__(self, pool: str, message: str | None = None) -> None:
        super().__init__(message or f"capacity pool {pool} is full")
        self.pool = pool


class AlreadyExistsError(JobplaneError):
    """A create-only write found the record already there."""

    STATUS_CODE = 409
    CODE = "already_exists"


class ConditionFailedError(JobplaneError):
    """A conditional write found the record not in the state it required; the store method says what that
    means (a taken id, a moved status). `reasons` holds a cancelled transaction's per-item codes, in order."""

    STATUS_CODE = 409
    CODE = "condition_failed"

    def __init__(self, message: str, reasons: tuple[str | None, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons


# Deliberately outside JobplaneError: handlers drop or answer a JobplaneError (an unusable upload, a 4xx),
# and a database outage must instead propagate so the platform delivers the event again or answers 500.
class StoreError(Exception):
    """The database failed a request (throttled, unreachable, a missing table); `retryable` says if trying
    again may help, `code` is the database's own error code when it gave one, and `conflict` that a
    concurrent transaction held an item (the store retries those itself, with jitter)."""

    def __init__(
        self, message: str, *, code: str | None = None, retryable: bool = False, conflict: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.conflict = conflict


# --- backends ----------------------------------------------------------------------


class BackendError(JobplaneError):
    """A compute backend refused or failed a request; `retryable` says if trying again may help."""

    STATUS_CODE = 502
    CODE = "backend_error"
    failure_kind = "backend_error"

    def __init__(self, message: str, *, retryable: bool = False, details=None) -> None:
        super().__init__(message, details)
        self.retryable = retryable


class CapacityError(BackendError):
    """The provider has no capacity of the requested kind right now (spot or on-demand)."""

    CODE = "no_capacity"
    failure_kind = "no_capacity"


class QuotaError(BackendError):
    """The account's quota for the requested resource is exhausted."""

    CODE = "quota_exceeded"
    failure_kind = "quota"


class BackendAuthError(BackendError):
    """The control plane's credentials lack a permission the backend needs."""

    CODE = "backend_forbidden"


class ThrottledError(BackendError):
    """The provider throttled the request; always retryable."""

    CODE = "throttled"

    def __init__(self, message: str, details=None) -> None:
        super().__init__(message, retryable=True, details=details)


class BackendValidationError(BackendError):
    """The provider rejected the request's content (a bad image URI, an unknown instance type)."""

    CODE = "backend_rejected"
    failure_kind = "user_error"


class UnsupportedError(ValidationError):
    """The chosen backend cannot run this spec (e.g. a GPU job on Fargate)."""

    CODE = "unsupported"
