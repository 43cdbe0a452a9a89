"""The HTTP layer of the SDK: one method per API route, JSON in and out (jobplane.sdk builds on it)."""

from __future__ import annotations

from typing import Any

import requests

from jobplane.sdk_errors import APIError, ConnectionFailed, api_error

# The SDK's exceptions (jobplane.sdk_errors): ApiError is the base of every error answer.
ApiError = APIError


class Client:
    def __init__(self, api: str, token: str | None, timeout: float = 30.0) -> None:
        self.api = api.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        # Presigned object-store URLs carry their own signature: no Authorization header may go with them.
        self.storage = requests.Session()

    def _call(self, method: str, path: str, **kw) -> Any:
        try:
            resp = self.session.request(method, self.api + path, timeout=self.timeout, **kw)
        except requests.exceptions.InvalidURL as exc:
            raise ConnectionFailed(
                f"the API address {self.api!r} is not a URL ({exc})", "pass --api http(s)://..."
            ) from None
        except requests.exceptions.RequestException as exc:
            why = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "refused or unreachable"
            raise ConnectionFailed(
                f"no answer from the API at {self.api} ({why})",
                "is it running? (`jobplane local up` here, or check --api / $JOBPLANE_API / the profile's api)",
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if resp.status_code >= 400:
            raise api_error(resp.status_code, body)
        return body

    def health(self) -> dict:
        return self._call("GET", "/health")

    def submit(
        self, spec_text: str, idempotency_key: str | None = None, yaml: bool = True, dry_run: bool = False
    ) -> dict:
        """POST /jobs; with dry_run, nothing is stored or launched: the plan and the provider request come back."""
        headers = {"Content-Type": "application/x-yaml" if yaml else "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        params = {"dry_run": "true"} if dry_run else None
        return self._call("POST", "/jobs", data=spec_text.encode(), headers=headers, params=params)

    def list(self, status: str | None = None, limit: int = 20, next_token: str | None = None) -> dict:
        params = {k: v for k, v in {"status": status, "limit": limit, "next_token": next_token}.items() if v}
        return self._call("GET", "/jobs", params=params)

    def get(self, job_id: str) -> dict:
        return self._call("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/jobs/{job_id}/cancel")

    def events(self, job_id: str) -> list[dict]:
        return self._call("GET", f"/jobs/{job_id}/events")["events"]

    def token_list(self, user: str | None = None) -> list[dict]:
        return self._call("GET", "/tokens", params={"user": user} if user else {})["tokens"]

    def token_revoke(self, token_id: str) -> dict:
        return self._call("DELETE", f"/tokens/{token_id}")

    def budget_set(self, body: dict) -> dict:
        return self._call("POST", "/budgets", json=body)

    def budget_list(self) -> list[dict]:
        return self._call("GET", "/budgets")["budgets"]

    def budget_delete(self, budget_id: str) -> dict:
        from urllib.parse import quote

        return self._call("DELETE", f"/budgets/{quote(budget_id, safe='')}")

    def cost(self, by: str | None = None, since: str | None = None) -> dict:
        params = {k: v for k, v in {"by": by, "since": since}.items() if v}
        return self._call("GET", "/cost", params=params)

    def vm_create(self, body: dict) -> dict:
        return self._call("POST", "/instances", json=body)

    def vm_list(self) -> list[dict]:
        return self._call("GET", "/instances")["instances"]

    def vm_start(self, vm_id: str) -> dict:
        return self._call("POST", f"/instances/{vm_id}/start")

    def vm_stop(self, vm_id: str) -> dict:
        return self._call("POST", f"/instances/{vm_id}/stop")

    # --- inference endpoints ---------------------------------------------------------------
    def endpoint_create(self, spec_text: str, yaml: bool = True) -> dict:
        headers = {"Content-Type": "application/x-yaml" if yaml else "application/json"}
        return self._call("POST", "/endpoints", data=spec_text.encode(), headers=headers)

    def endpoint_list(self) -> list[dict]:
        return self._call("GET", "/endpoints")["endpoints"]

    def endpoint_get(self, endpoint_id: str) -> dict:
        return self._call("GET", f"/endpoints/{endpoint_id}")

    def endpoint_events(self, endpoint_id: str) -> list[dict]:
        return self._call("GET", f"/endpoints/{endpoint_id}/events")["events"]

    def endpoint_invoke(self, endpoint_id: str, body: bytes) -> Any:
        headers = {"Content-Type": "application/json"}
        return self._call("POST", f"/endpoints/{endpoint_id}/invocations", data=body, headers=headers)

    def endpoint_update(self, endpoint_id: str, change: dict) -> dict:
        return self._call("PUT", f"/endpoints/{endpoint_id}", json=change)

    def endpoint_delete(self, endpoint_id: str) -> dict:
        return self._call("DELETE", f"/endpoints/{endpoint_id}")

    def code_upload(self, sha256: str, size: int, backend: str | None = None) -> dict:
        """POST /code: where packed code with this digest lives and, unless it is there already, its upload
        (in the store `backend` reads: Cloud Storage for vertex and gce)."""
        body: dict = {"sha256": sha256, "size": size}
        if backend:
            body["backend"] = backend
        return self._call("POST", "/code", json=body)

    def put_code(self, upload: dict, data: bytes) -> None:
        """PUT the packed code to the upload URL POST /code issued, with the headers it names (S3 checks them).

        A session of its own: the API's bearer token never goes to the object store."""
        resp = self.storage.request(
            upload.get("method", "PUT"), upload["url"], data=data, headers=upload.get("headers") or {}, timeout=300
        )
        if resp.status_code >= 300:
            raise ApiError(resp.status_code, {"error": {"message": f"upload refused: {resp.text[:300]}"}})

    def artifacts(self, job_id: str, cursor: str | None = None, limit: int | None = None) -> dict:
        params = {k: v for k, v in {"cursor": cursor, "limit": limit}.items() if v}
        return self._call("GET", f"/jobs/{job_id}/artifacts", params=params)

    def download(self, url: str, target) -> int:
        """Fetch a presigned download URL into `target` (a path); returns the bytes written."""
        written = 0
        with self.storage.get(url, stream=True, timeout=300) as resp:
            if resp.status_code >= 300:
                raise ApiError(resp.status_code, {"error": {"message": f"download refused: {resp.text[:300]}"}})
            with open(target, "wb") as fh:
                for block in resp.iter_content(1 << 20):
                    fh.write(block)
                    written += len(block)
        return written

    def logs(self, job_id: str, offset: int | str = 0, node: int | None = None) -> dict:
        """A slice of the job's output; pass the answer's next_offset back as it is (a number or a cursor).
        `node`: one node's output of a multi-node job (None: every node's, merged)."""
        params: dict[str, int | str] = {"offset": offset}
        if node is not None:
            params["node"] = node
        return self._call("GET", f"/jobs/{job_id}/logs", params=params)

    def metrics(self, job_id: str) -> dict:
        """The job's latest metrics and each key's series of [seq, value] points."""
        return self._call("GET", f"/jobs/{job_id}/metrics")

    def tail(self, job_id: str, lines: int = 15) -> dict:
        """The last lines of the job's output (`lines` null when out of reach, with a note)."""
        return self._call("GET", f"/jobs/{job_id}/tail", params={"lines": lines})
