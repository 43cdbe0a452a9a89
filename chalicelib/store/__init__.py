"""Job store: one interface, a DynamoDB (pynamodb) implementation and an in-memory twin."""

from chalicelib.store.base import IdempotencyRecord, JobStore, Page, TokenRecord

__all__ = ["IdempotencyRecord", "JobStore", "Page", "TokenRecord"]
