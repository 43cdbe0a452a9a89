"""A toy backend (jobs "run" in memory and finish on their second look), registered by tests only."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from chalicelib.backends import BackendDescriptor, Cloud, ConsoleContext
from chalicelib.backends.base import ComputeBackend, Handle, LaunchResult, Observation, parse_native_name
from chalicelib.jobs.model import JobStatus

EVENT_SOURCE = "jobplane.toy"


def console_url(job, ctx: ConsoleContext) -> str | None:
    return f"https://toy.example/{ctx.region}/jobs/{job.native_id}"


class ToyBackend(ComputeBackend):
    descriptor = BackendDescriptor(
        name="toy",
        cloud=Cloud.AWS,
        display_name="Toy Cloud",
        rank=5,
        role="the toy in-memory runner",
        needs_image=False,
        event_sources=(EVENT_SOURCE,),
        iam_actions=("toy:RunJob", "toy:DescribeJob", "toy:StopJob"),
        console_url=console_url,
        unsupported_features={"tpu": "toys have no TPUs", "gpu": "toys have no GPUs"},
    )
    named_by_us = True

    # native name -> how many times it was described; shared by every instance, like a provider's state
    runs: ClassVar[dict[str, int]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def _launch_impl(self, job, handle: Handle) -> LaunchResult:
        with self._lock:
            self.runs.setdefault(handle.native_name, 0)
        return LaunchResult(handle.native_name, "STARTED")

    def _describe_impl(self, handle: Handle) -> Observation | None:
        with self._lock:
            if handle.native_name not in self.runs:
                return None
            self.runs[handle.native_name] += 1
            looks = self.runs[handle.native_name]
        status, native = (JobStatus.RUNNING, "RUNNING") if looks < 2 else (JobStatus.SUCCEEDED, "DONE")
        return Observation(status, native, native_id=handle.native_name, job_id=handle.job_id, attempt=handle.attempt)

    def _cancel_impl(self, handle: Handle) -> None:
        with self._lock:
            self.runs.pop(handle.native_name, None)

    def _parse_event_impl(self, raw: dict[str, Any]) -> Observation | None:
        if raw.get("source") != EVENT_SOURCE:
            return None
        detail = raw.get("detail") or {}
        parsed = parse_native_name(detail.get("name"))
        if parsed is None:
            return None
        status = JobStatus(detail["status"])
        return Observation(status, detail["status"], native_id=detail["name"], job_id=parsed[0], attempt=parsed[1])
