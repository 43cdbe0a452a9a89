"""Account quotas, read from the providers: AWS Service Quotas (SageMaker per instance type, EC2 vCPUs per
family group) and Compute Engine's regional quotas (GPUs per type), cached for one reconcile tick.

The pure part (which quota a job draws on, in which unit, and whether it fits) is in jobs/capacity.py. A quota
that cannot be read (no permission, throttled, a service the emulator lacks) is unknown for the tick and
refuses nothing: the provider's own refusal at launch still fails the job over."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chalicelib.jobs.capacity import QuotaFigure, QuotaNeed, quota_claims, quota_needs, quota_refusal

if TYPE_CHECKING:
    from chalicelib.config import Settings
    from chalicelib.jobs.spec_types import JobSpec

log = logging.getLogger("jobplane.quotas")

#: how long a read quota is used before it is read again (reconcile also starts each tick afresh)
MAX_AGE_SECONDS = 300.0


class QuotaBook:
    """The quotas of one process, read on first use per (service, region) and kept `max_age` seconds or until
    `new_tick()`. `client(service, region)` makes the boto3 client (tests hand in a Stubber's)."""

    def __init__(
        self,
        settings: Settings,
        client: Callable[[str, str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_age: float = MAX_AGE_SECONDS,
    ) -> None:
        self.settings = settings
        self.client_factory = client
        self.clock = clock
        self.max_age = max_age
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str | None], tuple[float, dict[str, QuotaFigure] | None]] = {}
        #: provider calls made, by operation (the bench and the tests read it)
        self.calls: dict[str, int] = {}

    def new_tick(self) -> None:
        with self._lock:
            self._cache.clear()

    # --- what the planner and dispatch ask ----------------------------------------------------------
    def figures(self, backend: str, spec: JobSpec, region: str | None) -> list[tuple[QuotaNeed, QuotaFigure | None]]:
        """Each quota the launch draws on, with its figure (None: unknown this tick)."""
        where = region or self.default_region(backend)
        return [(need, self.figure(need)) for need in quota_needs(backend, spec, where)]

    def refusal(self, backend: str, spec: JobSpec, region: str | None) -> str | None:
        """Why no launch of `spec` fits `backend`'s quotas in `region` now, naming the quota and its figures."""
        if self.settings.quotas != "read":
            return None
        for need, figure in self.figures(backend, spec, region):
            why = quota_refusal(need, figure) if figure is not None else None
            if why:
                return f"quota {why}"
        return None

    def claims(self, backend: str, spec: JobSpec, region: str | None):
        """(claim, limit) on the counter of each quota the provider reports no usage for (capacity.quota_claims)."""
        if self.settings.quotas != "read":
            return ()
        return quota_claims(self.figures(backend, spec, region))

    def default_region(self, backend: str) -> str:
        from chalicelib.backends import Cloud, descriptor_or_none

        found = descriptor_or_none(backend)
        return self.settings.gcp_region if found is not None and found.cloud is Cloud.GCP else self.settings.region

    # --- reading ------------------------------------------------------------------------------------------
    def figure(self, need: QuotaNeed) -> QuotaFigure | None:
        # one read per list (SageMaker's, a Compute region) or per code (EC2 reads each quota by its code)
        key = (need.service, need.region, need.code if need.service == "vcpus" else None)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now - cached[0] < self.max_age:
                table = cached[1]
                return None if table is None else table.get(need.code or need.name)
        try:
            table = self._read(need)
        except Exception as exc:  # unknown for this tick: the provider still refuses at launch if it must
            log.warning("reading quota %s in %s failed: %s: %s", need.name, need.region, type(exc).__name__, exc)
            table = None
        with self._lock:
            self._cache[key] = (now, table)
        return None if table is None else table.get(need.code or need.name)

    def _count(self, operation: str) -> None:
        with self._lock:
            self.calls[operation] = self.calls.get(operation, 0) + 1

    def client(self, service: str, region: str):
        if self.client_factory is not None:
            return self.client_factory(service, region)
        from chalicelib import aws_session

        return aws_session.client(service, region, self.settings.aws_endpoint_url, aws_session.standard_retries())

    def _read(self, need: QuotaNeed) -> dict[str, QuotaFigure]:
        """The figures of the quotas behind `need` (one call, or every page of one list)."""
        if need.service == "training-instances":
            from chalicelib.backends.aws import quotas

            return quotas.sagemaker_training(self.client("service-quotas", need.region), self._count)
        if need.service == "vcpus":
            from chalicelib.backends.aws import quotas

            return quotas.ec2_vcpus(self.client("service-quotas", need.region), need.code or "", self._count)
        if need.service == "regional-gpus":
            from chalicelib.backends.gcp import quotas

            return quotas.regional(self.settings, need.region, self._count)
        return {}


_books: dict[int, QuotaBook] = {}
_books_lock = threading.Lock()


def book_for(settings: Settings) -> QuotaBook:
    """The process's QuotaBook for these settings (one per Settings object, so tests never share a cache)."""
    with _books_lock:
        found = _books.get(id(settings))
        if found is None or found.settings is not settings:
            found = _books[id(settings)] = QuotaBook(settings)
        return found
