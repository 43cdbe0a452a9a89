"""The API token store: its interface, its DynamoDB table and its in-memory twin."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from chalicelib.store.edge import DynamoStore, get_or_none, share_botocore_loader, table_meta

if TYPE_CHECKING:
    from pynamodb.models import Model

    from chalicelib.config import Settings


#: characters of the hash that name a token in `token list` / `token revoke` (48 bits: unique in practice,
#: and the hash of a 256-bit random token reveals nothing of it)
TOKEN_ID_CHARS = 12


@dataclass(frozen=True)
class TokenRecord:
    token_hash: str
    user: str
    admin: bool
    created_at: datetime

    @property
    def token_id(self) -> str:
        return self.token_hash[:TOKEN_ID_CHARS]

    def to_api(self) -> dict:
        return {"token_id": self.token_id, "user": self.user, "admin": self.admin, "created_at": self.created_at}


class TokenStore(ABC):
    """API tokens, by the SHA-256 hash of the token (the token itself is never stored)."""

    @abstractmethod
    def put_token(self, record: TokenRecord) -> None: ...

    @abstractmethod
    def get_token(self, token_hash: str) -> TokenRecord | None: ...

    @abstractmethod
    def list_tokens(self, user: str | None = None) -> list[TokenRecord]:
        """Every token (of `user` when given), oldest first. The table holds one item per token: a
        deployment has tens to hundreds, so this reads it whole."""

    @abstractmethod
    def delete_token(self, token_hash: str) -> bool:
        """Remove a token; False if there was none. The next request with it is a 401."""

    def create_tables(self) -> None:
        """Create whatever backing tables are missing (tests, the local stack)."""


class InMemoryTokenStore(TokenStore):
    def __init__(self) -> None:
        self._tokens: dict[str, TokenRecord] = {}

    def put_token(self, record: TokenRecord) -> None:
        self._tokens[record.token_hash] = record

    def get_token(self, token_hash: str) -> TokenRecord | None:
        return self._tokens.get(token_hash)

    def list_tokens(self, user: str | None = None) -> list[TokenRecord]:
        found = [r for r in self._tokens.values() if user is None or r.user == user]
        return sorted(found, key=lambda r: (r.created_at, r.token_hash))

    def delete_token(self, token_hash: str) -> bool:
        return self._tokens.pop(token_hash, None) is not None


def build_models(settings: Settings) -> dict[str, type[Model]]:
    """The tokens table's model, bound to this deployment's table name and endpoint."""
    from pynamodb.attributes import BooleanAttribute, UnicodeAttribute, UTCDateTimeAttribute
    from pynamodb.models import Model

    class TokenModel(Model):
        class Meta(table_meta(settings)):
            table_name = settings.tokens_table

        token_hash = UnicodeAttribute(hash_key=True)
        user = UnicodeAttribute()
        admin = BooleanAttribute(default=False)
        created_at = UTCDateTimeAttribute()

    return {"tokens": TokenModel}


class DynamoTokenStore(DynamoStore, TokenStore):
    def __init__(self, settings: Settings) -> None:
        share_botocore_loader()
        self.models = build_models(settings)
        self.Token = self.models["tokens"]

    def put_token(self, record: TokenRecord) -> None:
        self.Token(record.token_hash, user=record.user, admin=record.admin, created_at=record.created_at).save()

    def get_token(self, token_hash: str) -> TokenRecord | None:
        item = get_or_none(self.Token, token_hash)
        return None if item is None else self._record(item)

    def list_tokens(self, user: str | None = None) -> list[TokenRecord]:
        condition = None if user is None else self.Token.user == user
        found = [self._record(item) for item in self.Token.scan(condition)]
        return sorted(found, key=lambda r: (r.created_at, r.token_hash))

    def delete_token(self, token_hash: str) -> bool:
        from pynamodb.exceptions import DeleteError

        try:
            self.Token(token_hash).delete(condition=self.Token.token_hash.exists())
        except DeleteError as exc:
            if getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    @staticmethod
    def _record(item) -> TokenRecord:
        return TokenRecord(item.token_hash, item.user, bool(item.admin), item.created_at)
