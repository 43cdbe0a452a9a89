"""The endpoint store: interface, DynamoDB tables (records + history, sparse active index), in-memory twin."""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chalicelib.endpoints.model import (
    ACTIVE,
    Endpoint,
    EndpointHistoryEntry,
    EndpointStatus,
    EndpointTransition,
    apply_transition,
    entry_for,
)
from chalicelib.errors import AlreadyExistsError, ConditionFailedError, StaleStateError
from chalicelib.jobs.model import EventSource, iso
from chalicelib.store.edge import (
    DynamoStore,
    created_index,
    dynamo_errors,
    get_or_none,
    share_botocore_loader,
    table_meta,
)

if TYPE_CHECKING:
    from pynamodb.models import Model

    from chalicelib.config import Settings

ALL_PK = "endpoints"
ACTIVE_PK = "active"


class EndpointStore(ABC):
    """Endpoints with their history; every status change is guarded on the status it was read in."""

    @abstractmethod
    def put_endpoint(self, endpoint: Endpoint, entry: EndpointHistoryEntry) -> None:
        """Store a new endpoint and its first history entry; AlreadyExistsError if the id is taken."""

    @abstractmethod
    def get_endpoint(self, endpoint_id: str) -> Endpoint | None: ...

    @abstractmethod
    def list_endpoints(self, owner: str | None) -> list[Endpoint]:
        """Newest first; owner None means every owner."""

    @abstractmethod
    def apply_transition(self, endpoint: Endpoint, transition: EndpointTransition) -> Endpoint:
        """Move the endpoint (guarded on transition.from_status; StaleStateError when it moved) and append history."""

    @abstractmethod
    def update_endpoint(self, endpoint: Endpoint, expected: EndpointStatus, **changes: Any) -> Endpoint:
        """Change fields other than status, guarded on the status still being `expected`."""

    @abstractmethod
    def record_invocation(self, endpoint_id: str, at: datetime) -> None:
        """Count one invocation (an atomic add) and set last_invoked_at."""

    @abstractmethod
    def history(self, endpoint_id: str) -> list[EndpointHistoryEntry]:
        """Oldest first."""

    @abstractmethod
    def iter_active(self) -> Iterator[Endpoint]:
        """Endpoints that may still be billed (CREATING, IN_SERVICE, UPDATING, DELETING): a sparse index."""

    def create_tables(self) -> None:
        """Create whatever backing tables are missing (tests, the local stack)."""


def _stale(endpoint: Endpoint, expected: EndpointStatus) -> StaleStateError:
    return StaleStateError(f"endpoint {endpoint.endpoint_id} is no longer {expected.value}")


class InMemoryEndpointStore(EndpointStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, Endpoint] = {}
        self._history: dict[str, list[EndpointHistoryEntry]] = {}

    def put_endpoint(self, endpoint: Endpoint, entry: EndpointHistoryEntry) -> None:
        with self._lock:
            if endpoint.endpoint_id in self._endpoints:
                raise AlreadyExistsError(f"endpoint {endpoint.endpoint_id} already exists")
            self._endpoints[endpoint.endpoint_id] = endpoint
            self._history[endpoint.endpoint_id] = [entry]

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        return self._endpoints.get(endpoint_id)

    def list_endpoints(self, owner: str | None) -> list[Endpoint]:
        found = [e for e in self._endpoints.values() if owner is None or e.owner == owner]
        return sorted(found, key=lambda e: (e.created_at, e.endpoint_id), reverse=True)

    def _guarded(self, endpoint: Endpoint, expected: EndpointStatus) -> Endpoint:
        current = self._endpoints.get(endpoint.endpoint_id)
        if current is None or current.status is not expected:
            raise _stale(endpoint, expected)
        return current

    def apply_transition(self, endpoint: Endpoint, transition: EndpointTransition) -> Endpoint:
        with self._lock:
            current = self._guarded(endpoint, transition.from_status)
            updated = apply_transition(current, transition)
            self._endpoints[endpoint.endpoint_id] = updated
            self._history[endpoint.endpoint_id].append(entry_for(transition))
            return updated

    def update_endpoint(self, endpoint: Endpoint, expected: EndpointStatus, **changes: Any) -> Endpoint:
        with self._lock:
            updated = self._guarded(endpoint, expected).with_changes(**changes)
            self._endpoints[endpoint.endpoint_id] = updated
            return updated

    def record_invocation(self, endpoint_id: str, at: datetime) -> None:
        with self._lock:
            current = self._endpoints.get(endpoint_id)
            if current is not None:
                self._endpoints[endpoint_id] = current.with_changes(
                    invocations=current.invocations + 1, last_invoked_at=at
                )

    def history(self, endpoint_id: str) -> list[EndpointHistoryEntry]:
        return list(self._history.get(endpoint_id, []))

    def iter_active(self) -> Iterator[Endpoint]:
        return iter([e for e in list(self._endpoints.values()) if e.status in ACTIVE])


