"""Slack users -> jobplane users: the mapping an admin manages with `jobplane slack map`."""

from __future__ import annotations

import re

from chalicelib.auth import USER_RE, Principal
from chalicelib.errors import ValidationError
from chalicelib.jobs.model import utcnow
from chalicelib.store.slack import SlackStore, SlackUserRecord

# Member ids: U… in a workspace, W… in an Enterprise Grid org.
SLACK_USER_RE = re.compile(r"^[UW][A-Z0-9]{2,31}$")


def _check_slack_user(slack_user_id: str) -> None:
    if not SLACK_USER_RE.match(slack_user_id or ""):
        raise ValidationError(
            f"Slack user id {slack_user_id!r} is not valid",
            [{"field": "slack_user_id", "message": "a member id such as U2CERLKJA (profile > ... > Copy member ID)"}],
        )


def map_slack_user(store: SlackStore, slack_user_id: str, jobplane_user: str) -> SlackUserRecord:
    """Let Slack member `slack_user_id` act as `jobplane_user` in /jobplane commands (replaces any mapping)."""
    _check_slack_user(slack_user_id)
    if not USER_RE.match(jobplane_user or ""):
        raise ValidationError(
            f"user name {jobplane_user!r} is not valid",
            [{"field": "user", "message": "1..64 characters of a-z, 0-9, '.', '_', '@', '-', starting alphanumeric"}],
        )
    record = SlackUserRecord(slack_user_id, jobplane_user, utcnow())
    store.put_slack_user(record)
    return record


def unmap_slack_user(store: SlackStore, slack_user_id: str) -> bool:
    """Remove a mapping; False when the Slack user had none."""
    _check_slack_user(slack_user_id)
    return store.delete_slack_user(slack_user_id)


def principal_for(store: SlackStore, slack_user_id: str) -> Principal | None:
    """Who a Slack user is in jobplane; never an admin (Slack commands act on the user's own jobs)."""
    if not SLACK_USER_RE.match(slack_user_id or ""):
        return None
    record = store.get_slack_user(slack_user_id)
    return Principal(record.user) if record else None
