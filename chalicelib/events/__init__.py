"""Event adapters: every source (EventBridge, CloudEvents, polls, local runner) -> one JobEvent."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from chalicelib.backends import backends_for_source
from chalicelib.backends.base import Observation
from chalicelib.jobs.model import EventSource, JobEvent, utcnow

log = logging.getLogger("jobplane.events")


class Outcome(str, Enum):
    """What became of one raw state event."""

    #: the event moved its job (to another status, or to a new attempt)
    APPLIED = "applied"
    #: about one of our jobs, but the state machine found nothing to change (a duplicate, a stale event)
    UNCHANGED = "unchanged"
    #: not about a jobplane job on this backend: no source, a foreign resource, another backend's job
    IGNORED = "ignored"
    #: names a jobplane job the store does not hold
    UNKNOWN_JOB = "unknown_job"
    #: handling it failed in a way a redelivery would repeat (bad data, no permission): logged, acknowledged
    ERROR = "error"


@dataclass(frozen=True)
class EventResult:
    """What became of one raw event, with the job it named and its status after."""

    outcome: Outcome
    job_id: str | None = None
    status: str | None = None
    detail: str = ""
    #: set instead of job_id when the event was about an inference endpoint
    endpoint_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        found = {"outcome": self.outcome.value, "job_id": self.job_id, "status": self.status, "detail": self.detail}
        return {**found, "endpoint_id": self.endpoint_id} if self.endpoint_id else found


def to_job_event(obs: Observation, source: EventSource) -> JobEvent:
    if obs.job_id is None:
        raise ValueError("an observation must name its job before it becomes a JobEvent")
    return JobEvent(
        job_id=obs.job_id,
        status=obs.status,
        source=source,
        at=obs.at or utcnow(),
        reason=obs.reason,
        native_status=obs.native_status,
        native_id=obs.native_id,
        attempt=obs.attempt,
        failure_kind=obs.failure_kind,
        exit_code=obs.exit_code,
        started_at=obs.started_at,
        usage=obs.usage,
    )


def handle_state_change(raw: dict[str, Any], service, endpoints=None) -> EventResult:
    """One EventBridge-shaped state event: find the backend, parse, apply through the state machine.

    `endpoints` (a callable returning the EndpointService) hears what no job backend claimed, such as
    "SageMaker Endpoint State Change"; it is built only then, so a job's event never pays for it."""
    source = raw.get("source")
    if not isinstance(source, str):
        return EventResult(Outcome.IGNORED, detail="event has no source")
    asked = []
    for backend in backends_for_source(source, service.settings):
        obs = backend.parse_event(raw)
        if obs is None:  # another service's event, or a resource this deployment did not start
            asked.append(backend.name)
            continue
        job_before = service.store.get_job(obs.job_id)
        if job_before is None:
            return EventResult(
                Outcome.UNKNOWN_JOB, obs.job_id, detail=f"{backend.name} event for a job not in the store"
            )
        if job_before.backend != backend.name:
            return EventResult(
                Outcome.IGNORED, obs.job_id, detail=f"job runs on {job_before.backend}, not {backend.name}"
            )
        job = service.apply_event(to_job_event(obs, EventSource.BACKEND), current=job_before)
        # a retry can come back to the same status as a new attempt: that is a change too
        changed = job is not None and (job.status, job.attempt) != (job_before.status, job_before.attempt)
        return EventResult(
            Outcome.APPLIED if changed else Outcome.UNCHANGED,
            obs.job_id,
            job.status.value if job else None,
            obs.native_status,
        )
    if endpoints is not None:
        about_endpoint = endpoints().handle_event(raw)
        if about_endpoint is not None:
            return about_endpoint
    if asked:
        return EventResult(Outcome.IGNORED, detail=f"not about a job this deployment runs on {', '.join(asked)}")
    return EventResult(Outcome.IGNORED, detail=f"no enabled backend handles source {source!r}")
