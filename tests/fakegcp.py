"""A fake of the Vertex AI, Compute Engine and Cloud Storage REST APIs on a loopback port.

The real client libraries talk to it (JOBPLANE_GCP_API_ENDPOINT=http://127.0.0.1:PORT), so every request
is built by the library from its own types and serialised as the API's JSON; the fake records each one.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _error(code: int, status: str, message: str, reason: str | None = None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        body["errors"] = [{"message": message, "domain": "global", "reason": reason}]
    return code, {"error": body}


def _label_filter(text: str) -> dict[str, str]:
    return dict(re.findall(r'labels\.([a-z0-9_-]+)="([^"]*)"', text or ""))


_AFTER = re.compile(r'\(timestamp > "([^"]*)" OR \(timestamp = "([^"]*)" AND insertId > "([^"]*)"\)\)')


def _entry_matches(entry: dict[str, Any], text: str) -> bool:
    """The parts of the logging query language jobplane's filters use: resource.type, resource.labels.K,
    labels."K" (the entry's own), and the cursor `(timestamp > T OR (timestamp = T AND insertId > I))`
    (timestamps compared as the RFC 3339 strings they are, all in UTC here)."""
    resource = entry.get("resource") or {}
    kind = re.search(r'resource\.type="([^"]*)"', text)
    if kind and resource.get("type") != kind[1]:
        return False
    for key, value in re.findall(r'resource\.labels\.([a-z_]+)="([^"]*)"', text):
        if (resource.get("labels") or {}).get(key) != value:
            return False
    for key, value in re.findall(r'\blabels\."([^"]+)"="([^"]*)"', text):  # the entry's own labels
        if (entry.get("labels") or {}).get(key) != value:
            return False
    after = _AFTER.search(text)
    if after:
        ts, insert_id = entry.get("timestamp", ""), entry.get("insertId", "")
        return ts > after[1] or (ts == after[2] and insert_id > after[3])
    return True


class FakeGcp:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.custom_jobs: dict[str, dict[str, Any]] = {}
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}  # (zone, name) -> Instance JSON
        self.objects: dict[tuple[str, str], bytes] = {}
        self.guest_attributes: dict[str, dict[str, str]] = {}
        self.log_entries: list[dict[str, Any]] = []  # LogEntry JSON, served by entries.list in order
        self.fail_next: list[tuple[int, dict[str, Any]]] = []  # responses to give instead, in order
        self.operations: dict[tuple[str, str], dict[str, Any]] = {}  # (zone, name) -> Operation JSON
        # Errors the next zone operations end with, in order (Operation.error, e.g. a GPU stockout); an
        # insert that fails this way leaves no instance, as on Compute Engine.
        self.operation_errors: list[dict[str, Any]] = []
        # Compute Engine's regions (regions.get): their quotas (metric, limit, usage) and zone names, by region.
        self.region_quotas: dict[str, list[dict[str, Any]]] = {}
        self.region_zones: dict[str, list[str]] = {}
        # A service account's public key per email: a V4 signed URL verifies against it (tests add theirs).
        self.signing_keys: dict[str, Any] = {}
        self._ids = 1000
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # --- server ---------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeGcp:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                query = dict(urllib.parse.parse_qsl(url.query))
                path = urllib.parse.unquote(url.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, body = fake.handle(self.command, path, query, raw, headers)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type", "application/octet-stream" if isinstance(body, bytes) else "application/json"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # --- routing -------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], raw: bytes, headers: dict[str, str] | None = None):
        body = json.loads(raw) if raw and raw[:1] in (b"{", b"[") else None
        with self._lock:
            self.requests.append({"method": method, "path": path, "query": query, "body": body})
            if self.fail_next:
                return self.fail_next.pop(0)
            if method in ("GET", "PUT") and "X-Goog-Signature" in query:
                return self._signed(method, path, query, headers or {}, raw)
            return self._route(method, path, query, body)

    def _route(self, method, path, query, body):
        m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+)/customJobs(?:/(\d+))?(:cancel)?", path)
        if m:
            return self._vertex(method, m[1], m[2], m[3], query, body)
        m = re.fullmatch(r"/compute/v1/projects/([^/]+)/aggregated/instances", path)
        if m and method == "GET":
            wanted = _label_filter(query.get("filter", ""))
            items: dict[str, Any] = {}
            for (zone, _), inst in sorted(self.instances.items()):
                if all(inst.get("labels", {}).get(k) == v for k, v in wanted.items()):
                    items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(inst)
            return 200, {"kind": "compute#instanceAggregatedList", "items": items}
        m = re.fullmatch(r"/compute/v1/projects/([^/]+)/regions/([^/]+)", path)
        if m and method == "GET":
            # regions.get: a Region, its quotas as Compute Engine lists them (metric, limit, usage)
            if m[2] not in self.region_quotas and m[2] not in self.region_zones:
                return _error(404, "NOT_FOUND", f"The resource 'regions/{m[2]}' was not found", "notFound")
            zones = [
                f"https://www.googleapis.com/compute/v1/projects/{m[1]}/zones/{z}"
                for z in self.region_zones.get(m[2], [])
            ]
            quotas = self.region_quotas.get(m[2], [])
            return 200, {"kind": "compute#region", "name": m[2], "status": "UP", "zones": zones, "quotas": quotas}
        m = re.fullmatch(r"/compute/v1/projects/([^/]+)/zones/([^/]+)/operations/([^/]+)", path)
        if m and method == "GET":
            # zoneOperations.get: the operation as it is now (DONE once the fake finished it, with its error)
            operation = self.operations.get((m[2], m[3]))
            if operation is None:
                return _error(404, "NOT_FOUND", f"The resource 'operations/{m[3]}' was not found", "notFound")
            return 200, operation
        m = re.fullmatch(r"/compute/v1/projects/([^/]+)/zones/([^/]+)/instances(?:/([^/]+))?(?:/([A-Za-z]+))?", path)
        if m:
            return self._compute(method, m[1], m[2], m[3], m[4], query, body)
        m = re.fullmatch(r"/storage/v1/b/([^/]+)/o", path)
        if m and method == "GET":
            return self._list_objects(m[1], query)
        m = re.fullmatch(r"(?:/download)?/storage/v1/b/([^/]+)/o/(.+)", path)
        if m and method == "GET":
            data = self.objects.get((m[1], m[2]))
            if data is None:
                return _error(404, "NOT_FOUND", f"No such object: {m[1]}/{m[2]}", "notFound")
            if query.get("alt") == "media":
                return 200, data
            return 200, {
                "kind": "storage#object",
                "bucket": m[1],
                "name": m[2],
                "size": str(len(data)),
                "generation": "1",
            }
        if path == "/v2/entries:list" and method == "POST":
            # ListLogEntriesResponse: `entries` and, while more remain, `nextPageToken` (an offset here).
            start = int((body or {}).get("pageToken") or 0)
            size = int((body or {}).get("pageSize") or 50)
            matching = [e for e in self.log_entries if _entry_matches(e, (body or {}).get("filter") or "")]
            page = matching[start : start + size]
            answer: dict[str, Any] = {"entries": page}
            if start + size < len(matching):
                answer["nextPageToken"] = str(start + size)
            return 200, answer
        return _error(404, "NOT_FOUND", f"fake has no route for {method} {path}")

    # --- Cloud Storage: objects.list and V4 signed URLs -----------------------------------------------
    def _list_objects(self, bucket: str, query: dict[str, str]):
        """objects.list: `items` (Object resources, names in lexicographic order) below `prefix`, at most
        `maxResults` of them (1000 by default), and `nextPageToken` while more remain (an offset here)."""
        prefix = query.get("prefix", "")
        names = sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix))
        start = int(query.get("pageToken") or 0)
        size = min(int(query.get("maxResults") or 1000), 1000)
        answer: dict[str, Any] = {"kind": "storage#objects"}
        items = [
            {
                "kind": "storage#object",
                "id": f"{bucket}/{name}/1",
                "name": name,
                "bucket": bucket,
                "generation": "1",
                "size": str(len(self.objects[(bucket, name)])),
                "updated": "2026-01-02T03:04:05.678Z",
            }
            for name in names[start : start + size]
        ]
        if items:
            answer["items"] = items
        if start + size < len(names):
            answer["nextPageToken"] = str(start + size)
        return 200, answer

    def _signed(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes):
        """GET or PUT /<bucket>/<object> with a V4 signature (GOOG4-RSA-SHA256): the string to sign rebuilt
        from the request as Google documents it (canonical request: the signed headers as sent, then
        UNSIGNED-PAYLOAD), verified against the key of the email in X-Goog-Credential; an expired or forged URL,
        or a signed header sent otherwise, gets Cloud Storage's 400/403. A PUT honours a signed
        x-goog-content-length-range."""
        import hashlib
        from datetime import UTC, datetime, timedelta

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if query.get("X-Goog-Algorithm") != "GOOG4-RSA-SHA256":
            return _error(400, "INVALID_ARGUMENT", "unsupported X-Goog-Algorithm")
        email, _, scope = query.get("X-Goog-Credential", "").partition("/")
        key = self.signing_keys.get(email)
        if key is None:
            return _error(403, "PERMISSION_DENIED", f"no such service account: {email}")
        stamp = query.get("X-Goog-Date", "")
        signed = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if datetime.now(UTC) > signed + timedelta(seconds=int(query.get("X-Goog-Expires", "0"))):
            return _error(400, "EXPIRED", "Request has expired")
        canonical_query = "&".join(
            f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}"
            for k, v in sorted(query.items())
            if k != "X-Goog-Signature"
        )
        signed_headers = query.get("X-Goog-SignedHeaders", "")
        lines = [f"{name}:{' '.join(headers.get(name, '').split())}" for name in signed_headers.split(";")]
        canonical = "\n".join(
            [method, urllib.parse.quote(path, safe="/~"), canonical_query, "\n".join(lines), "", signed_headers]
            + ["UNSIGNED-PAYLOAD"]
        )
        to_sign = "\n".join(["GOOG4-RSA-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        try:
            key.verify(bytes.fromhex(query["X-Goog-Signature"]), to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
        except Exception:  # noqa: BLE001 - InvalidSignature or a malformed one: what GCS answers
            return 403, {"error": {"code": 403, "message": "SignatureDoesNotMatch", "status": "PERMISSION_DENIED"}}
        bucket, _, name = path.lstrip("/").partition("/")
        if method == "PUT":
            low, _, high = headers.get("x-goog-content-length-range", f"0,{len(raw)}").partition(",")
            if not int(low) <= len(raw) <= int(high):
                return _error(400, "INVALID_ARGUMENT", "EntityTooLarge" if len(raw) > int(high) else "EntityTooSmall")
            self.objects[(bucket, name)] = raw
            return 200, b""
        data = self.objects.get((bucket, name))
        if data is None:
            return _error(404, "NOT_FOUND", "NoSuchKey")
        return 200, data

    def _vertex(self, method, parent, job_id, cancel, query, body):
        if job_id is None and method == "POST":
            self._ids += 1
            name = f"{parent}/customJobs/{self._ids}"
            job = {**body, "name": name, "state": "JOB_STATE_PENDING", "createTime": "2025-01-01T00:00:00Z"}
            self.custom_jobs[name] = job
            return 200, job
        if job_id is None and method == "GET":
            wanted_name = re.search(r'display_name="([^"]*)"', query.get("filter", ""))
            labels = _label_filter(query.get("filter", ""))
            found = [
                j
                for j in self.custom_jobs.values()
                if (wanted_name is None or j.get("displayName") == wanted_name[1])
                and all(j.get("labels", {}).get(k) == v for k, v in labels.items())
            ]
            return 200, {"customJobs": found} if found else {}
        name = f"{parent}/customJobs/{job_id}"
        job = self.custom_jobs.get(name)
        if job is None:
            return _error(404, "NOT_FOUND", f"CustomJob {name} not found")
        if cancel and method == "POST":
            if job["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
                return _error(400, "FAILED_PRECONDITION", "job is already in a terminal state")
            job["state"] = "JOB_STATE_CANCELLING"
            return 200, {}
        return 200, job

    def _operation(self, project, zone, name, kind):
        """An Operation as instances.insert/stop/start/... return it (RUNNING), kept for zoneOperations.get."""
        self._ids += 1
        base = f"https://www.googleapis.com/compute/v1/projects/{project}/zones/{zone}"
        op = {
            "kind": "compute#operation",
            "id": str(self._ids),
            "name": f"operation-{self._ids}",
            "operationType": kind,
            "status": "RUNNING",
            "progress": 0,
            "insertTime": "2025-01-01T00:00:00.000-08:00",
            "startTime": "2025-01-01T00:00:00.000-08:00",
            "zone": base,
            "targetLink": f"{base}/instances/{name}",
            "selfLink": f"{base}/operations/operation-{self._ids}",
        }
        # The call answers RUNNING, as Compute Engine does; zoneOperations.get then finds it DONE (a test may
        # set it back to RUNNING), ending with the next queued error if there is one.
        done = {**op, "status": "DONE", "progress": 100, "endTime": "2025-01-01T00:00:30.000-08:00"}
        if self.operation_errors:
            done.update(self.operation_errors.pop(0))
            if kind == "insert":
                self.instances.pop((zone, name), None)
        self.operations[(zone, op["name"])] = done
        return 200, op

    def stockout_insert(self, zone: str, instance: str) -> dict[str, Any]:
        """The insert of `instance` ends as Compute Engine ends one with no capacity: the operation DONE with
        ZONE_RESOURCE_POOL_EXHAUSTED, and no VM."""
        self.instances.pop((zone, instance), None)
        operation = next(
            o
            for o in reversed(self.operations.values())
            if o["operationType"] == "insert" and o["targetLink"].endswith(f"/instances/{instance}")
        )
        message = (
            f"The zone '{operation['zone'].split('/compute/v1/')[1]}' does not have enough resources available to "
            "fulfill the request.  Try a different zone, or try again later."
        )
        operation.update(
            status="DONE", error={"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": message}]}
        )
        return operation

    def _compute(self, method, project, zone, name, verb, query, body):
        if name is None and method == "POST":
            key = (zone, body["name"])
            if key in self.instances:
                return _error(
                    409,
                    "ALREADY_EXISTS",
                    f"The resource 'projects/{project}/zones/{zone}/instances/{body['name']}' already exists",
                    "alreadyExists",
                )
            self._ids += 1
            self.instances[key] = {
                **body,
                "id": str(self._ids),
                "status": "PROVISIONING",
                "zone": f"https://www.googleapis.com/compute/v1/projects/{project}/zones/{zone}",
                "creationTimestamp": "2025-01-01T00:00:00.000-00:00",
                "labelFingerprint": "fp-0",
            }
            # The VM exists at once here, so its insert is done (Compute Engine finishes it once the VM is made).
            return self._operation(project, zone, body["name"], "insert")
        inst = self.instances.get((zone, name))
        if inst is None:
            return _error(
                404,
                "NOT_FOUND",
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
                "notFound",
            )
        if verb is None and method == "GET":
            return 200, inst
        if verb is None and method == "DELETE":
            del self.instances[(zone, name)]
            return self._operation(project, zone, name, "delete")
        if verb == "stop":
            inst["status"] = "TERMINATED"
            return self._operation(project, zone, name, "stop")
        if verb == "start" and method == "POST":
            inst["status"] = "RUNNING"
            inst["lastStartTimestamp"] = "2025-01-01T01:00:00.000-08:00"
            return self._operation(project, zone, name, "start")
        if verb == "setLabels":
            if body.get("labelFingerprint") != inst["labelFingerprint"]:
                return _error(
                    412,
                    "FAILED_PRECONDITION",
                    "Labels fingerprint either invalid or resource labels have changed",
                    "conditionNotMet",
                )
            inst["labels"] = body.get("labels", {})
            inst["labelFingerprint"] = f"fp-{int(inst['labelFingerprint'][3:]) + 1}"
            return self._operation(project, zone, name, "setLabels")
        if verb == "getGuestAttributes":
            values = self.guest_attributes.get(name)
            if values is None:
                return _error(404, "NOT_FOUND", "The resource 'guest attributes' was not found", "notFound")
            items = [{"namespace": "jobplane", "key": k, "value": v} for k, v in sorted(values.items())]
            return 200, {
                "kind": "compute#guestAttributes",
                "queryPath": query.get("queryPath"),
                "queryValue": {"items": items},
            }
        return _error(400, "INVALID_ARGUMENT", f"fake does not do {method} {verb}")

    # --- helpers for tests --------------------------------------------------------------------
    def stockout(self, zone: str = "us-central1-a") -> None:
        """The next zone operation ends as a GPU stockout does: Operation.error with its documented code."""
        message = (
            f"The zone 'projects/my-project/zones/{zone}' does not have enough resources available to fulfill "
            "the request. Try a different zone, or try again later."
        )
        self.operation_errors.append(
            {
                "error": {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": message}]},
                "httpErrorStatusCode": 503,
                "httpErrorMessage": "SERVICE UNAVAILABLE",
            }
        )

    def bodies(self, method: str, pattern: str) -> list[Any]:
        return [r["body"] for r in self.requests if r["method"] == method and re.search(pattern, r["path"])]

    def set_status_object(self, status_uri: str, native_id: str, status: dict[str, Any]) -> None:
        bucket, _, prefix = status_uri[len("gs://") :].partition("/")
        self.objects[(bucket, f"{prefix.strip('/')}/{native_id}/exit.json".lstrip("/"))] = json.dumps(status).encode()


class VertexEndpointsSession:
    """Stands in for the requests session of aiplatform_v1's REST transport (and rest.py's): Vertex models,
    endpoints and deployed models as the v1 REST API shapes them, Cloud Monitoring time series as given.

    Operations answer done at once, unless `hold_operations` is set: then deployModel and undeployModel answer
    a running google.longrunning Operation (named under the endpoint, as Vertex names them) that `finish()` ends,
    with an error or with the change made; `predict` (instances -> predictions) plays the serving container."""

    def __init__(self, project: str, region: str = "us-central1") -> None:
        self.parent = f"projects/{project}/locations/{region}"
        self.models: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.time_series_pages: list[dict[str, Any]] = []
        self.refuse_deploys = False
        self.predict = lambda instances: [{"echo": i} for i in instances]
        self.hold_operations = False
        self.operations: dict[str, dict[str, Any]] = {}
        self._held: dict[str, Callable[[], None]] = {}

    def _operation(self, endpoint: str, verb: str, change: Callable[[], None]) -> dict[str, Any]:
        """A deployModel / undeployModel Operation in the published JSON shape (metadata typed by its @type)."""
        name = f"{endpoint}/operations/{len(self.operations) + 1000}"
        metadata = {
            "@type": f"type.googleapis.com/google.cloud.aiplatform.v1.{verb}OperationMetadata",
            "genericMetadata": {"createTime": "2026-12-02T10:00:00Z", "updateTime": "2026-12-02T10:00:00Z"},
        }
        operation = {"name": name, "metadata": metadata, "done": not self.hold_operations}
        if self.hold_operations:
            self._held[name] = change
        else:
            change()
        self.operations[name] = operation
        return operation

    def finish(self, name: str, error: dict[str, Any] | None = None) -> None:
        """End a held operation: with `error` (google.rpc.Status: code, message) nothing changed; else the change."""
        change = self._held.pop(name)
        self.operations[name]["done"] = True
        if error is not None:
            self.operations[name]["error"] = error
        else:
            change()

    def install(self, backend) -> VertexEndpointsSession:
        from google.api_core.gapic_v1.client_info import ClientInfo

        for kind in ("model", "endpoint", "prediction"):
            transport = backend.client(kind)._transport
            transport._session = self
            # The transport keys its wrapped methods by stubs that hold the session: wrap them again.
            transport._prep_wrapped_messages(ClientInfo())
        return self

    # requests.Session's verbs, as the transport and rest.request call them
    def get(self, url, **kw):
        return self.request("GET", url, **kw)

    def post(self, url, **kw):
        return self.request("POST", url, **kw)

    def delete(self, url, **kw):
        return self.request("DELETE", url, **kw)

    def request(self, method, url, *, data=None, json=None, params=None, **_):
        import json as jsonlib
        import urllib.parse

        path = urllib.parse.urlsplit(url).path
        body = json if json is not None else (jsonlib.loads(data) if data else None)
        self.requests.append({"method": method.upper(), "path": path, "params": dict(params or {}), "body": body})
        status, answer = self._route(method.upper(), path, dict(params or {}), body)
        return _response(method, url, status, answer)

    def _route(self, method, path, params, body):
        import base64

        prefix = f"/v1/{self.parent}"
        if path.startswith("/v3/projects/") and path.endswith("/timeSeries"):
            return 200, self.time_series_pages.pop(0) if self.time_series_pages else {}
        if path == f"{prefix}/models:upload":
            name = f"{self.parent}/models/{body['modelId']}"
            if name in self.models:
                return _error(409, "ALREADY_EXISTS", f"Model {name} already exists")
            self.models[name] = {**body["model"], "name": name}
            return 200, {"name": f"{self.parent}/operations/1", "done": True}
        if path == f"{prefix}/models" and method == "GET":
            wanted = _label_filter(params.get("filter", ""))
            found = [m for m in self.models.values() if all(m.get("labels", {}).get(k) == v for k, v in wanted.items())]
            return 200, {"models": found}
        if path.startswith(f"{prefix}/models/"):
            name = path[len("/v1/") :]
            if name not in self.models:
                return _error(404, "NOT_FOUND", f"Model {name} not found")
            if method == "DELETE":
                if any(d["model"] == name for e in self.endpoints.values() for d in e.get("deployedModels", [])):
                    return _error(400, "FAILED_PRECONDITION", "The model is deployed")
                del self.models[name]
                return 200, {"name": f"{self.parent}/operations/2", "done": True}
            return 200, self.models[name]
        if path == f"{prefix}/endpoints" and method == "POST":
            name = f"{self.parent}/endpoints/{params['endpointId']}"
            if name in self.endpoints:
                return _error(409, "ALREADY_EXISTS", f"Endpoint {name} already exists")
            self.endpoints[name] = {**body, "name": name, "deployedModels": []}
            return 200, {"name": f"{self.parent}/operations/3", "done": True}
        if method == "GET" and "/operations/" in path:
            # google.longrunning GetOperation: aiplatform_v1's REST transport takes the first of its bindings
            # that matches, which for an endpoint's operation is /ui/{name=...}, not /v1/.
            operation = self.operations.get(path.removeprefix("/v1/").removeprefix("/ui/"))
            if operation is None:
                return _error(404, "NOT_FOUND", f"Operation {path} not found")
            return 200, {k: v for k, v in operation.items() if k != "undeploying"}
        name, _, verb = path[len("/v1/") :].partition(":")
        if name not in self.endpoints:
            return _error(404, "NOT_FOUND", f"Endpoint {name} not found")
        endpoint = self.endpoints[name]
        if verb == "deployModel":
            deployed = body["deployedModel"]
            if self.refuse_deploys or any(d["id"] == deployed["id"] for d in endpoint["deployedModels"]):
                return _error(400, "FAILED_PRECONDITION", "A deploy of this model is in progress")

            def deploy():
                endpoint["deployedModels"].append(deployed)
                endpoint["trafficSplit"] = {deployed["id"]: 100}

            return 200, self._operation(name, "DeployModel", deploy)
        if verb == "undeployModel":
            gone = body["deployedModelId"]
            if any(op.get("undeploying") == (name, gone) for op in self.operations.values() if not op["done"]):
                return _error(400, "FAILED_PRECONDITION", "An undeploy of this model is in progress")

            def undeploy():
                endpoint["deployedModels"] = [d for d in endpoint["deployedModels"] if d["id"] != gone]

            operation = self._operation(name, "UndeployModel", undeploy)
            self.operations[operation["name"]] = {**operation, "undeploying": (name, gone)}
            return 200, {k: v for k, v in operation.items()}

        if verb == "rawPredict":
            request = json.loads(base64.b64decode(body["httpBody"]["data"]))
            try:
                answer = {"predictions": self.predict(request["instances"])}
            except ValueError as exc:
                return _error(500, "INTERNAL", f"the handler raised ValueError: {exc}")
            data = base64.b64encode(json.dumps(answer).encode()).decode()
            return 200, {"contentType": "application/json", "data": data}
        if method == "DELETE":
            if endpoint["deployedModels"]:
                return _error(400, "FAILED_PRECONDITION", "The endpoint has deployed models")
            del self.endpoints[name]
            return 200, {"name": f"{self.parent}/operations/6", "done": True}
        return 200, endpoint


def _response(method: str, url: str, status: int, answer: Any):
    import requests

    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(answer).encode()
    response.headers["Content-Type"] = "application/json"
    response.url = url
    response.request = requests.Request(method.upper(), url).prepare()
    return response
