"""Links to a job's page in its provider's console, from the backend and the native id."""

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
PROVIDER = {
    "sagemaker": "SageMaker",
    "aws-batch": "AWS Batch",
    "ecs": "ECS",
    "ec2": "EC2",
    "vertex": "Vertex AI",
    "gce": "Compute Engine",
}


def _aws(region: str, path: str) -> str:
    return f"https://{region}.console.aws.amazon.com/{path}"


def console_url(
    job: Job, default_region: str, gcp_project: str | None = None, gce_zone: str | None = None
) -> str | None:
    """The console page of the job's current attempt, or None (local and Kubernetes jobs, no native id yet).

    AWS ids may be plain (a SageMaker job name, a Batch job id, an instance id) or ARNs, whose
    region wins over `default_region`. GCP ids are full resource names, which carry the project; a bare
    GCE instance name is found in the deployment's project and zone.
    """
    native = job.native_id
    if not native:
        return None
    region, resource = default_region, native
    arn = ARN_RE.match(native)
    if arn:
        region = arn["region"] or default_region
        resource = arn["resource"].split("/", 1)[-1]
    q = quote
    if job.backend == "sagemaker":
        return _aws(region, f"sagemaker/home?region={region}#/jobs/{q(resource, safe='')}")
    if job.backend == "aws-batch":
        return _aws(region, f"batch/home?region={region}#jobs/detail/{q(resource, safe='')}")
    if job.backend == "ec2":
        return _aws(region, f"ec2/home?region={region}#InstanceDetails:instanceId={q(resource, safe='')}")
    if job.backend == "ecs":
        # arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/TASK_ID: the console needs the cluster too.
        parts = resource.split("/")
        if not arn or len(parts) != 2:
            return None
        cluster, task = (q(p, safe="") for p in parts)
        return _aws(region, f"ecs/v2/clusters/{cluster}/tasks/{task}/configuration?region={region}")
    gcp = GCP_RE.match(native)
    if job.backend == "vertex" and gcp and gcp["kind"] == "customJobs":
        return (
            f"https://console.cloud.google.com/ai/platform/locations/{gcp['where']}/training/{gcp['name']}"
            f"?project={gcp['project']}"
        )
    if job.backend == "gce" and gcp and gcp["kind"] == "instances":
        return (
            f"https://console.cloud.google.com/compute/instancesDetail/zones/{gcp['where']}/instances/{gcp['name']}"
            f"?project={gcp['project']}"
        )
    if job.backend == "gce" and not gcp and gcp_project and gce_zone and "/" not in native:
        return (
            f"https://console.cloud.google.com/compute/instancesDetail/zones/{q(gce_zone, safe='')}"
            f"/instances/{q(native, safe='')}?project={q(gcp_project, safe='')}"
        )
    return None


def provider_name(backend: str) -> str:
    return PROVIDER.get(backend, backend)