def build_models(settings: Settings) -> dict[str, type[Model]]:
    """The endpoint tables' models and indexes, bound to this deployment's table names and endpoint."""
    from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
    from pynamodb.models import Model

    OwnerIndex = created_index("owner-created", "owner")
    AllIndex = created_index("all-created", "all_pk")
    # Sparse: only items carrying active_pk (non-terminal jobs, endpoints that may be billed) are in it;
    # reconcile reads nothing else.
    ActiveIndex = created_index("active-created", "active_pk")

    class EndpointModel(Model):
        class Meta(table_meta(settings)):
            table_name = settings.endpoints_table

        endpoint_id = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute()
        all_pk = UnicodeAttribute(default=ALL_PK)
        active_pk = UnicodeAttribute(null=True)
        name = UnicodeAttribute()
        owner = UnicodeAttribute()
        status = UnicodeAttribute()
        backend = UnicodeAttribute()
        spec = UnicodeAttribute()  # JSON
        created_at = UTCDateTimeAttribute()
        model_uri = UnicodeAttribute()
        handler = UnicodeAttribute()
        code_uri = UnicodeAttribute(null=True)
        version = NumberAttribute(default=1)
        native_id = UnicodeAttribute(null=True)
        url = UnicodeAttribute(null=True)
        updated_at = UTCDateTimeAttribute(null=True)
        in_service_at = UTCDateTimeAttribute(null=True)
        deleted_at = UTCDateTimeAttribute(null=True)
        last_invoked_at = UTCDateTimeAttribute(null=True)
        invocations = NumberAttribute(default=0)
        cost_per_hour_usd = NumberAttribute(null=True)
        cost_unknown_reason = UnicodeAttribute(null=True)
        operation = UnicodeAttribute(null=True)
        serving_error = UnicodeAttribute(null=True)
        failure_reason = UnicodeAttribute(null=True)
        plan_reason = UnicodeAttribute(null=True)
        deleted_by = UnicodeAttribute(null=True)
        deleted_reason = UnicodeAttribute(null=True)

        by_owner = OwnerIndex()
        by_all = AllIndex()
        active = ActiveIndex()

    class EndpointHistoryModel(Model):
        class Meta(table_meta(settings)):
            table_name = settings.endpoint_events_table

        endpoint_id = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)  # <at>#<to_status>
        at = UTCDateTimeAttribute()
        from_status = UnicodeAttribute(null=True)
        to_status = UnicodeAttribute()
        reason = UnicodeAttribute()
        source = UnicodeAttribute()
        native_status = UnicodeAttribute(null=True)

    return {"endpoints": EndpointModel, "endpoint_events": EndpointHistoryModel}


# Fields stored as attributes of the same name and type.
_PLAIN = (
    "name",
    "owner",
    "backend",
    "created_at",
    "model_uri",
    "handler",
    "code_uri",
    "native_id",
    "url",
    "updated_at",
    "in_service_at",
    "deleted_at",
    "last_invoked_at",
    "cost_per_hour_usd",
    "cost_unknown_reason",
    "operation",
    "serving_error",
    "failure_reason",
    "plan_reason",
    "deleted_by",
    "deleted_reason",
)


