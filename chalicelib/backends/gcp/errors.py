"""google.api_core / google.auth errors -> jobplane's hierarchy, in one table, for every GCP backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from chalicelib.errors import (
    BackendAuthError,
    BackendError,
    BackendValidationError,
    CapacityError,
    QuotaError,
    ThrottledError,
)

# Words of a Google error's message or ErrorInfo reason (lowercased) that say what really happened.
CAPACITY = ("zone_resource_pool_exhausted", "does not have enough resources", "stockout", "resource pool")
QUOTA = ("quota",)
THROTTLING = ("rate limit", "rate_limit", "too many requests")
ANY = ()
# First match wins: (google.api_core.exceptions class, words one of which must appear or ANY, error,
# retryable or None for the error's own default). HTTP statuses in the comments are the classes' codes.
TABLE: tuple[tuple[str, tuple[str, ...], type[BackendError], bool | None], ...] = (
    ("GoogleAPICallError", CAPACITY, CapacityError, True),
    # Quota before throttling: ResourceExhausted is a TooManyRequests (429) in google.api_core.
    ("TooManyRequests", QUOTA, QuotaError, None),
    ("Forbidden", QUOTA, QuotaError, None),  # 403 with a quota reason (e.g. GPUS_ALL_REGIONS)
    ("TooManyRequests", ANY, ThrottledError, None),  # 429
    ("GoogleAPICallError", THROTTLING, ThrottledError, None),
    ("Unauthenticated", ANY, BackendAuthError, None),  # 401
    ("Forbidden", ANY, BackendAuthError, None),  # 403
    ("BadRequest", ANY, BackendValidationError, None),  # 400, FailedPrecondition too
    ("OutOfRange", ANY, BackendValidationError, None),  # 400
    ("ServerError", ANY, BackendError, True),  # 5xx, DeadlineExceeded (504) too
    ("Aborted", ANY, BackendError, True),  # 409: a concurrent change, worth one more try
    ("GoogleAPICallError", ANY, BackendError, None),  # 404 (when not handled), 409 Conflict, ...
)


def _text(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or ""
    return f"{exc} {reason}".lower()


def translate(exc: Exception, action: str) -> BackendError:
    """One Google SDK exception -> the jobplane error; the provider's words stay in the message."""
    from google.api_core import exceptions as g
    from google.auth import exceptions as auth

    message = f"{action}: {getattr(exc, 'message', None) or exc}"
    text = _text(exc)
    for cls, words, kind, retryable in TABLE:
        if isinstance(exc, getattr(g, cls)) and (not words or any(w in text for w in words)):
            return kind(message) if retryable is None else kind(message, retryable=retryable)
    if isinstance(exc, auth.GoogleAuthError):
        return BackendAuthError(message)
    if isinstance(exc, OSError):  # connection refused / reset: the request may not have arrived
        return BackendError(message, retryable=True)
    return BackendError(message)


@contextmanager
def map_gcp_errors(action: str) -> Iterator[None]:
    """Translate Google SDK errors raised inside the block; NotFound is left for the caller to handle.

    google.api_core.exceptions (~0.1 s with its gRPC status types) is imported only once something failed:
    a block that succeeds does not pay for it."""
    try:
        yield
    except Exception as exc:
        from google.api_core import exceptions as g
        from google.auth import exceptions as auth

        if isinstance(exc, g.NotFound):
            raise
        if isinstance(exc, (g.GoogleAPICallError, auth.GoogleAuthError, ConnectionError)):
            raise translate(exc, action) from exc
        raise
