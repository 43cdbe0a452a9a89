"""The control plane's IAM policy per stage: exactly what the core and the enabled AWS backends declare.

`python -m chalicelib.backends.policy dev > .chalice/policy-dev.json` regenerates a checked-in policy.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from typing import Any

from chalicelib.backends import Cloud, backend_class, descriptor_or_none
from chalicelib.config import Settings

# What the core needs whatever the backends: its tables and the jobs stream (notify), logs,
# Slack secrets, the asynchronous Slack worker and reconcile's shards.
LOG_ACTIONS = ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents")
TABLE_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",  # a reconcile shard's jobs, the capacity counters
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
    "dynamodb:ConditionCheckItem",
    "dynamodb:DescribeTable",
)
TOKEN_LIST_ACTIONS = ("dynamodb:Scan",)
STREAM_ACTIONS = (
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
    "dynamodb:ListStreams",
)
# A secret's name is an SSM Parameter Store parameter ("ssm:/jobplane/<stage>/...", a standard SecureString
# decrypted with the AWS managed key: no storage charge) or a Secrets Manager secret ($0.40 a secret a month);
# the policy grants the reads of the kinds the stage's names use (secret_actions()).
SSM_SECRET_ACTIONS = ("ssm:GetParameter",)
SECRETS_MANAGER_ACTIONS = ("secretsmanager:GetSecretValue",)
SECRET_ACTIONS = SECRETS_MANAGER_ACTIONS + SSM_SECRET_ACTIONS
INVOKE_ACTIONS = ("lambda:InvokeFunction",)
# The stage's artifact store: upload URLs for packed code (code/*), artifact listings and download URLs
# (outputs/*), and the listing that tells whether code was uploaded; nothing else in the bucket.
OBJECT_ACTIONS = ("s3:PutObject", "s3:GetObject", "s3:ListBucket")
CORE_ACTIONS = LOG_ACTIONS + TABLE_ACTIONS + TOKEN_LIST_ACTIONS + STREAM_ACTIONS + INVOKE_ACTIONS + OBJECT_ACTIONS


def secret_names(settings: Settings) -> list[str]:
    names = (settings.slack_webhook_secret, settings.slack_bot_token_secret, settings.slack_signing_secret)
    return [n for n in names if n]


def secret_actions(settings: Settings) -> tuple[str, ...]:
    """The secret reads the stage's secret names need: SSM for ssm:<parameter>, Secrets Manager for the others."""
    names = secret_names(settings)
    found: tuple[str, ...] = ()
    if any(not n.startswith("ssm:") for n in names):
        found += SECRETS_MANAGER_ACTIONS
    if any(n.startswith("ssm:") for n in names):
        found += SSM_SECRET_ACTIONS
    return found


def aws_backends(settings: Settings) -> list[str]:
    """The enabled backends whose descriptor says they call AWS (the only ones IAM governs)."""
    return [b for b in settings.enabled_backends if (d := descriptor_or_none(b)) and d.cloud is Cloud.AWS]


def declared_actions(settings: Settings) -> set[str]:
    """The union the policy must grant: the core's actions, each enabled AWS backend's, and iam:PassRole."""
    actions = set(CORE_ACTIONS) | set(secret_actions(settings))
    for name in aws_backends(settings):
        actions |= set(backend_class(name).iam_actions)
    if aws_backends(settings):
        actions.add("iam:PassRole")
    actions |= set(devvm_actions(settings))
    for cls in endpoint_backend_classes(settings):
        actions |= set(cls.iam_actions)
    actions |= set(kubernetes_actions(settings))
    return actions


def endpoint_backend_classes(settings: Settings) -> list:
    """The AWS endpoint backends' descriptors enabled with an enabled job backend (SageMaker endpoints with
    `sagemaker`), one per distinct set of actions."""
    from chalicelib.endpoints.backends import enabled

    found: list = []
    for known in enabled(aws_backends(settings)):
        if known.cloud is Cloud.AWS and known.iam_actions not in [f.iam_actions for f in found]:
            found.append(known)
    return found


def endpoint_statements(settings: Settings) -> list[dict[str, Any]]:
    """SageMaker endpoints: their own jpe-* resources only; the model read from a job's outputs or the code
    folder (the package is written under code/endpoints/, which CodeUploads grants); CloudWatch metrics (no
    resource level)."""
    from chalicelib.jobs.contract import CODE_PREFIX, OUTPUTS_PREFIX

    bucket = f"arn:aws:s3:::{settings.artifacts_bucket}"
    statements: list[dict[str, Any]] = []
    for cls in endpoint_backend_classes(settings):
        sid = "".join(part.capitalize() for part in cls.enabled_with.split("-")) + "Endpoints"
        provider = cls.enabled_with
        statements += [
            {
                "Sid": sid,
                "Effect": "Allow",
                "Action": sorted(a for a in cls.iam_actions if a.startswith(f"{provider}:")),
                "Resource": [f"arn:aws:{provider}:*:*:{kind}/jpe-*" for kind in cls.resource_kinds],
            },
            {
                "Sid": f"{sid}Metrics",
                "Effect": "Allow",
                "Action": sorted(
                    a for a in cls.iam_actions if a.startswith("cloudwatch:") and a not in ENDPOINT_ALARM_ACTIONS
                ),
                "Resource": "*",
            },
            *_endpoint_scaling_statements(cls, sid),
            {
                "Sid": f"{sid}Models",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"{bucket}/{OUTPUTS_PREFIX}*", f"{bucket}/{CODE_PREFIX}*"],
            },
        ]
    return statements


