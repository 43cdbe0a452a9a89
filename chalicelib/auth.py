"""API tokens: created by the CLI, stored only as SHA-256 hashes, checked on every request."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from chalicelib.errors import AuthenticationError, ValidationError
from chalicelib.jobs.model import utcnow
from chalicelib.store.tokens import TokenRecord, TokenStore

TOKEN_PREFIX = "jp_"  # noqa: S105 - a public prefix, not a secret
USER_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    user: str
    admin: bool = False


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so an unsalted fast hash cannot be brute-forced;
    # a leaked table reveals no usable token.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: TokenStore, user: str, admin: bool = False) -> str:
    """Make a new token for `user`, store its hash, and return the clear token (shown once)."""
    if not USER_RE.match(user):
        raise ValidationError(
            f"user name {user!r} is not valid",
            [{"field": "user", "message": "1..64 characters of a-z, 0-9, '.', '_', '@', '-', starting alphanumeric"}],
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    store.put_token(TokenRecord(hash_token(token), user, admin, utcnow()))
    return token


def authenticate(store: TokenStore, authorization: str | None) -> Principal:
    """Resolve an `Authorization: Bearer <token>` header to a Principal or raise 401."""
    if not authorization:
        raise AuthenticationError("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise AuthenticationError("invalid token")
    digest = hash_token(token)
    record = store.get_token(digest)
    # The lookup is by hash, so timing reveals nothing about the token; compare anyway.
    if record is None or not hmac.compare_digest(record.token_hash, digest):
        raise AuthenticationError("invalid token")
    return Principal(record.user, record.admin)
