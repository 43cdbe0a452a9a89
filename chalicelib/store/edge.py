"""What every DynamoDB store shares: one translation of pynamodb/botocore errors, one botocore session, table setup."""

from __future__ import annotations

import functools
import inspect
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from chalicelib.errors import ConditionFailedError, JobplaneError, StoreError

# pynamodb and botocore are imported where used: a store's interface and in-memory twin (and so
# auth, the notifier, the service) load without them.
if TYPE_CHECKING:
    from pynamodb.models import Model

    from chalicelib.config import Settings

CONDITION_FAILED = "ConditionalCheckFailedException"
TRANSACTION_CANCELLED = "TransactionCanceledException"
# Codes after which the same request may succeed: throttling, transient server faults, a concurrent transaction.
# The last three are the per-item reasons of a cancelled transaction.
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
        "TransactionInProgressException",
        "TransactionConflict",
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
    }
)


# Per-item reasons of a cancelled transaction that mean "another transaction held the item", not "your
# condition failed": the same request may succeed once the other one is done.
CONFLICT_REASONS = frozenset({"TransactionConflict"})
# Codes of a single write that met an item inside someone else's transaction.
CONFLICT_CODES = frozenset({"TransactionConflictException", "TransactionInProgressException"})
CONFLICT_TRIES = 5
CONFLICT_BASE_SECONDS = 0.01
CONFLICT_CAP_SECONDS = 0.2


def translate(exc: Exception) -> Exception:
    """The chalicelib.errors type for a pynamodb or botocore error (any other exception is returned as is)."""
    import botocore.exceptions as boto
    from pynamodb.exceptions import PynamoDBException

    if isinstance(exc, PynamoDBException):
        cause = exc.cause
    elif isinstance(exc, (boto.BotoCoreError, boto.ClientError)):
        cause = exc
    else:
        return exc
    code = cause.response.get("Error", {}).get("Code") if isinstance(cause, boto.ClientError) else None
    message = f"DynamoDB: {exc}"
    if code == CONDITION_FAILED:
        return ConditionFailedError(message)
    if code == TRANSACTION_CANCELLED:
        reasons = tuple(r.code if r else None for r in getattr(exc, "cancellation_reasons", None) or ())
        # A failed condition wins over a conflict in the same answer: retrying it would only fail again.
        if "ConditionalCheckFailed" in reasons:
            return ConditionFailedError(message, reasons)
        return StoreError(
            message,
            code=code,
            retryable=bool(RETRYABLE_CODES.intersection(reasons)),
            conflict=bool(CONFLICT_REASONS.intersection(reasons)),
        )
    if code in CONFLICT_CODES:
        return StoreError(message, code=code, retryable=True, conflict=True)
    if code is not None:
        return StoreError(message, code=code, retryable=code in RETRYABLE_CODES)
    # No code: DynamoDB was never reached (refused, reset, timed out: retryable) or the SDK itself refused.
    return StoreError(message, retryable=isinstance(cause, (boto.ConnectionError, boto.HTTPClientError)))


@contextmanager
def dynamo_errors(*, conditional: JobplaneError | None = None, invalid: JobplaneError | None = None) -> Iterator[None]:
    """Raise pynamodb/botocore errors from the block as chalicelib.errors types.

    `conditional` replaces the ConditionFailedError of a failed condition and `invalid` the StoreError of a
    request DynamoDB found malformed (ValidationException), for the methods where those have a meaning.
    """
    try:
        yield
    except Exception as exc:
        error = translate(exc)
        if error is exc:
            raise
        if conditional is not None and isinstance(error, ConditionFailedError):
            raise conditional from None
        if invalid is not None and isinstance(error, StoreError) and error.code == "ValidationException":
            raise invalid from None
        raise error from exc


