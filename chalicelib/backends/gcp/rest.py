"""The Google API calls a cold event makes, as documented REST requests through google-auth's AuthorizedSession.

`google.cloud.compute_v1` takes ~2 s to import and `aiplatform_v1` ~1 s (every service's proto-plus types),
more than a Cloud Function's whole first event may take; a job's event needs only a few calls on one
resource. These are those calls, by the APIs' own REST paths and JSON (camelCase, enums as names); errors
are raised as google.api_core exceptions by `from_http_response`, as the client libraries' REST transport
raises them, so `errors.map_gcp_errors` translates them the same way.

  compute v1  instances.get, setLabels, stop, delete   /compute/v1/projects/P/zones/Z/instances/I[/verb]
  aiplatform  projects.locations.customJobs.get        GET /v1/projects/P/locations/L/customJobs/N
  storage     objects.get, alt=media                   GET /download/storage/v1/b/B/o/<object, percent-encoded>
"""

from __future__ import annotations

import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

from chalicelib.config import Settings

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
COMPUTE = "https://compute.googleapis.com"
STORAGE = "https://storage.googleapis.com"
TIMEOUT_SECONDS = 30

_lock = threading.Lock()
_sessions: dict[bool, Any] = {}


def session(settings: Settings):
    """This process's AuthorizedSession: Application Default Credentials, or anonymous for a fake/emulator."""
    anonymous = bool(settings.gcp_api_endpoint)
    with _lock:
        if anonymous not in _sessions:
            from google.auth.transport.requests import AuthorizedSession

            if anonymous:
                from google.auth.credentials import AnonymousCredentials

                credentials = AnonymousCredentials()
            else:
                import google.auth

                credentials, _ = google.auth.default(scopes=[SCOPE])
            _sessions[anonymous] = AuthorizedSession(credentials)
        return _sessions[anonymous]


def request(settings: Settings, method: str, url: str, *, body: dict | None = None, params=None, missing_ok=False):
    """One call: the JSON answer (bytes for media), None for a 404 when `missing_ok`; any other HTTP error
    is raised as the google.api_core exception of its status, as the client libraries raise it."""
    response = session(settings).request(method, url, json=body, params=params, timeout=TIMEOUT_SECONDS)
    if response.status_code == 404 and missing_ok:
        return None
    if response.status_code >= 400:
        from google.api_core import exceptions

        raise exceptions.from_http_response(response)
    if (params or {}).get("alt") == "media":
        return response.content
    return response.json() if response.content else {}


# --- compute v1 instances -------------------------------------------------------------------------
@dataclass(frozen=True)
class Instance:
    """The fields of a compute v1 Instance that jobplane reads, with proto3's defaults for absent ones."""

    name: str
    id: str
    status: str
    labels: dict[str, str]
    label_fingerprint: str
    last_start_timestamp: str
    provisioning_model: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instance:
        return cls(
            name=str(data.get("name") or ""),
            id=str(data.get("id") or ""),
            status=str(data.get("status") or ""),
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
            label_fingerprint=str(data.get("labelFingerprint") or ""),
            last_start_timestamp=str(data.get("lastStartTimestamp") or ""),
            provisioning_model=str((data.get("scheduling") or {}).get("provisioningModel") or ""),
        )


class Instances:
    """compute v1 instances.get / setLabels / stop / delete, keyword for keyword like InstancesClient, except
    that get and delete answer None for an instance that does not exist (InstancesClient raises NotFound)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _url(self, project: str, zone: str, instance: str, verb: str = "") -> str:
        base = (self.settings.gcp_api_endpoint or COMPUTE).rstrip("/")
        project, zone, instance = (urllib.parse.quote(p, safe="") for p in (project, zone, instance))
        url = f"{base}/compute/v1/projects/{project}/zones/{zone}/instances/{instance}"
        return f"{url}/{verb}" if verb else url

    def get(self, project: str, zone: str, instance: str) -> Instance | None:
        found = request(self.settings, "GET", self._url(project, zone, instance), missing_ok=True)
        return None if found is None else Instance.from_json(found)

    def set_labels(self, project: str, zone: str, instance: str, labels: dict[str, str], label_fingerprint: str):
        body = {"labels": labels, "labelFingerprint": label_fingerprint}
        return request(self.settings, "POST", self._url(project, zone, instance, "setLabels"), body=body)

    def stop(self, project: str, zone: str, instance: str):
        return request(self.settings, "POST", self._url(project, zone, instance, "stop"))

    def delete(self, project: str, zone: str, instance: str):
        return request(self.settings, "DELETE", self._url(project, zone, instance), missing_ok=True)

    def operation(self, project: str, zone: str, operation: str) -> dict[str, Any] | None:
        """zoneOperations.get: the Operation JSON (`status`, and `error.errors` once it failed), None if gone."""
        base = (self.settings.gcp_api_endpoint or COMPUTE).rstrip("/")
        project, zone, operation = (urllib.parse.quote(p, safe="") for p in (project, zone, operation))
        url = f"{base}/compute/v1/projects/{project}/zones/{zone}/operations/{operation}"
        return request(self.settings, "GET", url, missing_ok=True)


# --- aiplatform v1 customJobs ------------------------------------------------------------------------
def get_custom_job(settings: Settings, name: str) -> dict[str, Any] | None:
    """projects.locations.customJobs.get: the CustomJob's JSON, or None when there is no such job."""
    # the job's own region's endpoint: projects/P/locations/L/customJobs/N
    parts = name.split("/")
    region = parts[3] if len(parts) > 3 and parts[2] == "locations" else settings.gcp_region
    host = f"https://{region}-aiplatform.googleapis.com"
    base = (settings.gcp_api_endpoint or host).rstrip("/")
    return request(settings, "GET", f"{base}/v1/{urllib.parse.quote(name, safe='/')}", missing_ok=True)


# --- storage objects -----------------------------------------------------------------------------------
def download(settings: Settings, bucket: str, name: str) -> bytes | None:
    """objects.get with alt=media: the object's bytes, or None when it does not exist."""
    base = (settings.gcp_api_endpoint or STORAGE).rstrip("/")
    url = f"{base}/download/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/{urllib.parse.quote(name, safe='')}"
    return request(settings, "GET", url, params={"alt": "media"}, missing_ok=True)
