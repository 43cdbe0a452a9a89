"""The DynamoDB stores' error edge: one translation table, and no pynamodb or botocore error leaves a store."""

from __future__ import annotations

import inspect
import uuid
from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError
from pynamodb.exceptions import (
    CancellationReason,
    GetError,
    PutError,
    QueryError,
    TableDoesNotExist,
    TransactWriteError,
    UpdateError,
    VerboseClientError,
)

from chalicelib.errors import AlreadyExistsError, ConditionFailedError, JobplaneError, StoreError, ValidationError
from chalicelib.jobs.metrics import Cursor
from chalicelib.jobs.model import EventSource, HistoryEntry, JobStatus, Transition
from chalicelib.store.base import IdempotencyRecord
from chalicelib.store.edge import DynamoStore, dynamo_errors, translate
from chalicelib.store.slack import OutboxRecord, OutboxState, SlackUserRecord
from chalicelib.store.tokens import TokenRecord
from tests.factories import ROOT, make_endpoint, make_job, make_settings

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PENDING = OutboxState.PENDING


def client_error(code: str, operation: str = "PutItem") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} happened"}}, operation)


def cancelled(*codes: str | None) -> TransactWriteError:
    cause = VerboseClientError(
        {"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"}},
        "TransactWriteItems",
        cancellation_reasons=[CancellationReason(code) if code else None for code in codes],
    )
    return TransactWriteError("Failed to write transaction items", cause)


# --- the translation table ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("raised", "kind", "code", "retryable"),
    [
        (UpdateError("u", client_error("ProvisionedThroughputExceededException")), StoreError, None, True),
        (PutError("p", client_error("ThrottlingException")), StoreError, "ThrottlingException", True),
        (GetError("g", client_error("InternalServerError")), StoreError, "InternalServerError", True),
        (QueryError("q", client_error("ValidationException")), StoreError, "ValidationException", False),
        (PutError("p", client_error("AccessDeniedException")), StoreError, "AccessDeniedException", False),
        (client_error("ResourceNotFoundException"), StoreError, "ResourceNotFoundException", False),
        (GetError("g", EndpointConnectionError(endpoint_url="http://127.0.0.1:1")), StoreError, None, True),
        (GetError("g", ReadTimeoutError(endpoint_url="http://127.0.0.1:1")), StoreError, None, True),
        (PutError("p", NoCredentialsError()), StoreError, None, False),
        (TableDoesNotExist("jp-jobs"), StoreError, None, False),
        (cancelled(None, "TransactionConflict"), StoreError, "TransactionCanceledException", True),
        (cancelled(None, "ValidationError"), StoreError, "TransactionCanceledException", False),
    ],
)
def test_database_failures_become_store_errors_that_say_if_a_retry_may_help(raised, kind, code, retryable):
    error = translate(raised)
    assert type(error) is kind
    assert error.retryable is retryable
    if code is not None:
        assert error.code == code
    assert str(raised) in error.message


def test_a_failed_condition_becomes_condition_failed():
    error = translate(PutError("p", client_error("ConditionalCheckFailedException")))
    assert isinstance(error, ConditionFailedError) and error.reasons == ()


def test_a_cancelled_transaction_keeps_each_items_reason_in_order():
    error = translate(cancelled(None, "ConditionalCheckFailed", None))
    assert isinstance(error, ConditionFailedError)
    assert error.reasons == (None, "ConditionalCheckFailed", None)


def test_a_transaction_conflict_is_a_conflict_and_a_failed_condition_never_is():
    assert translate(cancelled(None, "TransactionConflict")).conflict is True
    assert translate(UpdateError("u", client_error("TransactionConflictException", "UpdateItem"))).conflict is True
    assert translate(cancelled(None, "ValidationError")).conflict is False
    assert translate(PutError("p", client_error("ThrottlingException"))).conflict is False
    # Both in one answer: the condition failed, so a retry could only fail again.
    mixed = translate(cancelled("ConditionalCheckFailed", "TransactionConflict"))
    assert isinstance(mixed, ConditionFailedError)


def test_conflicts_are_retried_with_bounded_jittered_backoff_and_nothing_else_is():
    from chalicelib.store.edge import CONFLICT_CAP_SECONDS, CONFLICT_TRIES, retry_conflicts

    calls, pauses = [], []

    def conflicted_twice():
        calls.append(1)
        if len(calls) <= 2:
            raise translate(cancelled(None, "TransactionConflict"))
        return "written"

    assert retry_conflicts(conflicted_twice, sleep=pauses.append) == "written"
    assert len(calls) == 3 and len(pauses) == 2
    assert all(0.01 <= p <= CONFLICT_CAP_SECONDS for p in pauses)

    calls.clear(), pauses.clear()

    def always():
        calls.append(1)
        raise translate(cancelled(None, "TransactionConflict"))

    with pytest.raises(StoreError):
        retry_conflicts(always, sleep=pauses.append)
    assert len(calls) == CONFLICT_TRIES and len(pauses) == CONFLICT_TRIES - 1

    calls.clear()

    def condition_failed():
        calls.append(1)
        raise translate(cancelled(None, "ConditionalCheckFailed"))

    with pytest.raises(ConditionFailedError):
        retry_conflicts(condition_failed, sleep=pauses.append)
    assert len(calls) == 1


