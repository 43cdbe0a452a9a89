"""Links to a job's page in its provider's console: each backend's descriptor builds its own."""

from __future__ import annotations

import re
from urllib.parse import quote

from chalicelib.jobs.model import Job

ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:(?P<service>[a-z0-9-]+):(?P<region>[a-z0-9-]*):(?P<account>\d*):(?P<resource>.+)$"
)
GCP_RE = re.compile(
    r"^(?:https://[^/]+/(?:compute/v1/)?)?projects/(?P<project>[^/]+)/(?P<scope>locations|zones)/(?P<where>[^/]+)/"
    r"(?P<kind>[A-Za-z]+)/(?P<name>[^/]+)$"
)


def aws_resource(native: str, default_region: str) -> tuple[str, str, bool]:
    """(region, resource, was an ARN): AWS ids may be plain or ARNs, whose region wins over the default."""
    arn = ARN_RE.match(native)
    if not arn:
        return default_region, native, False
    return arn["region"] or default_region, arn["resource"].split("/", 1)[-1], True


def aws_console(region: str, path: str) -> str:
    return f"https://{region}.console.aws.amazon.com/{path}"


def q(value: str) -> str:
    """A path segment, with every reserved character escaped."""
    return quote(value, safe="")


def console_url(
    job: Job, default_region: str, gcp_project: str | None = None, gce_zone: str | None = None
) -> str | None:
    """The console page of the job's current attempt, or None (no builder, no native id yet)."""
    from chalicelib.backends import ConsoleContext, descriptor_or_none

    found = descriptor_or_none(job.backend)
    if not job.native_id or found is None or found.console_url is None:
        return None
    return found.console_url(job, ConsoleContext(default_region, gcp_project, gce_zone))


def provider_name(backend: str) -> str:
    from chalicelib.backends import descriptor_or_none

    found = descriptor_or_none(backend)
    return found.display_name if found else backend
