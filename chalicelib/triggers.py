"""Upload triggers: S3 (and GCS) object-created events -> jobs, by checked-in rules."""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote_plus

from chalicelib.auth import USER_RE, Principal
from chalicelib.errors import ConfigError, JobplaneError

log = logging.getLogger("jobplane.triggers")


class UploadOutcome(str, Enum):
    """What became of one uploaded object."""

    #: it started the job its rule describes
    STARTED = "started"
    #: the same upload again (a redelivery, the same version): its job already exists
    DUPLICATE = "duplicate"
    #: written under a rule's outputs, by a job: it starts nothing, so jobs cannot loop
    OUTPUT = "output"
    #: no rule matches its bucket and key
    NO_RULE = "no_rule"
    #: a rule matches but its job cannot be submitted (invalid spec, backend not enabled): not retried
    INVALID = "invalid"


ROOT = Path(__file__).resolve().parents[1]
_TOKEN = re.compile(r"\{(bucket|key|stem)\}")
_cache: dict[str, tuple[float, tuple[Rule, ...]]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Upload:
    """One created object, as the notification named it (key already URL-decoded)."""

    bucket: str
    key: str
    version: str = ""  # versionId, else eTag
    sequencer: str = ""
    scheme: str = "s3"  # "s3" or "gs": a bucket name is unique only within its cloud

    @property
    def stem(self) -> str:
        return PurePosixPath(self.key).stem

    def idempotency_key(self) -> str:
        # A redelivered event carries the same bucket, key, version and sequencer: one job.
        # A new upload of the same key gets a new sequencer: a new job.
        raw = "\0".join((self.bucket, self.key, self.version, self.sequencer))
        return f"{self.scheme}-upload-" + hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class Rule:
    name: str
    bucket: str
    owner: str
    job: dict[str, Any]
    prefix: str = ""
    glob: str | None = None
    outputs: tuple[str, ...] = field(default_factory=tuple)  # prefixes in `bucket` that never trigger

    @property
    def scheme(self) -> str:
        return "gs" if self.bucket.startswith("gs://") else "s3"

    @property
    def bucket_name(self) -> str:
        return self.bucket.split("://", 1)[-1]

    def matches(self, upload: Upload) -> bool:
        """`bucket: name` or `s3://name` is an S3 bucket; `gs://name` a GCS bucket."""
        if (upload.scheme, upload.bucket) != (self.scheme, self.bucket_name) or not upload.key.startswith(self.prefix):
            return False
        return self.glob is None or fnmatch.fnmatchcase(upload.key, self.glob)

    def render(self, upload: Upload) -> dict[str, Any]:
        """The job spec for an upload: {bucket}, {key}, {stem} replaced; nothing else is interpreted."""
        values = {"bucket": upload.bucket, "key": upload.key, "stem": upload.stem}

        def sub(value: Any) -> Any:
            if isinstance(value, str):
                return _TOKEN.sub(lambda m: values[m.group(1)], value)
            if isinstance(value, list):
                return [sub(v) for v in value]
            if isinstance(value, dict):
                return {k: sub(v) for k, v in value.items()}
            return value

        # A raw document still: parse_spec, the edge, validates it next.
        document = sub(self.job)
        document["name"] = job_name(document.get("name") or self.name)
        labels = dict(document.get("labels") or {})
        labels.setdefault("trigger", job_name(self.name))
        document["labels"] = labels
        return document


def job_name(text: str) -> str:
    """A valid job name from any text (object keys are not): [a-z0-9-], 1..63."""
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    slug = re.sub(r"-{2,}", "-", slug)[:63].strip("-")
    return slug or "upload"


def parse_rules(data: Any, source: str = "triggers") -> tuple[Rule, ...]:
    """Validate the rules document; a bad rule is a ConfigError naming it (found at deploy, not at upload)."""
    from chalicelib.jobs.spec import parse_spec

    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise ConfigError(f"{source}: expected a mapping with a `rules` list")
    rules = []
    for i, raw in enumerate(data.get("rules") or []):
        where = f"{source}: rules[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: each rule is a mapping")
        unknown = set(raw) - {"name", "bucket", "prefix", "glob", "outputs", "owner", "job"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        for key in ("name", "bucket", "owner", "job"):
            if not raw.get(key):
                raise ConfigError(f"{where}: `{key}` is required")
        if not USER_RE.match(str(raw["owner"])):
            raise ConfigError(f"{where}: owner {raw['owner']!r} is not a valid user name")
        outputs = raw.get("outputs") or ()
        outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        rule = Rule(
            name=str(raw["name"]),
            bucket=str(raw["bucket"]),
            owner=str(raw["owner"]),
            job=dict(raw["job"]),
            prefix=str(raw.get("prefix") or ""),
            glob=raw.get("glob"),
            outputs=tuple(str(o) for o in outputs),
        )
        try:
            parse_spec(rule.render(Upload(rule.bucket_name, rule.prefix + "example/data.csv", "v", "s", rule.scheme)))
        except JobplaneError as exc:
            raise ConfigError(f"{where} ({rule.name}): the job template is not a valid spec: {exc.message}") from None
        rules.append(rule)
    return tuple(rules)


def load_rules(path: str) -> tuple[Rule, ...]:
    """The rules file, parsed once per container (again only when the file changes)."""
    import yaml

    file = Path(path)
    if not file.is_absolute():
        file = ROOT / file
    try:
        mtime = file.stat().st_mtime
    except FileNotFoundError:
        return ()
    with _lock:
        cached = _cache.get(str(file))
        if cached and cached[0] == mtime:
            return cached[1]
    rules = parse_rules(yaml.safe_load(file.read_text()) or {}, str(file.name))
    with _lock:
        _cache[str(file)] = (mtime, rules)
    return rules


def s3_uploads(event: dict[str, Any]) -> list[Upload]:
    """One Upload per ObjectCreated record; S3 percent-encodes keys (spaces as +) in notifications."""
    found = []
    for record in event.get("Records", []):
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            continue
        s3 = record.get("s3") or {}
        bucket = (s3.get("bucket") or {}).get("name")
        obj = s3.get("object") or {}
        key = obj.get("key")
        if bucket and key:
            version = str(obj.get("versionId") or obj.get("eTag") or "")
            found.append(Upload(bucket, unquote_plus(key), version, str(obj.get("sequencer") or "")))
    return found


def handle_upload(upload: Upload, rules: tuple[Rule, ...], service) -> dict[str, Any]:
    """Start the job the first matching rule describes; report what happened."""
    from chalicelib.jobs.spec import parse_spec

    result: dict[str, Any] = {"bucket": upload.bucket, "key": upload.key}
    # Jobs write under the rules' outputs: such objects never start anything (no loops).
    if any(
        (upload.scheme, upload.bucket) == (r.scheme, r.bucket_name) and upload.key.startswith(p)
        for r in rules
        for p in r.outputs
    ):
        return {**result, "outcome": UploadOutcome.OUTPUT.value}
    rule = next((r for r in rules if r.matches(upload)), None)
    if rule is None:
        return {**result, "outcome": UploadOutcome.NO_RULE.value}
    result["rule"] = rule.name
    try:
        spec = parse_spec(rule.render(upload))
        job, created = service.submit(Principal(rule.owner), spec, upload.idempotency_key())
    except JobplaneError as exc:
        # The object's name made an invalid spec, or the deployment cannot run it: retrying cannot help.
        log.warning("trigger %s on s3://%s/%s: %s", rule.name, upload.bucket, upload.key, exc.message)
        return {**result, "outcome": UploadOutcome.INVALID.value, "error": exc.message}
    outcome = UploadOutcome.STARTED if created else UploadOutcome.DUPLICATE
    return {**result, "outcome": outcome.value, "job_id": job.job_id}


def handle_s3_event(event: dict[str, Any], service) -> list[dict[str, Any]]:
    """on_upload: every ObjectCreated record of one S3 notification, by the checked-in rules."""
    rules = load_rules(service.settings.triggers_file)
    return [handle_upload(upload, rules, service) for upload in s3_uploads(event)]