def test_other_exceptions_are_not_translated():
    error = ValueError("a bug")
    assert translate(error) is error


def test_a_store_error_is_not_a_jobplane_error():
    # Handlers that drop or answer a JobplaneError must let a database outage through, to be retried.
    assert not isinstance(StoreError("down", retryable=True), JobplaneError)


# --- the context manager -----------------------------------------------------------------
def test_the_context_manager_raises_the_translation_chained_to_the_original():
    original = UpdateError("u", client_error("ThrottlingException"))
    with pytest.raises(StoreError) as info, dynamo_errors():
        raise original
    assert info.value.__cause__ is original and info.value.retryable


def test_a_failed_condition_is_replaced_by_the_methods_own_error():
    with (
        pytest.raises(AlreadyExistsError, match="job 1 already exists"),
        dynamo_errors(conditional=AlreadyExistsError("job 1 already exists")),
    ):
        raise PutError("p", client_error("ConditionalCheckFailedException"))


def test_a_malformed_request_is_replaced_by_the_methods_own_error_and_nothing_else_is():
    invalid = ValidationError("next_token is not valid", [{"field": "next_token", "message": "bad"}])
    with pytest.raises(ValidationError) as info, dynamo_errors(invalid=invalid):
        raise QueryError("q", client_error("ValidationException"))
    assert info.value.details[0]["field"] == "next_token"
    with pytest.raises(StoreError), dynamo_errors(invalid=invalid):
        raise QueryError("q", client_error("ThrottlingException"))
    with pytest.raises(ConditionFailedError), dynamo_errors(invalid=invalid):
        raise PutError("p", client_error("ConditionalCheckFailedException"))


def test_our_own_errors_and_bugs_pass_through_unchanged():
    ours = ValidationError("bad field")
    with pytest.raises(ValidationError) as info, dynamo_errors(conditional=AlreadyExistsError("x")):
        raise ours
    assert info.value is ours
    with pytest.raises(KeyError), dynamo_errors():
        raise KeyError("bug")


def test_every_public_method_of_a_store_is_translated_including_generators():
    class Toy(DynamoStore):
        models = {}

        def put(self):
            raise PutError("p", client_error("ThrottlingException"))

        def scan(self):
            yield 1
            raise GetError("g", client_error("InternalServerError"))

        def _private(self):
            raise PutError("p", client_error("ThrottlingException"))

    with pytest.raises(StoreError):
        Toy().put()
    items = Toy().scan()
    assert next(items) == 1
    with pytest.raises(StoreError):
        next(items)
    with pytest.raises(PutError):  # private helpers run inside a public method's translation
        Toy()._private()


