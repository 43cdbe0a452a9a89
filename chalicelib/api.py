"""HTTP edge helpers for the Chalice views: auth, JSON responses, error mapping."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from chalice import Response

from chalicelib import deps
from chalicelib.errors import JobplaneError

log = logging.getLogger("jobplane.api")
JSON = {"Content-Type": "application/json"}


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


def principal(request):
    from chalicelib.auth import authenticate

    headers = request.headers or {}
    return authenticate(deps.get_token_store(), headers.get("authorization"))


def json_body(request) -> Any:
    """The request body as JSON, or a 400 naming the body (never Chalice's own error shape)."""
    from chalicelib.errors import ValidationError

    raw = request.raw_body or b""
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise ValidationError("the body is not valid JSON", [{"field": "(body)", "message": "a JSON object"}]) from None


def query(request) -> dict[str, str]:
    return dict(request.query_params or {})
