"""The stage's object store (S3): upload URLs for packed code, a job's artifacts listed with download URLs."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.errors import ValidationError
from chalicelib.jobs import contract

MAX_ARTIFACTS_PAGE = 1000


def split_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key); anything else is a ValueError."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket")
    return bucket, key


@dataclass(frozen=True)
class CodeUpload:
    """What POST /code answers: where the code lives and, unless it is there already, how to put it there."""

    code_uri: str
    exists: bool
    url: str | None = None
    headers: dict[str, str] | None = None
    expires_at: datetime | None = None

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code_uri": self.code_uri, "exists": self.exists, "upload": None}
        if not self.exists:
            body["upload"] = {
                "method": "PUT",
                "url": self.url,
                "headers": self.headers,
                "expires_at": self.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") if self.expires_at else None,
            }
        return body


@dataclass(frozen=True)
class Artifact:
    """One file a job wrote to $JOBPLANE_OUTPUT_DIR: its path below artifacts_uri, size and a download URL."""

    key: str
    size: int
    last_modified: str | None
    url: str

    def to_api(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "last_modified": self.last_modified, "url": self.url}


def parse_code_request(body: Any, max_mb: int) -> tuple[str, int]:
    """POST /code's body, {"sha256": 64 hex digits, "size": bytes}, checked field by field."""
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object", [{"field": "(body)", "message": "a JSON object"}])
    unknown = sorted(set(body) - {"sha256", "size", "backend"})
    if unknown:
        raise ValidationError(
            f"unknown field {unknown[0]!r}", [{"field": unknown[0], "message": "valid fields: sha256, size, backend"}]
        )
    sha = body.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValidationError(
            "sha256 must be the packed code's SHA-256 digest",
            [{"field": "sha256", "message": "64 lowercase hexadecimal digits"}],
        )
    size = body.get("size")
    limit = max_mb * 1024 * 1024
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValidationError(
            "size must be the packed code's length in bytes", [{"field": "size", "message": "a positive integer"}]
        )
    if size > limit:
        raise ValidationError(
            f"packed code of {size} bytes is over this deployment's limit of {max_mb} MB (JOBPLANE_CODE_MAX_MB)",
            [{"field": "size", "message": f"at most {limit} bytes ({max_mb} MB, JOBPLANE_CODE_MAX_MB)"}],
        )
    return sha, size


def _encode_cursor(prefix: str, token: str) -> str:
    raw = json.dumps({"p": prefix, "t": token}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, prefix: str) -> str:
    bad = ValidationError(
        "cursor is not valid", [{"field": "cursor", "message": "pass the next_cursor the previous page returned"}]
    )
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if not isinstance(data, dict) or data.get("p") != prefix or not isinstance(data.get("t"), str):
        raise bad
    return data["t"]


class S3Objects:
    """Packed code and artifacts in S3, through one botocore client (passed in, so tests choose the endpoint)."""

    def __init__(self, client: Any, bucket: str, presign_seconds: int = 900) -> None:
        self.client = client
        self.bucket = bucket
        self.presign_seconds = presign_seconds

    @classmethod
    def from_settings(cls, settings) -> S3Objects:
        from botocore.config import Config

        from chalicelib import aws_session

        # Signature V4: an upload URL then signs the length and checksum headers S3 is to enforce.
        config = Config(signature_version="s3v4")
        client = aws_session.client("s3", settings.region, settings.aws_endpoint_url, config=config)
        return cls(client, settings.artifacts_bucket, settings.presign_seconds)

    # --- packed code -------------------------------------------------------------------------
    def code_uri(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{contract.code_key(sha256)}"

    def size_of(self, uri: str) -> int | None:
        """The object's length in bytes, or None when there is no such object.

        A listing of exactly its key rather than a HEAD: without s3:ListBucket on a key, S3 answers a HEAD
        of a missing object with 403, and the policy grants ListBucket only below code/ and outputs/."""
        from botocore.exceptions import ClientError

        from chalicelib.backends.aws.errors import aws_errors

        bucket, key = split_s3_uri(uri)
        with aws_errors("s3", "ListObjectsV2"):
            try:
                page = self.client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                    return None
                raise
        found = [obj for obj in page.get("Contents", []) if obj["Key"] == key]
        return int(found[0]["Size"]) if found else None

    def issue_code_upload(self, sha256: str, size: int, now: datetime | None = None) -> CodeUpload:
        """An upload URL for code/<sha256>.tar.gz of exactly `size` bytes, or exists=True when it is there.

        The URL signs Content-Length and the body's SHA-256 (x-amz-checksum-sha256): S3 refuses any
        other body, so what lands under a digest's key is what has that digest."""
        uri = self.code_uri(sha256)
        found = self.size_of(uri)
        if found is not None:
            return CodeUpload(uri, exists=True)
        from chalicelib.backends.aws.errors import aws_errors

        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        with aws_errors("s3", "PutObject"):
            url = self.client.generate_presigned_url(
                "put_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": contract.code_key(sha256),
                    "ContentLength": size,
                    "ContentType": "application/gzip",
                    "ChecksumSHA256": checksum,
                },
                ExpiresIn=self.presign_seconds,
            )
        headers = {
            "Content-Length": str(size),
            "Content-Type": "application/gzip",
            "x-amz-checksum-sha256": checksum,
        }
        expires = (now or datetime.now(UTC)) + timedelta(seconds=self.presign_seconds)
        return CodeUpload(uri, exists=False, url=url, headers=headers, expires_at=expires)

    # --- artifacts ---------------------------------------------------------------------------
    def list_artifacts(
        self, artifacts_uri: str, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[Artifact], str | None]:
        """A page of the files under `artifacts_uri` (keys relative to it) and the cursor of the next page."""
        from chalicelib.backends.aws.errors import aws_errors

        bucket, prefix = split_s3_uri(artifacts_uri)
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": min(limit, MAX_ARTIFACTS_PAGE)}
        if cursor is not None:
            params["ContinuationToken"] = _decode_cursor(cursor, prefix)
        from botocore.exceptions import ClientError

        with aws_errors("s3", "ListObjectsV2"):
            try:
                page = self.client.list_objects_v2(**params)
            except ClientError as exc:
                # Outputs named in a bucket nobody has made yet: the job has written nothing there.
                if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                    return [], None
                raise
        items = []
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(prefix) :]
            if not relative or relative.endswith("/"):
                continue  # a folder marker, not a file
            with aws_errors("s3", "GetObject"):
                url = self.client.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": obj["Key"]}, ExpiresIn=self.presign_seconds
                )
            modified = obj.get("LastModified")
            items.append(
                Artifact(
                    relative,
                    int(obj.get("Size", 0)),
                    modified.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if modified else None,
                    url,
                )
            )
        token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        return items, (_encode_cursor(prefix, token) if token else None)
