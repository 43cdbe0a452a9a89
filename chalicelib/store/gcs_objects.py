"""Packed code and a job's artifacts in Cloud Storage (Vertex, GCE), as S3Objects keeps them in S3.

Code for a Google Cloud backend goes to gs://<JOBPLANE_GCP_ARTIFACTS_BUCKET>/code/<sha256>.tar.gz through a
V4 signed PUT, as POST /code issues a presigned S3 PUT for the others. Artifacts come in
the same page shape as `S3Objects.list_artifacts` (keys relative to the artifacts URI, size, last modified,
a download URL, and an opaque cursor), through the official google-cloud-storage client: objects.list by
prefix, one page per call, and a V4 signed URL (GOOG4-RSA-SHA256) per object. The URLs are signed by the
API's own Google credentials: a service account's key signs them locally; credentials without a key (the
metadata server's, workload identity federation) sign through the IAM Credentials API's signBlob, as
google-cloud-storage does when given the account's email and an access token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.jobs import contract
from chalicelib.store.objects import MAX_ARTIFACTS_PAGE, Artifact, CodeUpload, _decode_cursor, _encode_cursor

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
STORAGE = "https://storage.googleapis.com"


def split_gs_uri(uri: str) -> tuple[str, str]:
    """gs://bucket/prefix -> (bucket, prefix); anything else is a ValueError."""
    if not uri.startswith("gs://"):
        raise ValueError(f"{uri!r} is not a gs:// URI")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket")
    return bucket, prefix


class GcsObjects:
    """A job's artifacts in Cloud Storage: `client` lists (a google.cloud.storage.Client), `signing` signs."""

    def __init__(
        self, client: Any, signing: Any, bucket: str, presign_seconds: int = 900, endpoint: str = STORAGE
    ) -> None:
        self.client = client
        self.signing = signing
        self.bucket = bucket
        self.presign_seconds = presign_seconds
        self.endpoint = endpoint.rstrip("/")

    @classmethod
    def from_settings(cls, settings) -> GcsObjects:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage

        from chalicelib.errors import BackendAuthError

        # The signer is always the deployment's own identity (Application Default Credentials); an emulator
        # or the tests' fake (JOBPLANE_GCP_API_ENDPOINT) is listed anonymously, as rest.py calls it.
        try:
            signing, project = google.auth.default(scopes=[SCOPE])
        except DefaultCredentialsError as exc:
            raise BackendAuthError(f"no Google credentials to reach Cloud Storage with: {exc}") from None
        endpoint = settings.gcp_api_endpoint or STORAGE
        if settings.gcp_api_endpoint:
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(
                project=settings.gcp_project or project,
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": endpoint},
            )
        else:
            client = storage.Client(project=settings.gcp_project or project, credentials=signing)
        return cls(client, signing, settings.gcp_artifacts_bucket, settings.presign_seconds, endpoint)

    # --- packed code -------------------------------------------------------------------------
    def code_uri(self, sha256: str) -> str:
        return f"gs://{self.bucket}/{contract.code_key(sha256)}"

    def size_of(self, uri: str) -> int | None:
        """The object's length in bytes (objects.get), or None when there is no such object or bucket."""
        from chalicelib.backends.gcp.errors import map_gcp_errors

        bucket, name = split_gs_uri(uri)
        with map_gcp_errors(f"reading {uri}"):
            from google.api_core import exceptions

            try:
                blob = self.client.bucket(bucket).get_blob(name)
            except exceptions.NotFound:
                return None
        return None if blob is None else int(blob.size or 0)

    def issue_code_upload(self, sha256: str, size: int, now: datetime | None = None) -> CodeUpload:
        """A V4 signed PUT for code/<sha256>.tar.gz, or exists=True when it is there. The URL signs the
        content type and `x-goog-content-length-range: size,size`, so Cloud Storage refuses a body of any other
        length; it cannot check a SHA-256, so the job's unpack checks code_sha256 before it unpacks."""
        uri = self.code_uri(sha256)
        if self.size_of(uri) is not None:
            return CodeUpload(uri, exists=True)
        from chalicelib.backends.gcp.errors import map_gcp_errors

        headers = {"Content-Type": "application/gzip", "x-goog-content-length-range": f"{size},{size}"}
        blob = self.client.bucket(self.bucket).blob(contract.code_key(sha256))
        with map_gcp_errors(f"signing an upload to {uri}"):
            url = self._sign(blob, method="PUT", headers=headers)
        expires = (now or datetime.now(UTC)) + timedelta(seconds=self.presign_seconds)
        return CodeUpload(uri, exists=False, url=url, headers=headers, expires_at=expires)

    # --- artifacts ---------------------------------------------------------------------------
    def _sign(self, blob, method: str = "GET", headers: dict[str, str] | None = None) -> str:
        from google.auth.credentials import Signing

        extra: dict[str, Any] = {}
        if isinstance(self.signing, Signing):
            extra["credentials"] = self.signing
        else:
            # No key here: the IAM Credentials API signs as the account (roles/iam.serviceAccountTokenCreator).
            import google.auth.transport.requests

            if not self.signing.valid:
                self.signing.refresh(google.auth.transport.requests.Request())
            extra["service_account_email"] = self.signing.service_account_email
            extra["access_token"] = self.signing.token
        return blob.generate_signed_url(
            version="v4",
            expiration=timedelta(seconds=self.presign_seconds),
            method=method,
            headers=headers,
            api_access_endpoint=self.endpoint,
            **extra,
        )

    def list_artifacts(
        self, artifacts_uri: str, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[Artifact], str | None]:
        """A page of the files under `artifacts_uri` (keys relative to it) and the cursor of the next page."""
        from google.api_core import exceptions

        from chalicelib.backends.gcp.errors import map_gcp_errors

        bucket, prefix = split_gs_uri(artifacts_uri)
        token = _decode_cursor(cursor, prefix) if cursor is not None else None
        with map_gcp_errors(f"listing {artifacts_uri}"):
            listing = self.client.list_blobs(
                bucket, prefix=prefix, max_results=min(limit, MAX_ARTIFACTS_PAGE), page_token=token
            )
            try:
                page = next(listing.pages, None)  # one objects.list call
                blobs = list(page) if page is not None else []
            except exceptions.NotFound:
                return [], None  # outputs named in a bucket nobody has made yet: nothing written there
            next_token = listing.next_page_token
            items = []
            for blob in blobs:
                relative = blob.name[len(prefix) :]
                if not relative or relative.endswith("/"):
                    continue  # a folder placeholder, not a file
                updated = blob.updated
                items.append(
                    Artifact(
                        relative,
                        int(blob.size or 0),
                        updated.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if updated else None,
                        self._sign(blob),
                    )
                )
        return items, (_encode_cursor(prefix, next_token) if next_token else None)
