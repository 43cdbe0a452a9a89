"""Reading a job's entries from Cloud Logging (REST entries.list), paged through an opaque offset."""

from __future__ import annotations

import json
from typing import Any

from chalicelib.backends.base import LogChunk, Offset, bad_offset, decode_log_token, encode_log_token
from chalicelib.config import Settings
from chalicelib.errors import BackendError

ENDPOINT = "https://logging.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/logging.read"
IAM_ACTION = "logging.logEntries.list"
PAGE_SIZE_MAX = 1000  # entries.list refuses more


class CloudLogging:
    """entries.list through google-auth's AuthorizedSession (no extra client library); `session` for tests."""

    def __init__(self, settings: Settings, session=None) -> None:
        self.settings = settings
        self._session = session

    @property
    def session(self):
        if self._session is None:
            import google.auth
            from google.auth.transport.requests import AuthorizedSession

            if self.settings.gcp_api_endpoint:
                from google.auth.credentials import AnonymousCredentials

                self._session = AuthorizedSession(AnonymousCredentials())
            else:
                credentials, _ = google.auth.default(scopes=[SCOPE])
                self._session = AuthorizedSession(credentials)
        return self._session

    @property
    def url(self) -> str:
        return f"{(self.settings.gcp_api_endpoint or ENDPOINT).rstrip('/')}/v2/entries:list"

    def list(self, filter_: str, page_size: int, page_token: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "resourceNames": [f"projects/{self.settings.gcp_project}"],
            "filter": filter_,
            "orderBy": "timestamp asc",
            "pageSize": page_size,
        }
        if page_token:
            body["pageToken"] = page_token
        try:
            response = self.session.post(self.url, json=body, timeout=20)
        except OSError as exc:  # requests' ConnectionError and Timeout are OSErrors
            raise BackendError(f"listing log entries: {exc}", retryable=True) from exc
        if response.status_code != 200:
            raise _error(response)
        try:
            return response.json()
        except ValueError as exc:
            raise BackendError(f"listing log entries: not JSON ({response.status_code})") from exc


def _error(response) -> BackendError:
    from chalicelib.errors import BackendAuthError, BackendValidationError, ThrottledError

    try:
        message = (response.json().get("error") or {}).get("message") or response.text
    except ValueError:
        message = response.text
    text = f"listing log entries: HTTP {response.status_code}: {message[:300]}"
    if response.status_code in (401, 403):
        return BackendAuthError(text)
    if response.status_code == 429:
        return ThrottledError(text)
    if response.status_code == 400:
        return BackendValidationError(text)
    return BackendError(text, retryable=response.status_code >= 500)


def entry_text(entry: dict[str, Any]) -> str:
    """One LogEntry's line: textPayload, else jsonPayload's message, else the JSON payload itself."""
    if "textPayload" in entry:
        return str(entry["textPayload"]).rstrip("\n")
    payload = entry.get("jsonPayload")
    if isinstance(payload, dict):
        message = payload.get("message")
        return str(message).rstrip("\n") if message is not None else json.dumps(payload, sort_keys=True)
    return ""


def after(filter_: str, last: list[str] | None) -> str:
    """The filter for entries after the last one seen (by timestamp, then insertId within a timestamp)."""
    if not last:
        return filter_
    ts, insert_id = (json.dumps(v) for v in last)
    return f"{filter_} AND (timestamp > {ts} OR (timestamp = {ts} AND insertId > {insert_id}))"


def read_entries(logging: CloudLogging, filter_: str, offset: Offset, limit: int) -> LogChunk:
    """One page of the job's entries after `offset`.

    The offset keeps nextPageToken while a listing lasts (a token is valid only with the filter it
    came from, so the filter's cursor `f` goes with it) and the last entry's (timestamp, insertId) `l`,
    from which a new listing starts once the last page is read: new entries are found after it."""
    if offset in (0, ""):
        state: dict[str, Any] = {"f": None, "p": None, "l": None}
    elif isinstance(offset, str):
        state = decode_log_token(offset)
        if set(state) != {"f", "p", "l"}:
            raise bad_offset("offset is not one this job's log gave")
    else:
        raise bad_offset("this job's log pages by cursor: pass the next_offset it returned, or 0")
    if state["p"]:
        since, token = state["f"], state["p"]
    else:
        since, token = state["l"], None
    page = logging.list(after(filter_, since), max(1, min(PAGE_SIZE_MAX, limit // 100)), token)
    entries = page.get("entries") or []
    text = "".join(entry_text(e) + "\n" for e in entries)
    last = [entries[-1].get("timestamp", ""), entries[-1].get("insertId", "")] if entries else state["l"]
    next_token = page.get("nextPageToken")
    state = {"f": since if next_token else None, "p": next_token, "l": last}
    nothing = state == {"f": None, "p": None, "l": None}
    return LogChunk(text, 0 if nothing else encode_log_token(state), not next_token)
