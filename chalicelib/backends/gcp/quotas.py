"""Compute Engine's regional quotas as jobplane reads them (jobs/quotas.py caches them): regions.get `quotas[]`,
each with its metric, limit and usage in the metric's unit (GPUs for NVIDIA_*_GPUS)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

from chalicelib.jobs.capacity import QuotaFigure


def regional(settings, region: str, count: Callable[[str], None]) -> dict[str, QuotaFigure]:
    from chalicelib.backends.gcp import rest

    base = (settings.gcp_api_endpoint or rest.COMPUTE).rstrip("/")
    project = urllib.parse.quote(settings.gcp_project or "", safe="")
    count("regions.get")
    answer = rest.request(
        settings, "GET", f"{base}/compute/v1/projects/{project}/regions/{urllib.parse.quote(region, safe='')}"
    )
    found: dict[str, QuotaFigure] = {}
    for quota in answer.get("quotas", []):
        metric = str(quota.get("metric") or "")
        if metric:
            found[metric] = QuotaFigure(
                metric, metric, float(quota.get("limit") or 0.0), float(quota.get("usage") or 0.0)
            )
    return found