# --- every DynamoDB store, against a table that does not exist -----------------------------
def _calls():
    from chalicelib.budgets.model import Budget, OnExceed, Scope
    from chalicelib.devvms import DevVm, DevVmStatus
    from chalicelib.endpoints.model import EndpointHistoryEntry, EndpointStatus, EndpointTransition

    job = make_job(spec={"command": ["true"]}, status=JobStatus.QUEUED, created_at=T0)
    entry = HistoryEntry(job.job_id, T0, None, JobStatus.QUEUED, "submitted", EventSource.API)
    moved = Transition(job.job_id, JobStatus.QUEUED, JobStatus.LAUNCHING, "dispatched", EventSource.DISPATCH, T0)
    vm = DevVm(uuid.uuid4().hex, "alice", {"name": "box"}, DevVmStatus.PENDING, T0)
    outbox = OutboxRecord(f"{job.job_id}#RUNNING#1", {}, "webhook", PENDING, T0, T0)
    endpoint = make_endpoint()
    endpoint_entry = EndpointHistoryEntry(endpoint.endpoint_id, T0, None, EndpointStatus.CREATING, "", EventSource.API)
    endpoint_moved = EndpointTransition(
        endpoint.endpoint_id, EndpointStatus.CREATING, EndpointStatus.IN_SERVICE, "up", EventSource.BACKEND, T0
    )
    return {
        "jobs": {
            "create_job": lambda s: s.create_job(job, entry),
            "get_job": lambda s: s.get_job(job.job_id),
            "get_jobs": lambda s: s.get_jobs([job.job_id]),
            "apply_transition": lambda s: s.apply_transition(job, moved),
            "update_job": lambda s: s.update_job(job, JobStatus.QUEUED, status_reason="x"),
            "list_jobs": lambda s: s.list_jobs(None, None, 10, None),
            "list_changed": lambda s: s.list_changed("alice", "2024-01-01T00:00:00.000000Z", 10, None),
            "add_missing_indexes": lambda s: s.add_missing_indexes(),
            "iter_active": lambda s: list(s.iter_active()),
            "iter_queued": lambda s: list(s.iter_queued()),
            "iter_created": lambda s: list(s.iter_created(T0)),
            "history": lambda s: s.history(job.job_id),
            "capacity_usage": lambda s: s.capacity_usage(["sagemaker:ml.g5"]),
            "claim_idempotency_key": lambda s: s.claim_idempotency_key(
                IdempotencyRecord("alice", "k", job.job_id, "h", T0)
            ),
            "backfill_owner_status": lambda s: s.backfill_owner_status(),
            "record_metrics": lambda s: s.record_metrics(job, {"loss": 0.5}, Cursor(10, 1)),
        },
        "tokens": {
            "put_token": lambda s: s.put_token(TokenRecord("a" * 64, "alice", False, T0)),
            "get_token": lambda s: s.get_token("a" * 64),
            "list_tokens": lambda s: s.list_tokens("alice"),
            "delete_token": lambda s: s.delete_token("a" * 64),
        },
        "slack": {
            "add_outbox": lambda s: s.add_outbox(outbox),
            "get_outbox": lambda s: s.get_outbox(f"{job.job_id}#RUNNING#1"),
            "open_outbox": lambda s: s.open_outbox(PENDING, T0, 10),
            "claim_outbox": lambda s: s.claim_outbox(f"{job.job_id}#RUNNING#1", T0, T0),
            "settle_outbox": lambda s: s.settle_outbox(f"{job.job_id}#RUNNING#1", PENDING, PENDING, T0, ""),
            "count_open_outbox": lambda s: s.count_open_outbox(PENDING),
            "put_slack_user": lambda s: s.put_slack_user(SlackUserRecord("U1", "alice", T0)),
            "get_slack_user": lambda s: s.get_slack_user("U1"),
            "delete_slack_user": lambda s: s.delete_slack_user("U1"),
        },
        "devvms": {
            "put_devvm": lambda s: s.put_devvm(vm),
            "get_devvm": lambda s: s.get_devvm(vm.vm_id),
            "list_devvms": lambda s: s.list_devvms(None),
            "update_devvm": lambda s: s.update_devvm(vm, DevVmStatus.PENDING, status=DevVmStatus.RUNNING),
            "iter_running_devvms": lambda s: list(s.iter_running_devvms()),
        },
        "endpoints": {
            "put_endpoint": lambda s: s.put_endpoint(endpoint, endpoint_entry),
            "get_endpoint": lambda s: s.get_endpoint(endpoint.endpoint_id),
            "list_endpoints": lambda s: s.list_endpoints(None),
            "apply_transition": lambda s: s.apply_transition(endpoint, endpoint_moved),
            "update_endpoint": lambda s: s.update_endpoint(endpoint, EndpointStatus.CREATING, version=2),
            "record_invocation": lambda s: s.record_invocation(endpoint.endpoint_id, T0),
            "history": lambda s: s.history(endpoint.endpoint_id),
            "iter_active": lambda s: list(s.iter_active()),
        },
        "budgets": {
            "put_budget": lambda s: s.put_budget(Budget(Scope.OWNER, "alice", 5.0, OnExceed.REFUSE, False, T0, "root")),
            "get_budget": lambda s: s.get_budget("owner:alice"),
            "list_budgets": lambda s: s.list_budgets(),
            "delete_budget": lambda s: s.delete_budget("owner:alice"),
        },
        "metrics": {
            "series": lambda s: s.series(job.job_id),
            "append": lambda s: s.append(job.job_id, {"loss": [(1, 0.5)]}),
        },
    }


# No I/O at all (a stream image decoded in memory) or the table creation itself.
NO_REQUEST = {"job_from_image", "create_tables"}


def test_the_calls_below_cover_every_public_method_of_every_store(tmp_path):
    from chalicelib.store.tables import dynamo_stores

    for kind, store in dynamo_stores(make_settings(tmp_path)).items():
        public = {
            name
            for cls in type(store).__mro__
            if issubclass(cls, DynamoStore) and cls is not DynamoStore
            for name, member in vars(cls).items()
            if not name.startswith("_") and inspect.isfunction(member)
        }
        assert public - NO_REQUEST == set(_calls()[kind]), kind


@pytest.mark.parametrize("kind", ["jobs", "tokens", "slack", "devvms", "metrics", "endpoints", "budgets"])
def test_no_pynamodb_error_leaves_a_store(tmp_path, moto_endpoint, kind):
    from chalicelib.store.tables import dynamo_stores

    store = dynamo_stores(make_settings(tmp_path, moto_endpoint))[kind]  # its tables were never created
    for name, call in _calls()[kind].items():
        with pytest.raises(StoreError) as info:
            call(store)
        assert info.value.code == "ResourceNotFoundException", name
        assert info.value.retryable is False, name


def test_the_interfaces_and_in_memory_twins_load_without_pynamodb():
    # auth, the notifier and the service import these modules; only a DynamoDB store needs pynamodb.
    import subprocess
    import sys

    modules = "chalicelib.store.tokens, chalicelib.store.slack, chalicelib.store.devvms, chalicelib.auth, " + (
        "chalicelib.notify.slack, chalicelib.notify.commands, chalicelib.jobs.service"
    )
    code = f"import sys, {modules}; print('pynamodb' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.stdout.strip() == "False", result.stderr
