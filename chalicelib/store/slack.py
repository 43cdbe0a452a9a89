"""The Slack store (user mappings and notification markers, one table): interface, DynamoDB, in-memory twin."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

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


# The markers live here, not with the jobs: they record what was posted to Slack, no job transaction
# touches them, and they share the Slack table with the mappings (one table, one store, one schema).
class SlackStore(ABC):
    """Slack state: which Slack user acts as which jobplane user, and which transitions were announced."""

    # --- notification markers --------------------------------------------------------------
    @abstractmethod
    def claim_notification(self, key: str, at: datetime) -> bool:
        """Create the marker `key` (job_id#status#attempt) unless it exists; True when this call created it.

        The notifier claims before it posts, so a re-delivered stream record never posts twice.
        """

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


class InMemorySlackStore(SlackStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notified: dict[str, datetime] = {}
        self._slack_users: dict[str, SlackUserRecord] = {}

    def claim_notification(self, key: str, at: datetime) -> bool:
        with self._lock:
            if key in self._notified:
                return False
            self._notified[key] = at
            return True

    def put_slack_user(self, record: SlackUserRecord) -> None:
        self._slack_users[record.slack_user_id] = record

    def get_slack_user(self, slack_user_id: str) -> SlackUserRecord | None:
        return self._slack_users.get(slack_user_id)

    def delete_slack_user(self, slack_user_id: str) -> bool:
        return self._slack_users.pop(slack_user_id, None) is not None


def build_models(settings: Settings) -> dict[str, type[Model]]:
    """The Slack table's model, bound to this deployment's table name and endpoint."""
    from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
    from pynamodb.models import Model

    class SlackModel(Model):
        """Slack state: `notified#<job_id>#<status>#<attempt>` markers and `user#<slack user id>` mappings."""

        class Meta(table_meta(settings)):
            table_name = settings.slack_table

        pk = UnicodeAttribute(hash_key=True)
        user = UnicodeAttribute(null=True)
        created_at = UTCDateTimeAttribute()
        expires_at = NumberAttribute(null=True)  # DynamoDB TTL attribute (epoch seconds); markers only

    return {"slack": SlackModel}


class DynamoSlackStore(DynamoStore, SlackStore):
    NOTIFIED_TTL_SECONDS = 30 * 24 * 3600  # stream records live 24 hours; markers outlive any re-delivery
    TTL_ATTRIBUTES = {"slack": "expires_at"}  # mappings carry no expires_at, so only markers expire

    def __init__(self, settings: Settings) -> None:
        share_botocore_loader()
        self.models = build_models(settings)
        self.Slack = self.models["slack"]

    def claim_notification(self, key: str, at: datetime) -> bool:
        item = self.Slack(f"notified#{key}", created_at=at, expires_at=int(at.timestamp()) + self.NOTIFIED_TTL_SECONDS)
        try:
            with dynamo_errors():
                item.save(condition=self.Slack.pk.does_not_exist())
        except ConditionFailedError:
            return False
        return True

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