# Alarm writes are granted on the endpoint backend's own alarms only (target tracking's).
ENDPOINT_ALARM_ACTIONS = ("cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms")


def _endpoint_scaling_statements(cls, sid: str) -> list[dict[str, Any]]:
    """Autoscaling: Application Auto Scaling (its scalable targets have generated ids: no resource level), the
    target tracking alarms, and the service-linked role it makes on first use."""
    found: list[dict[str, Any]] = []
    scaling = sorted(a for a in cls.iam_actions if a.startswith("application-autoscaling:"))
    if scaling:
        found.append({"Sid": f"{sid}Scaling", "Effect": "Allow", "Action": scaling, "Resource": "*"})
    alarms = sorted(a for a in cls.iam_actions if a in ENDPOINT_ALARM_ACTIONS)
    if alarms:
        found.append(
            {"Sid": f"{sid}Alarms", "Effect": "Allow", "Action": alarms, "Resource": list(cls.alarm_resources)}
        )
    if "iam:CreateServiceLinkedRole" in cls.iam_actions:
        found.append(
            {
                "Sid": f"{sid}ScalingRole",
                "Effect": "Allow",
                "Action": ["iam:CreateServiceLinkedRole"],
                "Resource": [role for role, _ in cls.service_linked_roles],
                "Condition": {"StringLike": {"iam:AWSServiceName": [svc for _, svc in cls.service_linked_roles]}},
            }
        )
    return found


def kubernetes_actions(settings: Settings) -> tuple[str, ...]:
    """What an enabled Kubernetes backend needs from AWS: only when one of its clusters is an EKS cluster."""
    found: list[str] = []
    for name in settings.enabled_backends:
        known = descriptor_or_none(name)
        if known and known.cloud is Cloud.KUBERNETES and any(c.kind == "eks" for c in settings.k8s_clusters):
            found += [a for a in known.iam_actions if a not in found]
    return tuple(found)


def devvm_actions(settings: Settings) -> tuple[str, ...]:
    """Dev VMs: start, stop and read their GPU metric, for each enabled AWS backend that hosts them."""
    import importlib

    actions: list[str] = []
    for name in aws_backends(settings):
        target = descriptor_or_none(name).devvm_provider
        if target:
            module, _, cls = target.partition(":")
            actions += [a for a in getattr(importlib.import_module(module), cls).iam_actions if a not in actions]
    return tuple(actions)


def object_statements(settings: Settings) -> list[dict[str, Any]]:
    """POST /code and GET /jobs/{id}/artifacts: code/* and outputs/* of the stage's bucket, no more."""
    from chalicelib.jobs.contract import CODE_PREFIX, OUTPUTS_PREFIX

    bucket = f"arn:aws:s3:::{settings.artifacts_bucket}"
    return [
        {"Sid": "CodeUploads", "Effect": "Allow", "Action": ["s3:PutObject"], "Resource": f"{bucket}/{CODE_PREFIX}*"},
        {
            "Sid": "ArtifactDownloads",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": f"{bucket}/{OUTPUTS_PREFIX}*",
        },
        {
            "Sid": "CodeAndArtifactListing",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": [f"{CODE_PREFIX}*", f"{OUTPUTS_PREFIX}*"]}},
        },
    ]


def secret_statements(settings: Settings) -> list[dict[str, Any]]:
    """Read exactly the stage's Slack secrets: parameters by their names, Secrets Manager secrets under
    jobplane/<stage>/ (their ARNs end in a random suffix)."""
    actions = secret_actions(settings)
    if not actions:
        return []
    resources = []
    if SECRETS_MANAGER_ACTIONS[0] in actions:
        resources.append(f"arn:aws:secretsmanager:*:*:secret:jobplane/{settings.stage}/*")
    for name in secret_names(settings):
        if name.startswith("ssm:"):
            resources.append(f"arn:aws:ssm:*:*:parameter/{name[len('ssm:') :].lstrip('/')}")
    return [{"Sid": "SlackSecrets", "Effect": "Allow", "Action": list(actions), "Resource": resources}]


