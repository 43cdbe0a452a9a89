"""API tokens: created by the CLI, stored only as SHA-256 hashes, checked on every request."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from chalicelib.errors import AuthenticationError, ConflictError, NotFoundError, ValidationError
from chalicelib.jobs.model import utcnow
from chalicelib.store.tokens import TOKEN_ID_CHARS, TokenRecord, TokenStore

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


TOKEN_ID_RE = re.compile(r"^[0-9a-f]{4,64}$")


def list_tokens(store: TokenStore, who: Principal, user: str | None = None) -> list[TokenRecord]:
    """The caller's own tokens; an admin's view is every user's, or `user`'s."""
    if not who.admin:
        if user not in (None, who.user):
            raise NotFoundError(f"no tokens of user {user!r} are visible to {who.user!r}")
        return store.list_tokens(who.user)
    return store.list_tokens(user)


def revoke_token(store: TokenStore, who: Principal, token_id: str) -> TokenRecord:
    """Delete the token named by its id (the first characters of its hash, as `token list` shows; any
    unique prefix of at least 4). A user revokes their own tokens; an admin anyone's."""
    token_id = token_id.strip().lower()
    if not TOKEN_ID_RE.match(token_id):
        raise ValidationError(
            f"token id {token_id!r} is not valid",
            [{"field": "token_id", "message": f"the {TOKEN_ID_CHARS} hex characters `token list` shows (4 or more)"}],
        )
    visible = store.list_tokens(None if who.admin else who.user)
    matches = [r for r in visible if r.token_hash.startswith(token_id)]
    if not matches:
        raise NotFoundError(f"no token {token_id!r}" + ("" if who.admin else f" of user {who.user!r}"))
    if len(matches) > 1:
        raise ConflictError(
            f"token id {token_id!r} names {len(matches)} tokens; give more of it",
            [{"field": "token_id", "message": "one of: " + ", ".join(r.token_id for r in matches)}],
        )
    record = matches[0]
    if not store.delete_token(record.token_hash):
        raise NotFoundError(f"no token {token_id!r}")
    return record
