"""The endpoints' pure state machine: decide(endpoint, event) -> EndpointTransition | None. No I/O here."""

from __future__ import annotations

from chalicelib.endpoints.model import Endpoint, EndpointEvent, EndpointStatus, EndpointTransition

S = EndpointStatus
#: from -> the statuses it may move to; anything else is a stale, duplicate or out-of-order event
ALLOWED: dict[EndpointStatus, frozenset[EndpointStatus]] = {
    S.CREATING: frozenset({S.IN_SERVICE, S.FAILED, S.DELETING}),
    S.IN_SERVICE: frozenset({S.UPDATING, S.DELETING, S.FAILED}),
    S.UPDATING: frozenset({S.IN_SERVICE, S.FAILED, S.DELETING}),
    S.DELETING: frozenset({S.DELETED}),
    S.FAILED: frozenset({S.DELETING, S.DELETED}),
    S.DELETED: frozenset(),
}


def decide(endpoint: Endpoint, event: EndpointEvent) -> EndpointTransition | None:
    """The transition `event` causes, or None when it changes nothing (a repeat, a stale report, a deleted
    endpoint). A provider that reports IN_SERVICE while we await an update's rollout of a newer version than
    it names is stale too."""
    target = event.status
    if target is endpoint.status or target not in ALLOWED[endpoint.status]:
        return None
    if (
        endpoint.status is S.UPDATING
        and target is S.IN_SERVICE
        and event.version is not None
        and event.version < endpoint.version
    ):
        return None
    changes: dict = {}
    if event.native_id and event.native_id != endpoint.native_id:
        changes["native_id"] = event.native_id
    if event.url and event.url != endpoint.url:
        changes["url"] = event.url
    if target is S.IN_SERVICE and endpoint.in_service_at is None:
        changes["in_service_at"] = event.at
    if target is S.FAILED:
        changes["failure_reason"] = event.reason or event.native_status or "failed"
    if target is S.DELETED:
        changes["deleted_at"] = event.at
        changes["url"] = None
    return EndpointTransition(
        endpoint_id=endpoint.endpoint_id,
        from_status=endpoint.status,
        to_status=target,
        reason=event.reason or f"{target.value.lower()} (reported by {event.source.value})",
        source=event.source,
        at=event.at,
        native_status=event.native_status,
        changes=changes,
    )
