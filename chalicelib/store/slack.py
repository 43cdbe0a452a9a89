"""The Slack store (user mappings and the notification outbox, one table): interface, DynamoDB, in-memory twin."""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from chalicelib.errors import ConditionFailedError
from chalicelib.store.edge import DynamoStore, dynamo_errors, get_or_none, share_botocore_loader, table_meta

if TYPE_CHECKING:
    from pynamodb.models import Model

    from chalicelib.config import Settings


@dataclass(frozen=True)
class SlackUserRecord:
    """A Slack user (workspace member id, e.g. U2CERLKJA) acting in jobplane as `user`."""

    slack_user_id: str
    user: str
    created_at: datetime


class OutboxState(str, Enum):
    """Where one notification stands. Only PENDING is ever sent; every other state is final but SENDING."""

    #: not sent yet, or provably not received by Slack: a drainer sends it once `next_try_at` has come
    PENDING = "PENDING"
    #: claimed by one drainer, whose request is in flight; past `next_try_at` (its lease) it counts as UNKNOWN
    SENDING = "SENDING"
    #: Slack answered that it took the message
    SENT = "SENT"
    #: the request may have reached Slack (timed out or reset after it was sent, or an error Slack says may
    #: have posted): never sent again, which is what keeps notifications at most once
    UNKNOWN = "UNKNOWN"
    #: never received by Slack and given up: a permanent refusal, or still undelivered after the retry window
    GAVE_UP = "GAVE_UP"


OPEN_STATES = (OutboxState.PENDING, OutboxState.SENDING)


@dataclass(frozen=True)
class OutboxRecord:
    """One message to post, keyed by its transition (job_id#status#attempt), so a transition has one record."""

    key: str
    message: dict[str, Any]
    #: "webhook", or a channel name for chat.postMessage with the bot token (secrets are never stored)
    destination: str
    state: OutboxState
    created_at: datetime
    next_try_at: datetime
    tries: int = 0
    detail: str = ""


# The outbox lives here, not with the jobs: it records what was posted to Slack, no job transaction
# touches it, and it shares the Slack table with the mappings (one table, one store, one schema).
class SlackStore(ABC):
    """Slack state: which Slack user acts as which jobplane user, and the outbox of notifications."""

    # --- notification outbox ---------------------------------------------------------------
    @abstractmethod
    def add_outbox(self, record: OutboxRecord) -> bool:
        """Record a message to send unless its key exists; True when this call created it.

        The key is the transition's, so a re-delivered stream record never queues (or posts) twice.
        """

    @abstractmethod
    def get_outbox(self, key: str) -> OutboxRecord | None: ...

    @abstractmethod
    def open_outbox(self, state: OutboxState, until: datetime, limit: int) -> list[OutboxRecord]:
        """PENDING or SENDING records whose `next_try_at` is at or before `until`, earliest first."""

    @abstractmethod
    def claim_outbox(self, key: str, now: datetime, lease_until: datetime) -> OutboxRecord | None:
        """Move a due PENDING record to SENDING (one more try, leased until `lease_until`) with one
        conditional write; the claimed record, or None when it was not PENDING and due (another drainer won)."""

    @abstractmethod
    def settle_outbox(
        self, key: str, expected: OutboxState, state: OutboxState, next_try_at: datetime, detail: str
    ) -> bool:
        """Move a record from `expected` to `state`; False when it was no longer in `expected`."""

    @abstractmethod
    def count_open_outbox(self, state: OutboxState) -> int:
        """How many records are PENDING (or SENDING), whenever due."""

    # --- user mappings -----------------------------------------------------------------------
    @abstractmethod
    def put_slack_user(self, record: SlackUserRecord) -> None:
        """Map a Slack user to a jobplane user, replacing any earlier mapping of that Slack user."""

    @abstractmethod
    def get_slack_user(self, slack_user_id: str) -> SlackUserRecord | None: ...

    @abstractmethod
    def delete_slack_user(self, slack_user_id: str) -> bool:
        """Remove a mapping; False when there was none."""

    def create_tables(self) -> None:
        """Create whatever backing tables are missing (tests, the local stack)."""