class DynamoEndpointStore(DynamoStore, EndpointStore):
    def __init__(self, settings: Settings) -> None:
        share_botocore_loader()
        self.models = build_models(settings)
        self.Endpoint = self.models["endpoints"]
        self.History = self.models["endpoint_events"]

    def _endpoint(self, item) -> Endpoint:
        return Endpoint(
            endpoint_id=item.endpoint_id,
            status=EndpointStatus(item.status),
            spec=json.loads(item.spec),
            version=int(item.version),
            invocations=int(item.invocations or 0),
            **{f: getattr(item, f) for f in _PLAIN},
        )

    def _save_history(self, entry: EndpointHistoryEntry) -> None:
        self.History(
            entry.endpoint_id,
            f"{iso(entry.at)}#{entry.to_status.value}",
            at=entry.at,
            from_status=entry.from_status.value if entry.from_status else None,
            to_status=entry.to_status.value,
            reason=entry.reason,
            source=entry.source.value,
            native_status=entry.native_status,
        ).save()

    def put_endpoint(self, endpoint: Endpoint, entry: EndpointHistoryEntry) -> None:
        item = self.Endpoint(
            endpoint.endpoint_id,
            sk=f"{iso(endpoint.created_at)}#{endpoint.endpoint_id}",
            status=endpoint.status.value,
            active_pk=ACTIVE_PK if endpoint.status in ACTIVE else None,
            spec=json.dumps(endpoint.spec, sort_keys=True),
            version=endpoint.version,
            invocations=endpoint.invocations,
            **{f: getattr(endpoint, f) for f in _PLAIN},
        )
        with dynamo_errors(conditional=AlreadyExistsError(f"endpoint {endpoint.endpoint_id} already exists")):
            item.save(condition=self.Endpoint.endpoint_id.does_not_exist())
        self._save_history(entry)

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        item = get_or_none(self.Endpoint, endpoint_id, consistent_read=True)
        return self._endpoint(item) if item is not None else None

    def list_endpoints(self, owner: str | None) -> list[Endpoint]:
        M = self.Endpoint
        index, key = (M.by_owner, owner) if owner else (M.by_all, ALL_PK)
        return [self._endpoint(i) for i in index.query(key, scan_index_forward=False)]

    def _update(self, endpoint: Endpoint, expected: EndpointStatus, fields: dict[str, Any]) -> None:
        M = self.Endpoint
        if "status" in fields:
            fields["active_pk"] = ACTIVE_PK if fields["status"] in ACTIVE else None
        actions = []
        for name, value in fields.items():
            if isinstance(value, EndpointStatus):
                value = value.value
            elif name == "spec":
                value = json.dumps(value, sort_keys=True)
            attr = getattr(M, name)
            actions.append(attr.remove() if value is None else attr.set(value))
        with dynamo_errors(conditional=_stale(endpoint, expected)):
            M(endpoint.endpoint_id).update(actions=actions, condition=(M.status == expected.value))

    def apply_transition(self, endpoint: Endpoint, transition: EndpointTransition) -> Endpoint:
        fields = {"status": transition.to_status, "updated_at": transition.at, **transition.changes}
        self._update(endpoint, transition.from_status, fields)
        self._save_history(entry_for(transition))
        return apply_transition(endpoint, transition)

    def update_endpoint(self, endpoint: Endpoint, expected: EndpointStatus, **changes: Any) -> Endpoint:
        self._update(endpoint, expected, dict(changes))
        return endpoint.with_changes(**changes)

    def record_invocation(self, endpoint_id: str, at: datetime) -> None:
        M = self.Endpoint
        try:
            with dynamo_errors():
                M(endpoint_id).update(
                    actions=[M.invocations.add(1), M.last_invoked_at.set(at)],
                    condition=M.endpoint_id.exists(),
                )
        except ConditionFailedError:
            return  # the record is gone: nothing to count

    def history(self, endpoint_id: str) -> list[EndpointHistoryEntry]:
        return [
            EndpointHistoryEntry(
                endpoint_id=i.endpoint_id,
                at=i.at,
                from_status=EndpointStatus(i.from_status) if i.from_status else None,
                to_status=EndpointStatus(i.to_status),
                reason=i.reason,
                source=EventSource(i.source),
                native_status=i.native_status,
            )
            for i in self.History.query(endpoint_id, scan_index_forward=True, consistent_read=True)
        ]

    def iter_active(self) -> Iterator[Endpoint]:
        for item in self.Endpoint.active.query(ACTIVE_PK):
            yield self._endpoint(item)
