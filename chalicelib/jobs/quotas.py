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
        key = (need.service, need.region, need.code if need.service == "ec2" else None)
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
        if need.service == "sagemaker":
            return self._read_sagemaker(need.region)
        if need.service == "ec2":
            return self._read_ec2(need.region, need.code or "")
        if need.service == "compute":
            return self._read_compute(need.region)
        return {}

    def _read_sagemaker(self, region: str) -> dict[str, QuotaFigure]:
        """ListServiceQuotas(ServiceCode=sagemaker), every page: the applied values, keyed by QuotaName
        (SageMaker's codes are opaque; the names say the instance type and the usage)."""
        found: dict[str, QuotaFigure] = {}
        client = self.client("service-quotas", region)
        token = None
        while True:
            kwargs: dict[str, Any] = {"ServiceCode": "sagemaker", "MaxResults": 100}
            if token:
                kwargs["NextToken"] = token
            self._count("ListServiceQuotas")
            page = client.list_service_quotas(**kwargs)
            for quota in page.get("Quotas", []):
                name = str(quota.get("QuotaName") or "")
                if name.endswith("training job usage") and "Value" in quota:
                    found[name] = QuotaFigure(str(quota.get("QuotaCode") or name), name, float(quota["Value"]))
            token = page.get("NextToken")
            if not token:
                return found

    def _read_ec2(self, region: str, code: str) -> dict[str, QuotaFigure]:
        """GetServiceQuota(ServiceCode=ec2, QuotaCode=L-...): the applied vCPU value of one family group."""
        self._count("GetServiceQuota")
        quota = self.client("service-quotas", region).get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]
        return {code: QuotaFigure(code, str(quota.get("QuotaName") or code), float(quota["Value"]))}

    def _read_compute(self, region: str) -> dict[str, QuotaFigure]:
        """Compute Engine regions.get: `quotas[]` with metric, limit and usage (both in the metric's unit)."""
        import urllib.parse

        from chalicelib.backends.gcp import rest

        base = (self.settings.gcp_api_endpoint or rest.COMPUTE).rstrip("/")
        project = urllib.parse.quote(self.settings.gcp_project or "", safe="")
        self._count("regions.get")
        url = f"{base}/compute/v1/projects/{project}/regions/{urllib.parse.quote(region, safe='')}"
        answer = rest.request(self.settings, "GET", url)
        found: dict[str, QuotaFigure] = {}
        for quota in answer.get("quotas", []):
            metric = str(quota.get("metric") or "")
            if metric:
                usage = float(quota.get("usage") or 0.0)
                found[metric] = QuotaFigure(metric, metric, float(quota.get("limit") or 0.0), usage)
        return found


_books: dict[int, QuotaBook] = {}
_books_lock = threading.Lock()


def book_for(settings: Settings) -> QuotaBook:
    """The process's QuotaBook for these settings (one per Settings object, so tests never share a cache)."""
    with _books_lock:
        found = _books.get(id(settings))
        if found is None or found.settings is not settings:
            found = _books[id(settings)] = QuotaBook(settings)
        return found
