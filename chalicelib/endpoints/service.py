"""Endpoint use cases: create (planning `auto`), get/list owner-scoped, update, delete, invoke, reconcile."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from chalicelib.backends import Cloud
from chalicelib.endpoints import backends as registry
from chalicelib.endpoints.backends.base import Deployment, EndpointBackend, EndpointObservation, EndpointResources
from chalicelib.endpoints.machine import decide
from chalicelib.endpoints.model import (
    Endpoint,
    EndpointEvent,
    EndpointHistoryEntry,
    EndpointStatus,
    new_endpoint_id,
)
from chalicelib.endpoints.spec import EndpointSpec, EndpointUpdate
from chalicelib.errors import ConflictError, JobplaneError, NotFoundError, StaleStateError, ValidationError
from chalicelib.jobs.model import EventSource, JobStatus, utcnow

log = logging.getLogger("jobplane.endpoints")
S = EndpointStatus
TRANSITIONAL = frozenset({S.CREATING, S.UPDATING, S.DELETING})


class PayloadTooLargeError(JobplaneError):
    """An invocation body above the backend's limit."""

    STATUS_CODE = 413
    CODE = "payload_too_large"


@dataclass(frozen=True)
class EndpointDecision:
    """What reconcile did about one endpoint, with why (one per endpoint: one failure aborts nothing)."""

    endpoint_id: str
    action: str  # "refreshed" | "deleted_idle" | "error"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "action": self.action, "reason": self.reason}


def hourly_price(backend: str, settings, spec: dict[str, Any] | None = None) -> tuple[float | None, str | None]:
    """(USD per hour, None) where the price catalog knows the backend's rate, else (None, why): never a guess.

    `local` bills the JOBPLANE_LOCAL_PRICE_PER_HOUR setting; the catalog holds training rates, not hosting
    rates, so a cloud endpoint's descriptor says why it has no figure."""
    from chalicelib import pricing

    found = registry.descriptor(backend)
    if found.price_table is None:
        return None, found.unpriced_reason or f"the price catalog has no {backend} endpoint rates"
    resources = (spec or {}).get("resources") or {}
    sku = resources.get("instance_type") or ""
    quote = pricing.for_settings(settings).price(found.price_table, settings.region, sku)
    if not quote:
        return None, quote.reason
    replicas = max(int((spec or {}).get("min_replicas", 1) or 1), 1)
    return round(quote.usd_per_hour * replicas, 6), None


