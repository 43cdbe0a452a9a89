"""on_job_state_change's EventBridge pattern: only the detail-types jobplane handles, of its own resources.

Every event the rule matches is a Lambda invocation (billed, and logged): with `{"source": [...]}` alone, every
SageMaker, Batch, ECS task and EC2 instance change in the account invoked it. Each branch below names the
detail-type a backend's parse_event reads and, where the event carries it, what makes the resource ours: the
jp- / jpe- name prefix (SageMaker), this deployment's job queues (Batch) and cluster (ECS). EC2 instance events
carry only an instance id, so their branch narrows by detail-type alone (parse_event reads the tags).
tests/backends/test_event_pattern.py checks each branch against the backends' own constants and parsers.
"""

from __future__ import annotations

from typing import Any

from chalicelib.backends import Cloud
from chalicelib.backends.sources import deployed

JOB_NAME_PREFIX = "jp-"  # chalicelib.jobs.model.native_name
ENDPOINT_NAME_PREFIX = "jpe-"  # chalicelib.endpoints.backends.sagemaker


def _arn_or_suffix(value: str, resource: str) -> dict[str, str] | str:
    """A setting that may be a name or an ARN: the exact ARN, or any ARN ending in /<name> of that resource type."""
    return value if value.startswith("arn:") else {"suffix": f":{resource}/{value}"}


def branches(batch_job_queues: list[str], ecs_cluster: str) -> dict[str, list[dict[str, Any]]]:
    """source -> the patterns of the events jobplane reads from it."""
    return {
        "aws.sagemaker": [
            {
                "detail-type": ["SageMaker Training Job State Change"],
                "detail": {"TrainingJobName": [{"prefix": JOB_NAME_PREFIX}]},
            },
            {
                "detail-type": ["SageMaker Endpoint State Change"],
                "detail": {"EndpointName": [{"prefix": ENDPOINT_NAME_PREFIX}]},
            },
        ],
        "aws.batch": [
            {
                "detail-type": ["Batch Job State Change"],
                "detail": {"jobQueue": [_arn_or_suffix(q, "job-queue") for q in batch_job_queues]},
            }
        ],
        "aws.ecs": [
            {
                "detail-type": ["ECS Task State Change"],
                "detail": {"clusterArn": [_arn_or_suffix(ecs_cluster, "cluster")]},
            }
        ],
        "aws.ec2": [
            {"detail-type": ["EC2 Instance State-change Notification", "EC2 Spot Instance Interruption Warning"]}
        ],
        "jobplane.local": [{"detail-type": ["jobplane Local Job State Change"]}],
    }


def state_change_pattern(batch_job_queues: list[str], ecs_cluster: str) -> dict[str, Any]:
    """The rule's pattern: one `$or` branch per (deployed source, detail-type)."""
    table = branches(batch_job_queues, ecs_cluster)
    sources = deployed(Cloud.AWS, Cloud.LOCAL)
    missing = [s for s in sources if s not in table]
    if missing:
        raise ValueError(f"no EventBridge branch for the deployed source(s) {', '.join(missing)}")
    return {"$or": [{"source": [source], **branch} for source in sources for branch in table[source]]}


def pattern_from_env(environ=None) -> dict[str, Any]:
    """app.py's pattern, from the same settings the Batch and ECS backends read (packaging and Lambda alike)."""
    from chalicelib.config import Settings

    settings = Settings.from_env(environ)
    queues = [settings.batch_job_queue, settings.batch_gpu_job_queue, settings.batch_spot_job_queue]
    return state_change_pattern([q for q in queues if q], settings.ecs_cluster)