def retry_conflicts(
    write: Callable[[], Any],
    *,
    tries: int = CONFLICT_TRIES,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Run `write` (which raises chalicelib.errors types) again while DynamoDB cancels it for a conflict with
    a concurrent transaction, up to `tries` times with full-jitter backoff; any other error leaves at once.

    botocore's own retries do not cover a cancelled transaction (its code is TransactionCanceledException,
    whatever the reasons), so racing dispatchers on real DynamoDB would otherwise see it raised.
    """
    for attempt in range(tries):
        try:
            return write()
        except StoreError as exc:
            if not exc.conflict or attempt + 1 == tries:
                raise
            cap = min(CONFLICT_CAP_SECONDS, CONFLICT_BASE_SECONDS * 2 ** (attempt + 1))
            sleep(random.uniform(CONFLICT_BASE_SECONDS, cap))  # noqa: S311 - jitter, not a secret
    raise AssertionError("unreachable: the last try returns or raises")  # pragma: no cover


def _translated(method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(*args, **kwargs):
            with dynamo_errors():
                yield from method(*args, **kwargs)

        return generator

    @functools.wraps(method)
    def call(*args, **kwargs):
        with dynamo_errors():
            return method(*args, **kwargs)

    return call


class DynamoStore:
    """Base of the DynamoDB stores: every public method a subclass defines is wrapped in `dynamo_errors()`,
    so no pynamodb or botocore exception leaves a store; a method adds its own `dynamo_errors(conditional=...)`
    where a failed condition has a meaning."""

    models: dict[str, type[Model]]
    # Model name -> its DynamoDB TTL attribute (epoch seconds), for deploy/aws/resources.py.
    TTL_ATTRIBUTES: dict[str, str] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(member):
                setattr(cls, name, _translated(member))

    def create_tables(self) -> set[str]:
        """Create whatever tables of this store are missing (tests, the local stack); returns the kinds created."""
        created = set()
        with dynamo_errors():
            for kind, model in self.models.items():
                if not model.exists():
                    model.create_table(wait=True, billing_mode="PAY_PER_REQUEST")
                    created.add(kind)
        return created


def get_or_none(model: type[Model], hash_key: str, **kwargs: Any) -> Any:
    """The item with this key, or None (pynamodb's DoesNotExist stays here)."""
    from pynamodb.exceptions import DoesNotExist

    try:
        return model.get(hash_key, **kwargs)
    except DoesNotExist:
        return None


def created_index(index_name: str, hash_key: str, range_key: str = "sk") -> type:
    """A fresh GSI class: `hash_key` (a string attribute of the item) then its `sk` (creation time and id), every
    attribute projected. The jobs and endpoints tables list by owner, by all and by the sparse active key this
    way; each model makes its own classes, since pynamodb binds an index's Meta to one model. `range_key`
    names another sort attribute (the jobs table's `changed`: the time of the last write)."""
    from pynamodb.attributes import UnicodeAttribute
    from pynamodb.indexes import AllProjection, GlobalSecondaryIndex

    meta = type("Meta", (), {"index_name": index_name, "projection": AllProjection()})
    namespace = {"Meta": meta, hash_key: UnicodeAttribute(hash_key=True), range_key: UnicodeAttribute(range_key=True)}
    return type(f"{hash_key.title().replace('_', '')}Index", (GlobalSecondaryIndex,), namespace)


def table_meta(settings: Settings) -> type:
    """The Meta every model's own Meta extends: this deployment's region and endpoint, on-demand billing."""

    class Meta:
        region = settings.region
        host = settings.aws_endpoint_url
        billing_mode = "PAY_PER_REQUEST"
        max_retry_attempts = 5  # botocore "standard" retry mode with this many retries

    return Meta


_loader_lock = threading.Lock()
_shared_loader: list[Any] = []


def share_botocore_loader() -> None:
    """Every pynamodb connection in this process on the container's one botocore session.

    pynamodb opens a botocore session per model (per thread) and a client per connection; each new
    session parses the DynamoDB service description again (0.1-0.2 s per table on a cold Lambda) and
    resolves credentials again. The shared session parses once; each connection still makes its own
    client (under the session's lock: sessions are not thread-safe), so each table keeps its own pool.
    """
    import pynamodb.connection.base as pynamodb_base

    from chalicelib.aws_session import SharedSession

    with _loader_lock:
        if _shared_loader:
            return
        _shared_loader.append(SharedSession())
        pynamodb_base.get_session = lambda: _shared_loader[0]