def _check_open(state: OutboxState) -> None:
    if state not in OPEN_STATES:
        raise ValueError(f"state: only PENDING and SENDING records are listed, not {state.value}")


class InMemorySlackStore(SlackStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outbox: dict[str, OutboxRecord] = {}
        self._slack_users: dict[str, SlackUserRecord] = {}

    def add_outbox(self, record: OutboxRecord) -> bool:
        with self._lock:
            if record.key in self._outbox:
                return False
            self._outbox[record.key] = record
            return True

    def get_outbox(self, key: str) -> OutboxRecord | None:
        return self._outbox.get(key)

    def open_outbox(self, state: OutboxState, until: datetime, limit: int) -> list[OutboxRecord]:
        _check_open(state)
        with self._lock:
            due = [r for r in self._outbox.values() if r.state is state and r.next_try_at <= until]
        return sorted(due, key=lambda r: r.next_try_at)[:limit]

    def claim_outbox(self, key: str, now: datetime, lease_until: datetime) -> OutboxRecord | None:
        with self._lock:
            record = self._outbox.get(key)
            if record is None or record.state is not OutboxState.PENDING or record.next_try_at > now:
                return None
            claimed = replace(record, state=OutboxState.SENDING, tries=record.tries + 1, next_try_at=lease_until)
            self._outbox[key] = claimed
            return claimed

    def settle_outbox(
        self, key: str, expected: OutboxState, state: OutboxState, next_try_at: datetime, detail: str
    ) -> bool:
        with self._lock:
            record = self._outbox.get(key)
            if record is None or record.state is not expected:
                return False
            self._outbox[key] = replace(record, state=state, next_try_at=next_try_at, detail=detail)
            return True

    def count_open_outbox(self, state: OutboxState) -> int:
        _check_open(state)
        with self._lock:
            return sum(1 for r in self._outbox.values() if r.state is state)

    def put_slack_user(self, record: SlackUserRecord) -> None:
        self._slack_users[record.slack_user_id] = record

    def get_slack_user(self, slack_user_id: str) -> SlackUserRecord | None:
        return self._slack_users.get(slack_user_id)

    def delete_slack_user(self, slack_user_id: str) -> bool:
        return self._slack_users.pop(slack_user_id, None) is not None


def build_models(settings: Settings) -> dict[str, type[Model]]:
    """The Slack table's model, bound to this deployment's table name and endpoint."""
    from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
    from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
    from pynamodb.models import Model

    class OpenOutboxIndex(GlobalSecondaryIndex):
        """Sparse: only PENDING and SENDING records carry open_state; a drain reads nothing else."""

        class Meta:
            index_name = "open-due"
            projection = AllProjection()

        open_state = UnicodeAttribute(hash_key=True)
        due_at = NumberAttribute(range_key=True)

    class SlackModel(Model):
        """Slack state: `notified#<job_id>#<status>#<attempt>` outbox records and `user#<slack user id>` mappings."""

        class Meta(table_meta(settings)):
            table_name = settings.slack_table

        pk = UnicodeAttribute(hash_key=True)
        user = UnicodeAttribute(null=True)
        created_at = UTCDateTimeAttribute()
        expires_at = NumberAttribute(null=True)  # DynamoDB TTL attribute (epoch seconds); outbox records only
        state = UnicodeAttribute(null=True)
        message = UnicodeAttribute(null=True)  # JSON
        destination = UnicodeAttribute(null=True)
        tries = NumberAttribute(null=True)
        next_try_at = UTCDateTimeAttribute(null=True)
        detail = UnicodeAttribute(null=True)
        open_state = UnicodeAttribute(null=True)
        due_at = NumberAttribute(null=True)  # next_try_at in epoch seconds, for the index's order

        open_outbox = OpenOutboxIndex()

    return {"slack": SlackModel}


OUTBOX_PREFIX = "notified#"


def _open_fields(state: OutboxState, next_try_at: datetime) -> dict[str, Any]:
    is_open = state in OPEN_STATES
    return {"open_state": state.value if is_open else None, "due_at": next_try_at.timestamp() if is_open else None}


class DynamoSlackStore(DynamoStore, SlackStore):
    # Stream records live 24 hours and a message is retried for less: records outlive any re-delivery.
    NOTIFIED_TTL_SECONDS = 30 * 24 * 3600
    TTL_ATTRIBUTES = {"slack": "expires_at"}  # mappings carry no expires_at, so only outbox records expire

    def __init__(self, settings: Settings) -> None:
        share_botocore_loader()
        self.models = build_models(settings)
        self.Slack = self.models["slack"]

    def _record(self, item) -> OutboxRecord:
        return OutboxRecord(
            key=item.pk[len(OUTBOX_PREFIX) :],
            message=json.loads(item.message),
            destination=item.destination,
            state=OutboxState(item.state),
            created_at=item.created_at,
            next_try_at=item.next_try_at,
            tries=int(item.tries or 0),
            detail=item.detail or "",
        )

    def add_outbox(self, record: OutboxRecord) -> bool:
        item = self.Slack(
            f"{OUTBOX_PREFIX}{record.key}",
            created_at=record.created_at,
            expires_at=int(record.created_at.timestamp()) + self.NOTIFIED_TTL_SECONDS,
            state=record.state.value,
            message=json.dumps(record.message, sort_keys=True),
            destination=record.destination,
            tries=record.tries,
            next_try_at=record.next_try_at,
            detail=record.detail or None,
            **_open_fields(record.state, record.next_try_at),
        )
        try:
            with dynamo_errors():
                item.save(condition=self.Slack.pk.does_not_exist())
        except ConditionFailedError:
            return False
        return True

    def get_outbox(self, key: str) -> OutboxRecord | None:
        item = get_or_none(self.Slack, f"{OUTBOX_PREFIX}{key}", consistent_read=True)
        return self._record(item) if item is not None and item.state else None

    def open_outbox(self, state: OutboxState, until: datetime, limit: int) -> list[OutboxRecord]:
        _check_open(state)
        M = self.Slack
        with dynamo_errors():
            items = M.open_outbox.query(state.value, M.due_at <= until.timestamp(), limit=limit)
            return [self._record(i) for i in items]

    def claim_outbox(self, key: str, now: datetime, lease_until: datetime) -> OutboxRecord | None:
        M = self.Slack
        actions = [
            M.state.set(OutboxState.SENDING.value),
            M.tries.add(1),
            M.next_try_at.set(lease_until),
            M.open_state.set(OutboxState.SENDING.value),
            M.due_at.set(lease_until.timestamp()),
        ]
        item = M(f"{OUTBOX_PREFIX}{key}")
        try:
            with dynamo_errors():
                item.update(
                    actions=actions,
                    condition=(M.state == OutboxState.PENDING.value) & (M.next_try_at <= now),
                )
        except ConditionFailedError:
            return None
        return self._record(item)

    def settle_outbox(
        self, key: str, expected: OutboxState, state: OutboxState, next_try_at: datetime, detail: str
    ) -> bool:
        M = self.Slack
        actions = [M.state.set(state.value), M.next_try_at.set(next_try_at)]
        actions.append(M.detail.set(detail) if detail else M.detail.remove())
        for name, value in _open_fields(state, next_try_at).items():
            attr = getattr(M, name)
            actions.append(attr.remove() if value is None else attr.set(value))
        try:
            with dynamo_errors():
                M(f"{OUTBOX_PREFIX}{key}").update(actions=actions, condition=(M.state == expected.value))
        except ConditionFailedError:
            return False
        return True

    def count_open_outbox(self, state: OutboxState) -> int:
        _check_open(state)
        with dynamo_errors():
            return self.Slack.open_outbox.count(state.value)

    def put_slack_user(self, record: SlackUserRecord) -> None:
        self.Slack(f"user#{record.slack_user_id}", user=record.user, created_at=record.created_at).save()

    def get_slack_user(self, slack_user_id: str) -> SlackUserRecord | None:
        item = get_or_none(self.Slack, f"user#{slack_user_id}")
        if item is None:
            return None
        return SlackUserRecord(slack_user_id, item.user, item.created_at)

    def delete_slack_user(self, slack_user_id: str) -> bool:
        try:
            with dynamo_errors():
                self.Slack(f"user#{slack_user_id}").delete(condition=self.Slack.pk.exists())
        except ConditionFailedError:
            return False
        return True
