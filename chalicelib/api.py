"""HTTP edge helpers for the Chalice views: auth, query parameters, JSON responses, error mapping."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chalice import Response

from chalicelib.errors import JobplaneError, ValidationError
from chalicelib.jobs.model import JobStatus

log = logging.getLogger("jobplane.api")
JSON = {"Content-Type": "application/json"}
MAX_LIMIT = 100


def respond(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body=json.dumps(body, default=str), status_code=status, headers={**JSON, **(headers or {})})


def error_response(exc: JobplaneError) -> Response:
    extra = {"WWW-Authenticate": 'Bearer realm="jobplane"'} if exc.STATUS_CODE == 401 else {}
    return respond(exc.to_dict(), exc.STATUS_CODE, extra)


def api_view(func: Callable[..., Response]) -> Callable[..., Response]:
    """Map jobplane errors to their status and JSON shape; anything else is a logged 500."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except JobplaneError as exc:
            return error_response(exc)
        except Exception:  # the outermost handler: log with context, never leak internals
            log.exception("unhandled error in %s", func.__name__)
            return respond({"error": {"code": "internal_error", "message": "internal error", "details": []}}, 500)

    return wrapper


# Chalice answers some requests itself (405 wrong method, 415 wrong content type) in its own shape.
_CHALICE_CODES = {
    "MethodNotAllowedError": "method_not_allowed",
    "UnsupportedMediaType": "unsupported_media_type",
    "BadRequest": "invalid_request",
    "BadRequestError": "invalid_request",
}


def contract_errors(event, get_response):
    """HTTP middleware: every error leaves as {"error": {"code", "message", "details"}}, Chalice's too."""
    response = get_response(event)
    body = response.body
    if isinstance(body, dict) and set(body) == {"Code", "Message"} and response.status_code >= 400:
        code = _CHALICE_CODES.get(body["Code"], str(body["Code"]))
        response.body = json.dumps({"error": {"code": code, "message": body["Message"], "details": []}})
        response.headers = {**(response.headers or {}), **JSON}
    return response


def json_body(request) -> Any:
    """The request body as JSON, or a 400 naming the body (never Chalice's own error shape)."""
    raw = request.raw_body or b""
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise ValidationError("the body is not valid JSON", [{"field": "(body)", "message": "a JSON object"}]) from None


def query(request) -> dict[str, str]:
    return dict(request.query_params or {})


# --- query parameters: strings in, typed values out, a 400 naming the parameter otherwise ----------
def parse_flag(params: Mapping[str, Any], name: str) -> bool:
    """A boolean query parameter: true/1 or false/0 (absent: false); a 400 naming it otherwise."""
    value = params.get(name)
    if value is None:
        return False
    if str(value).lower() in ("true", "1"):
        return True
    if str(value).lower() in ("false", "0", ""):
        return False
    raise ValidationError(f"{name} must be true or false", [{"field": name, "message": "true or false"}])


@dataclass(frozen=True)
class ListQuery:
    """GET /jobs?status=&limit=&next_token=&updated_since= as the service takes it (limit None: the service's
    default)."""

    status: JobStatus | None
    limit: int | None
    next_token: str | None
    updated_since: datetime | None = None


def list_query(params: Mapping[str, Any]) -> ListQuery:
    limit = params.get("limit")
    return ListQuery(
        parse_status(params.get("status")),
        None if limit is None else parse_limit(limit),
        params.get("next_token"),
        parse_updated_since(params.get("updated_since")),
    )


def parse_updated_since(value: Any) -> datetime | None:
    """GET /jobs?updated_since=: an ISO 8601 time with its zone (the as_of of a previous answer); None when
    not given."""
    if value is None:
        return None
    text = str(value).strip()
    when = None
    if 10 < len(text) <= 40 and text[:4].isdigit():
        try:
            when = datetime.fromisoformat(text)
            when = when.astimezone(UTC) if when.tzinfo is not None else None
        except (ValueError, OverflowError):
            when = None
    if when is None:
        hint = " (a + in a query string reads as a space: write Z or %2B)" if " " in text else ""
        raise ValidationError(
            f"updated_since {text[:60]!r} is not an ISO 8601 time with a zone{hint}",
            [
                {
                    "field": "updated_since",
                    "message": "an ISO 8601 time with a zone, e.g. 2026-01-31T12:00:00Z "
                    "(the as_of of a previous answer)",
                }
            ],
        )
    return when


def parse_status(value: Any) -> JobStatus | None:
    """A status exactly as the API shows it (QUEUED, RUNNING, ...); None when not given."""
    if value is None:
        return None
    try:
        return JobStatus(str(value))
    except ValueError:
        raise ValidationError(
            f"unknown status {value!r}",
            [{"field": "status", "message": f"one of {', '.join(s.value for s in JobStatus)}"}],
        ) from None


def parse_limit(value: Any) -> int:
    try:
        # isdigit() admits digits int() refuses ("²"), and refuses the sign int() admits ("-3", "+3")
        size = int(str(value)) if str(value).isdigit() else -1
    except ValueError:
        size = -1
    if not 1 <= size <= MAX_LIMIT:
        raise ValidationError(
            f"limit must be an integer from 1 to {MAX_LIMIT}",
            [{"field": "limit", "message": f"an integer from 1 to {MAX_LIMIT}"}],
        )
    return size


def parse_offset(value: Any) -> int | str:
    """GET /jobs/{id}/logs?offset=: the next_offset of the previous call (a byte count or a provider
    cursor, as the job's backend pages); 0 when not given."""
    from chalicelib.backends.base import LOG_CURSOR_PREFIX, bad_offset, decode_log_token

    if isinstance(value, str) and value.startswith(LOG_CURSOR_PREFIX):
        decode_log_token(value)  # refused here, with the field named, rather than by the provider
        return value
    try:
        start = int(value or 0)
    except (TypeError, ValueError):
        start = -1
    if start < 0:
        raise bad_offset("offset must be a non-negative integer, or a next_offset returned earlier")
    return start


def parse_node(value: Any) -> int | None:
    """GET /jobs/{id}/logs?node=: one node's output of a multi-node job (0 is the master); None: all, merged."""
    if value is None:
        return None
    text = str(value)
    if not (text.isascii() and text.isdigit()):
        raise ValidationError(
            "node must be a node's rank: an integer from 0 to resources.nodes - 1",
            [{"field": "node", "message": "an integer from 0 to resources.nodes - 1"}],
        )
    return int(text)


MAX_TAIL_LINES = 100


def parse_lines(value: Any) -> int:
    """GET /jobs/{id}/tail?lines=: how many last lines (1..100); 15 when not given."""
    if value is None:
        return 15
    text = str(value)
    count = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= count <= MAX_TAIL_LINES:
        raise ValidationError(
            f"lines must be an integer from 1 to {MAX_TAIL_LINES}",
            [{"field": "lines", "message": f"an integer from 1 to {MAX_TAIL_LINES}"}],
        )
    return count
