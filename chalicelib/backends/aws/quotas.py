"""AWS Service Quotas as jobplane reads them (jobs/quotas.py caches them): SageMaker's per-instance-type training
quotas, by name, and EC2's vCPU quotas per family group, by code. Each returns {key: QuotaFigure}."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chalicelib.jobs.capacity import QuotaFigure


def sagemaker_training(client, count: Callable[[str], None]) -> dict[str, QuotaFigure]:
    """ListServiceQuotas(ServiceCode=sagemaker), every page: the applied values, keyed by QuotaName (SageMaker's
    codes are opaque; the name says the instance type and the usage, "ml.g5.xlarge for training job usage")."""
    found: dict[str, QuotaFigure] = {}
    token = None
    while True:
        kwargs: dict[str, Any] = {"ServiceCode": "sagemaker", "MaxResults": 100}
        if token:
            kwargs["NextToken"] = token
        count("ListServiceQuotas")
        page = client.list_service_quotas(**kwargs)
        for quota in page.get("Quotas", []):
            name = str(quota.get("QuotaName") or "")
            if name.endswith("training job usage") and "Value" in quota:
                found[name] = QuotaFigure(str(quota.get("QuotaCode") or name), name, float(quota["Value"]))
        token = page.get("NextToken")
        if not token:
            return found


def ec2_vcpus(client, code: str, count: Callable[[str], None]) -> dict[str, QuotaFigure]:
    """GetServiceQuota(ServiceCode=ec2, QuotaCode=L-...): the applied vCPU value of one family group."""
    count("GetServiceQuota")
    quota = client.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]
    return {code: QuotaFigure(code, str(quota.get("QuotaName") or code), float(quota["Value"]))}