def build(settings: Settings) -> dict[str, Any]:
    stage = settings.stage
    tables = [getattr(settings, f.name) for f in fields(settings) if f.name.endswith("_table")]
    statements: list[dict[str, Any]] = [
        {"Sid": "Logs", "Effect": "Allow", "Action": list(LOG_ACTIONS), "Resource": "arn:aws:logs:*:*:*"},
        {
            "Sid": "Tables",
            "Effect": "Allow",
            "Action": list(TABLE_ACTIONS),
            "Resource": [f"arn:aws:dynamodb:*:*:table/{t}" for t in tables]
            + [f"arn:aws:dynamodb:*:*:table/{t}/index/*" for t in tables],
        },
        {
            # GET /tokens and DELETE /tokens/{id} read the tokens table whole (one small item per token)
            "Sid": "TokenListing",
            "Effect": "Allow",
            "Action": list(TOKEN_LIST_ACTIONS),
            "Resource": f"arn:aws:dynamodb:*:*:table/{settings.tokens_table}",
        },
        {
            "Sid": "JobsStream",
            "Effect": "Allow",
            "Action": list(STREAM_ACTIONS),
            "Resource": f"arn:aws:dynamodb:*:*:table/{settings.jobs_table}/stream/*",
        },
        *secret_statements(settings),
        {
            "Sid": "SlackWorker",
            "Effect": "Allow",
            "Action": list(INVOKE_ACTIONS),
            "Resource": f"arn:aws:lambda:*:*:function:{settings.slack_worker_function}",
        },
        {
            "Sid": "ReconcileShards",
            "Effect": "Allow",
            "Action": list(INVOKE_ACTIONS),
            "Resource": f"arn:aws:lambda:*:*:function:{settings.reconcile_shard_function}",
        },
        *object_statements(settings),
    ]
    passes: dict[str, set[str]] = {}
    for name in aws_backends(settings):
        backend = backend_class(name)(settings)
        sid = "".join(part.capitalize() for part in name.replace("-", " ").split())
        s3 = sorted(a for a in backend.iam_actions if a.startswith("s3:"))
        logs = sorted(a for a in backend.iam_actions if a.startswith("logs:"))
        rest = sorted(a for a in backend.iam_actions if not a.startswith(("s3:", "logs:")))
        # Launch and describe calls cannot be narrowed to resources that do not exist yet.
        statements.append({"Sid": sid, "Effect": "Allow", "Action": rest, "Resource": "*"})
        if logs:
            from chalicelib.backends.aws.cwlogs import log_group_arns

            # Reading a job's output: only the log groups this backend's jobs write to.
            statements.append(
                {
                    "Sid": f"{sid}Logs",
                    "Effect": "Allow",
                    "Action": logs,
                    "Resource": log_group_arns(*backend.log_groups()),
                }
            )
        if s3:
            statements.append(
                {
                    "Sid": f"{sid}Artifacts",
                    "Effect": "Allow",
                    "Action": s3,
                    "Resource": f"arn:aws:s3:::{settings.artifacts_bucket}/jobplane/{stage}/*",
                }
            )
        for role, service in backend.roles():
            passes.setdefault(role, set()).add(service)
    statements += endpoint_statements(settings)
    eks = sorted({c.cluster for c in settings.k8s_clusters if c.kind == "eks"})
    if kubernetes_actions(settings):
        # The endpoint and CA of exactly the configured EKS clusters (the token needs no permission).
        statements.append(
            {
                "Sid": "KubernetesEks",
                "Effect": "Allow",
                "Action": sorted(kubernetes_actions(settings)),
                "Resource": [f"arn:aws:eks:*:*:cluster/{name}" for name in eks],
            }
        )
    if devvm_actions(settings):
        statements.append(
            {"Sid": "DevVms", "Effect": "Allow", "Action": sorted(devvm_actions(settings)), "Resource": "*"}
        )
    if passes:
        from chalicelib.backends.aws.base import role_arn

        statements.append(
            {
                "Sid": "PassJobRoles",
                "Effect": "Allow",
                "Action": ["iam:PassRole"],
                "Resource": sorted(role_arn(role) for role in passes),
                "Condition": {"StringEquals": {"iam:PassedToService": sorted(set().union(*passes.values()))}},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def stage_settings(stage: str, config_path: str = ".chalice/config.json") -> Settings:
    """The settings a stage's Lambda functions get from .chalice/config.json."""
    with open(config_path) as fh:
        config = json.load(fh)
    env = {**config.get("environment_variables", {}), **config["stages"][stage].get("environment_variables", {})}
    return Settings.from_env(env)


def render(stage: str, config_path: str = ".chalice/config.json") -> str:
    return json.dumps(build(stage_settings(stage, config_path)), indent=2) + "\n"


def render_job_role(stage: str, backend: str, config_path: str = ".chalice/config.json") -> str:
    """The policy for the role `backend`'s jobs run as (what they read and write in the artifact store)."""
    policy = backend_class(backend)(stage_settings(stage, config_path)).job_role_policy()
    if policy is None:
        raise SystemExit(f"{backend}'s jobs do not run with a role jobplane declares")
    return json.dumps(policy, indent=2) + "\n"


if __name__ == "__main__":
    # python -m chalicelib.backends.policy STAGE [--job-role BACKEND]
    args = sys.argv[1:]
    if "--job-role" in args:
        at = args.index("--job-role")
        sys.stdout.write(render_job_role(args[0] if at else "dev", args[at + 1]))
    else:
        sys.stdout.write(render(args[0] if args else "dev"))
