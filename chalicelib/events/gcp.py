"""Google Cloud adapters: Pub/Sub CloudEvents (log sink entries, VM messages) and GCS uploads -> the core."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chalicelib.events import EventResult, Outcome, handle_state_change

log = logging.getLogger("jobplane.events.gcp")
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
GCS_FINALIZED = "google.cloud.storage.object.v1.finalized"
# Sources jobplane's own VMs publish under (a Pub/Sub attribute), as opposed to a provider's service name.
OWN_SOURCE_PREFIX = "jobplane."


@dataclass(frozen=True)
class PubsubMessage:
    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    message_id: str | None = None
    publish_time: str | None = None


def pubsub_message(data: dict[str, Any] | None) -> PubsubMessage | None:
    """The message of a messagePublished CloudEvent's data, or of a raw push body: both have
    {"message": {...}, "subscription": ...}; Google sends messageId/publishTime and their snake_case
    twins, and functions-framework's conversion of a raw push keeps only the camelCase ones."""
    message = (data or {}).get("message")
    if not isinstance(message, dict):
        return None
    try:
        payload = base64.b64decode(message.get("data") or "", validate=True)
    except (binascii.Error, ValueError):
        return None
    attributes = message.get("attributes") or {}
    return PubsubMessage(
        data=payload,
        attributes={str(k): str(v) for k, v in attributes.items()} if isinstance(attributes, dict) else {},
        message_id=message.get("messageId") or message.get("message_id"),
        publish_time=message.get("publishTime") or message.get("publish_time"),
    )


def state_hint(message: PubsubMessage, backends: Iterable[str] | None = None) -> dict[str, Any] | None:
    """An EventBridge-shaped {"source", "detail"} for handle_state_change, or None when the message is
    about nothing jobplane runs. Sources: a Cloud Logging sink (LogEntry JSON) or a jobplane VM.

    Routed by the GCP descriptors among `backends` (every registered one when None)."""
    try:
        body = json.loads(message.data or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    from chalicelib.backends import Cloud, descriptor, names

    # Only the named backends' modules are imported: a Cloud Function's cold start pays for its own.
    found = [descriptor(n) for n in (names() if backends is None else backends) if n in names()]
    gcp = [d for d in found if d.cloud is Cloud.GCP]
    vm_source = message.attributes.get("jobplane-source")
    if vm_source and vm_source.startswith(OWN_SOURCE_PREFIX) and any(vm_source in d.event_sources for d in gcp):
        native_id = message.attributes.get("jobplane-native-id") or body.get("native_id")
        return {"source": vm_source, "detail-type": "jobplane VM exit", "detail": {**body, "native_id": native_id}}
    resource_type = (body.get("resource") or {}).get("type")
    service_name = (body.get("protoPayload") or {}).get("serviceName")
    # A log entry is routed to the first GCP backend that owns its resource type or service, under
    # that backend's service name (its first event source).
    for d in gcp:
        logs = [s for s in d.event_sources if not s.startswith(OWN_SOURCE_PREFIX)]
        if logs and (resource_type in d.log_resource_types or service_name in logs):
            return {"source": logs[0], "detail-type": "Cloud Logging entry", "detail": body}
    return None


def handle_job_event(data: dict[str, Any] | None, service) -> EventResult:
    """One Pub/Sub message about a job's resource. It is a hint: the backend reads the resource's state
    from its API (parse_event) before the state machine sees anything, so duplicates, reordering and
    forged bodies cannot move a job by themselves."""
    message = pubsub_message(data)
    if message is None:
        return EventResult(Outcome.IGNORED, detail="not a Pub/Sub message with base64 data")
    hint = state_hint(message, service.settings.enabled_backends)
    if hint is None:
        return EventResult(Outcome.IGNORED, detail=f"message {message.message_id} is about nothing jobplane runs")
    return handle_state_change(hint, service)


# --- uploads -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GcsObject:
    bucket: str
    name: str
    generation: str | None
    metadata: dict[str, str]


def gcs_object(data: dict[str, Any] | None) -> GcsObject | None:
    """The object of a storage.object.v1.finalized CloudEvent (StorageObjectData; names are not encoded)."""
    data = data or {}
    if data.get("kind", "storage#object") != "storage#object" or not data.get("bucket") or not data.get("name"):
        return None
    generation = data.get("generation")
    metadata = data.get("metadata") or {}
    return GcsObject(
        bucket=str(data["bucket"]),
        name=str(data["name"]),
        generation=str(generation) if generation is not None else None,
        metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
    )


def handle_gcs_event(event_type: str, data: dict[str, Any] | None, service) -> list[dict[str, Any]]:
    """A finalized GCS object through the same trigger rules, dedup and loop protection as S3 uploads."""
    if event_type != GCS_FINALIZED:
        return []
    obj = gcs_object(data)
    if obj is None:
        return []
    from chalicelib.triggers import Upload, handle_upload, load_rules

    # The generation is new for every write of a name and the same on redelivery: one job per upload.
    upload = Upload(obj.bucket, obj.name, version=obj.generation or "", sequencer="", scheme="gs")
    return [handle_upload(upload, load_rules(service.settings.triggers_file), service)]