class EndpointService:
    def __init__(
        self,
        store,
        settings,
        job_store=None,
        *,
        backend_factory: Callable[[str, Any], EndpointBackend] | None = None,
        notify: Callable[[Endpoint, str], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.settings = settings
        self.job_store = job_store
        self._factory = backend_factory or _build_backend
        self._backends: dict[str, EndpointBackend] = {}
        self._notify = notify
        self.clock = clock

    # --- backends ---------------------------------------------------------------------------------
    def enabled(self) -> list[str]:
        return [d.name for d in registry.enabled(self.settings.enabled_backends)]

    def backend(self, name: str) -> EndpointBackend:
        if name not in self._backends:
            self._backends[name] = self._factory(name, self.settings)
        return self._backends[name]

    def plan(self, spec: EndpointSpec, model_uri: str) -> tuple[str, str]:
        """(backend, why): the asked-for backend if enabled, else `auto`'s choice with its reasoning.

        auto keeps the endpoint backends that can serve the model (GPUs, memory), cheapest kind first by
        their descriptors' rank, the one on the model's cloud first among equals, and takes the first enabled."""
        enabled = self.enabled()
        if spec.backend != registry.AUTO:
            if spec.backend not in enabled:
                raise ValidationError(
                    f"endpoints on {spec.backend} are not enabled in this deployment",
                    [{"field": "backend", "message": f"enabled: {', '.join(enabled) or 'none'}; or auto"}],
                )
            return spec.backend, f"asked for {spec.backend}"
        gpus, memory = spec.resources.gpus, spec.resources.memory_gb
        every = registry.descriptors()
        cloud = next((d.cloud for d in every if model_uri.startswith(d.model_schemes)), None)
        fits, left_out = [], []
        for d in every:
            if gpus and not d.gpus:
                left_out.append(f"{d.name} serves CPU only")
            elif memory is not None and d.max_memory_gb is not None and memory > d.max_memory_gb:
                left_out.append(f"{memory:g} GB is above {d.name}'s {d.max_memory_gb:g} GB")
            else:
                fits.append(d)
        fits.sort(key=lambda d: (d.rank, d.cloud is not cloud))
        what = f"{gpus} GPU(s)" if gpus else "CPU model"
        where = f"; the model is on {cloud.value.upper()}" if cloud not in (None, Cloud.LOCAL) else ""
        aside = f" ({'; '.join(left_out)})" if left_out else ""
        for d in fits:
            if d.name in enabled:
                skipped = [f.name for f in fits[: fits.index(d)]]
                tail = f" ({', '.join(skipped)} not enabled)" if skipped else ""
                return d.name, f"auto: {d.name}: {what}: {d.role}{aside}{where}{tail}"
        tried = ", ".join(d.name for d in fits) or "none"
        raise ValidationError(
            f"no enabled endpoint backend can serve this ({what}{aside}{where})",
            [{"field": "backend", "message": f"enabled: {', '.join(enabled) or 'none'}; tried {tried}"}],
        )

    # --- reads --------------------------------------------------------------------------------------
    def _mine(self, principal, endpoint_id: str) -> Endpoint:
        found = self.store.get_endpoint(endpoint_id) if len(endpoint_id) == 32 and endpoint_id.isalnum() else None
        if found is None or (not principal.admin and found.owner != principal.user):
            raise NotFoundError(f"no endpoint {endpoint_id!r}")
        return found

    def get(self, principal, endpoint_id: str) -> Endpoint:
        """The endpoint; one still changing is read through to its backend (a describe, nothing waits)."""
        endpoint = self._mine(principal, endpoint_id)
        if endpoint.status in TRANSITIONAL and endpoint.native_id:
            endpoint = self.refresh(endpoint, EventSource.API)
        return endpoint

    def list(self, principal) -> list[Endpoint]:
        return self.store.list_endpoints(None if principal.admin else principal.user)

    def history(self, principal, endpoint_id: str) -> list[EndpointHistoryEntry]:
        return self.store.history(self._mine(principal, endpoint_id).endpoint_id)

    # --- create -------------------------------------------------------------------------------------
    def _model(self, principal, spec_model: dict[str, Any]) -> tuple[str, str | None]:
        """(model_uri, the training job's code_uri) for a model given by URI or by a finished job."""
        if spec_model.get("uri"):
            return spec_model["uri"], None
        job_id = spec_model["from_job"]
        job = self.job_store.get_job(job_id) if self.job_store is not None else None
        if job is None or (not principal.admin and job.owner != principal.user):
            raise ValidationError(
                f"no job {job_id!r}", [{"field": "model.from_job", "message": "the id of one of your jobs"}]
            )
        if job.status is not JobStatus.SUCCEEDED:
            raise ValidationError(
                f"job {job_id} is {job.status.value}: only a SUCCEEDED job's artifacts can be served",
                [{"field": "model.from_job", "message": "a SUCCEEDED job"}],
            )
        return job.artifacts_uri(self.settings.artifacts_bucket), job.spec.code_uri

    def _deployment(self, endpoint: Endpoint, fallback_code_uri: str | None) -> Deployment:
        spec = endpoint.spec
        r = spec.get("resources") or {}
        return Deployment(
            endpoint_id=endpoint.endpoint_id,
            name=endpoint.name,
            stage=self.settings.stage,
            owner=endpoint.owner,
            model_uri=endpoint.model_uri,
            handler=endpoint.handler,
            version=endpoint.version,
            code_uri=endpoint.code_uri,
            image=spec.get("image"),
            resources=EndpointResources(
                r.get("instance_type"), int(r.get("gpus") or 0), r.get("gpu_type"), r.get("memory_gb")
            ),
            min_replicas=int(spec.get("min_replicas", 1)),
            max_replicas=int(spec.get("max_replicas", 1)),
            labels=dict(spec.get("labels") or {}),
            fallback_code_uri=fallback_code_uri,
        )

    def create(self, principal, spec: EndpointSpec) -> Endpoint:
        model_uri, job_code = self._model(principal, spec.model.model_dump())
        backend_name, why = self.plan(spec, model_uri)
        data = spec.model_dump(mode="json")
        data["fallback_code_uri"] = job_code
        now = self.clock()
        per_hour, unpriced = hourly_price(backend_name, self.settings, data)
        endpoint = Endpoint(
            endpoint_id=new_endpoint_id(),
            name=spec.name,
            owner=principal.user,
            status=S.CREATING,
            backend=backend_name,
            spec=data,
            created_at=now,
            model_uri=model_uri,
            handler=spec.handler,
            code_uri=spec.code_uri,
            cost_per_hour_usd=per_hour,
            cost_unknown_reason=unpriced,
            plan_reason=why,
        )
        backend = self.backend(backend_name)
        deployment = self._deployment(endpoint, job_code)
        backend.validate(deployment)
        self.store.put_endpoint(
            endpoint,
            EndpointHistoryEntry(endpoint.endpoint_id, now, None, S.CREATING, f"created; {why}", EventSource.API),
        )
        try:
            native_id = backend.create(deployment)
        except JobplaneError as exc:
            return self._fail(endpoint, f"create failed: {exc.message}")
        endpoint = self.store.update_endpoint(endpoint, S.CREATING, native_id=native_id)
        return self.refresh(endpoint, EventSource.DISPATCH)

    def _fail(self, endpoint: Endpoint, reason: str) -> Endpoint:
        event = EndpointEvent(endpoint.endpoint_id, S.FAILED, EventSource.DISPATCH, self.clock(), reason)
        return self.apply_event(event, endpoint) or endpoint

    # --- events -------------------------------------------------------------------------------------
    def apply_event(self, event: EndpointEvent, current: Endpoint | None = None) -> Endpoint | None:
        """Apply one event with a guarded write; None when it changes nothing. Notifies on IN_SERVICE/FAILED."""
        endpoint = current or self.store.get_endpoint(event.endpoint_id)
        if endpoint is None:
            return None
        transition = decide(endpoint, event)
        if transition is None:
            return None
        try:
            updated = self.store.apply_transition(endpoint, transition)
        except StaleStateError:
            fresh = self.store.get_endpoint(endpoint.endpoint_id)
            return self.apply_event(event, fresh) if fresh is not None and fresh.status is not endpoint.status else None
        if updated.status is S.IN_SERVICE:
            self._serving(updated)
        if updated.status is S.IN_SERVICE and endpoint.status is S.CREATING:
            self._send(updated, "in_service")
        elif updated.status is S.FAILED:
            self._send(updated, "failed")
        elif updated.status is S.DELETED and (updated.deleted_reason or "").startswith(IDLE_PREFIX):
            self._send(updated, "deleted_idle")
        return updated

    def handle_event(self, raw: dict[str, Any]):
        """A provider state event about an endpoint (e.g. "SageMaker Endpoint State Change"), routed from the
        state-event function: an EventResult, or None when no enabled endpoint backend claims it. A duplicate
        changes nothing (decide() sees the same status); a late one, older than the endpoint's last change,
        is dropped so it cannot undo a newer state."""
        from chalicelib.events import EventResult, Outcome

        source = raw.get("source")
        claimed = registry.for_source(source, self.settings.enabled_backends) if isinstance(source, str) else []
        for known in claimed:
            parsed = self.backend(known.name).parse_event(raw)
            if parsed is None:
                continue
            native_id, observation = parsed
            endpoint_id = native_id.removeprefix("jpe-")
            endpoint = self.store.get_endpoint(endpoint_id) if len(endpoint_id) == 32 else None
            if endpoint is None:
                return EventResult(Outcome.UNKNOWN_JOB, detail=f"{known.name} event for an endpoint not in the store")
            if endpoint.backend != known.name:
                if source in registry.descriptor(endpoint.backend).event_sources:
                    continue  # the backend it runs on (sagemaker-serverless) reads it next
                return EventResult(Outcome.IGNORED, endpoint_id=endpoint_id, detail=f"runs on {endpoint.backend}")
            last = endpoint.updated_at
            late = observation.at is not None and last is not None and observation.at < last
            moved = None if late else self.observe(endpoint, observation, EventSource.BACKEND)
            detail = observation.native_status + (" (older than the endpoint's last change)" if late else "")
            status = (moved or endpoint).status.value
            outcome = Outcome.APPLIED if moved is not None else Outcome.UNCHANGED
            return EventResult(outcome, status=status, detail=detail, endpoint_id=endpoint_id)
        return None

    def refresh(self, endpoint: Endpoint, source: EventSource) -> Endpoint:
        """Ask the backend where the endpoint is and apply what it says."""
        if not endpoint.native_id:
            return endpoint
        backend = self.backend(endpoint.backend)
        if endpoint.status is S.DELETING:
            observation = backend.describe_deleting(endpoint.native_id)
        else:
            observation = backend.describe(endpoint.native_id, endpoint.operation)
        if observation is None:
            if endpoint.status is S.DELETING:
                observation = EndpointObservation(
                    S.DELETED, "NotFound", endpoint.native_id, reason="gone at the provider"
                )
            else:
                return endpoint
        return self.observe(endpoint, observation, source) or endpoint

    def observe(self, endpoint: Endpoint, observation: EndpointObservation, source: EventSource) -> Endpoint | None:
        version = None
        if observation.native_status.startswith("InService v"):
            version = int(observation.native_status.rsplit("v", 1)[1])
        event = EndpointEvent(
            endpoint.endpoint_id,
            observation.status,
            source,
            observation.at or self.clock(),
            observation.reason,
            observation.native_status,
            observation.native_id,
            observation.url,
            version,
        )
        moved = self.apply_event(event, endpoint)
        after = moved or endpoint
        if after.operation != observation.operation and after.status is not S.DELETED:
            try:  # the operation in flight now, for the next describe (None: nothing is running)
                after = self.store.update_endpoint(after, after.status, operation=observation.operation)
            except StaleStateError:
                return moved
            return after  # the record changed (its operation), with or without a transition
        return moved

    def _serving(self, endpoint: Endpoint) -> Endpoint:
        """The backend's IN_SERVICE step (SageMaker autoscaling). A failure never undoes the change (the endpoint
        serves at min_replicas): it is kept on the record as `serving_error`, and each reconcile tick tries again
        until the step succeeds, which clears it."""
        error = None
        try:
            deployment = self._deployment(endpoint, endpoint.spec.get("fallback_code_uri"))
            self.backend(endpoint.backend).serving(endpoint.native_id, deployment)
        except JobplaneError as exc:
            error = exc.message
            log.warning("endpoint %s: could not attach what it needs in service: %s", endpoint.endpoint_id, error)
        if error == endpoint.serving_error:
            return endpoint
        try:
            return self.store.update_endpoint(endpoint, S.IN_SERVICE, serving_error=error)
        except StaleStateError:
            return endpoint

    def _send(self, endpoint: Endpoint, kind: str) -> None:
        if self._notify is None:
            return
        try:
            self._notify(endpoint, kind)
        except Exception:  # best effort: Slack never fails an endpoint's change
            log.exception("endpoint notification failed for %s", endpoint.endpoint_id)

    # --- update / delete ----------------------------------------------------------------------------
    def update(self, principal, endpoint_id: str, change: EndpointUpdate) -> Endpoint:
        endpoint = self._mine(principal, endpoint_id)
        if endpoint.status is not S.IN_SERVICE:
            raise ConflictError(
                f"endpoint {endpoint_id} is {endpoint.status.value}; only an IN_SERVICE endpoint can be updated",
                [{"field": "status", "message": endpoint.status.value}],
            )
        spec = dict(endpoint.spec)
        fields: dict[str, Any] = {}
        job_code = spec.get("fallback_code_uri")
        if change.model is not None:
            fields["model_uri"], job_code = self._model(principal, change.model.model_dump())
            spec["model"] = change.model.model_dump(mode="json")
            spec["fallback_code_uri"] = job_code
        if change.handler is not None:
            fields["handler"] = spec["handler"] = change.handler
        if change.code_uri is not None:
            fields["code_uri"] = spec["code_uri"] = change.code_uri
        if change.idle_minutes is not None:
            spec["idle_minutes"] = change.idle_minutes
        if set(fields) == set():  # only the idle time: nothing to roll out
            return self.store.update_endpoint(endpoint, S.IN_SERVICE, spec=spec)
        fields.update(spec=spec, version=endpoint.version + 1)
        staged = endpoint.with_changes(**fields)
        backend = self.backend(endpoint.backend)
        backend.validate(self._deployment(staged, job_code))
        event = EndpointEvent(
            endpoint_id, S.UPDATING, EventSource.API, self.clock(), f"update to v{staged.version} by {principal.user}"
        )
        moved = self.apply_event(event, endpoint)
        if moved is None:
            raise ConflictError(f"endpoint {endpoint_id} changed meanwhile; try again")
        updated = self.store.update_endpoint(moved, S.UPDATING, **fields)
        try:
            backend.update(updated.native_id, self._deployment(updated, job_code))
        except JobplaneError as exc:
            return self._fail(updated, f"update to v{updated.version} failed: {exc.message}")
        return self.refresh(updated, EventSource.DISPATCH)

    def delete(self, principal, endpoint_id: str) -> Endpoint:
        endpoint = self._mine(principal, endpoint_id)
        return self._delete(endpoint, principal.user, f"deleted by {principal.user}", EventSource.API)

    def _delete(self, endpoint: Endpoint, who: str, why: str, source: EventSource) -> Endpoint:
        if endpoint.status in (S.DELETED, S.DELETING):
            return endpoint
        endpoint = self.store.update_endpoint(endpoint, endpoint.status, deleted_by=who, deleted_reason=why)
        moved = self.apply_event(EndpointEvent(endpoint.endpoint_id, S.DELETING, source, self.clock(), why), endpoint)
        if moved is None:
            raise ConflictError(f"endpoint {endpoint.endpoint_id} changed meanwhile; try again")
        if moved.native_id:
            self.backend(moved.backend).delete(moved.native_id)
            return self.refresh(moved, source)
        gone = EndpointEvent(moved.endpoint_id, S.DELETED, source, self.clock(), "nothing was created at the provider")
        return self.apply_event(gone, moved) or moved

    # --- invoke -------------------------------------------------------------------------------------
    def invoke(self, principal, endpoint_id: str, raw: bytes) -> dict[str, Any]:
        endpoint = self._mine(principal, endpoint_id)
        if endpoint.status is S.CREATING and endpoint.native_id:
            endpoint = self.refresh(endpoint, EventSource.API)
        if endpoint.status not in (S.IN_SERVICE, S.UPDATING):
            raise ConflictError(
                f"endpoint {endpoint_id} is {endpoint.status.value}; it answers invocations only when IN_SERVICE",
                [{"field": "status", "message": endpoint.status.value}],
            )
        backend = self.backend(endpoint.backend)
        if len(raw) > backend.max_payload_bytes:
            raise PayloadTooLargeError(
                f"the request is {len(raw)} bytes; {endpoint.backend} accepts at most {backend.max_payload_bytes}",
                [{"field": "(body)", "message": f"at most {backend.max_payload_bytes} bytes"}],
            )
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise ValidationError(
                "the body is not valid JSON", [{"field": "(body)", "message": "a JSON value"}]
            ) from None
        self.store.record_invocation(endpoint.endpoint_id, self.clock())
        return backend.invoke(endpoint.native_id, body)

    # --- reconcile ----------------------------------------------------------------------------------
    def reconcile(self, now: datetime | None = None) -> list[EndpointDecision]:
        """Describe every active endpoint and apply what its backend says; delete the idle ones."""
        now = now or self.clock()
        results = []
        for endpoint in self.store.iter_active():
            try:
                results.append(self._reconcile_one(endpoint, now))
            except JobplaneError as exc:  # recorded; the next run tries again, the others go on
                results.append(EndpointDecision(endpoint.endpoint_id, "error", exc.message))
        return results

    def _reconcile_one(self, endpoint: Endpoint, now: datetime) -> EndpointDecision:
        endpoint = self.refresh(endpoint, EventSource.RECONCILE)
        if endpoint.status is S.IN_SERVICE and endpoint.serving_error:
            endpoint = self._serving(endpoint)  # the IN_SERVICE step failed before: once more
        reason = self.idle_reason(endpoint, now)
        if reason is None:
            return EndpointDecision(endpoint.endpoint_id, "refreshed", endpoint.status.value)
        self._delete(endpoint, "jobplane reconcile", f"{IDLE_PREFIX}: {reason}", EventSource.RECONCILE)
        return EndpointDecision(endpoint.endpoint_id, "deleted_idle", reason)

    def idle_reason(self, endpoint: Endpoint, now: datetime) -> str | None:
        """Why an IN_SERVICE endpoint is idle now, or None: no invocation for idle_minutes (0: never)."""
        minutes = endpoint.idle_minutes
        if endpoint.status is not S.IN_SERVICE or minutes <= 0 or not endpoint.native_id:
            return None
        since = now - timedelta(minutes=minutes)
        serving_since = endpoint.in_service_at or endpoint.created_at
        if serving_since > since:
            return None  # not yet in service for idle_minutes
        if endpoint.last_invoked_at is not None and endpoint.last_invoked_at > since:
            return None
        count = self.backend(endpoint.backend).invocations_since(endpoint.native_id, since)
        if count:
            return None
        return f"no invocation for {minutes} min"


IDLE_PREFIX = "deleted for idleness"


def _build_backend(name: str, settings) -> EndpointBackend:
    return registry.backend_class(name)(settings)
