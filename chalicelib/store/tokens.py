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


@dataclass(frozen=True)
class TokenRecord:
    token_hash: str
    user: str
    admin: bool
    created_at: datetime


class TokenStore(ABC):
    """API tokens, by the SHA-256 hash of the token (the token itself is never stored)."""

    @abstractmethod
    def put_token(self, record: TokenRecord) -> None: ...

    @abstractmethod
    def get_token(self, token_hash: str) -> TokenRecord | None: ...

    def create_tables(self) -> None:
        """Create whatever backing tables are missing (tests, the local stack)."""


class InMemoryTokenStore(TokenStore):
    def __init__(self) -> None:
        self._tokens: dict[str, TokenRecord] = {}

    def put_token(self, record: TokenRecord) -> None:
        self._tokens[record.token_hash] = record

    def get_token(self, token_hash: str) -> TokenRecord | None:
        return self._tokens.get(token_hash)


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
        if item is None:
            return None
        return TokenRecord(item.token_hash, item.user, bool(item.admin), item.created_at)
