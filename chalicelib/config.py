"""Settings.from_env(): the only place that reads os.environ."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from chalicelib.errors import ConfigError

BACKEND_NAMES = ("sagemaker", "vertex", "aws-batch", "ecs", "ec2", "gce", "kubernetes", "local")


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _int(name: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _choice(name: str, raw: str, valid: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in valid:
        raise ConfigError(f"{name} must be one of {', '.join(valid)}, got {raw!r}")
    return value


def _list(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _limits(raw: str) -> tuple[tuple[str, int], ...]:
    """JOBPLANE_CAPACITY_LIMITS="sagemaker:ml.g5=4,ec2:*=16,local:cpu=2" -> (("sagemaker:ml.g5", 4), ...)."""
    limits: dict[str, int] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        pool, sep, value = part.partition("=")
        backend, colon, family = pool.strip().partition(":")
        if not sep or not colon or not family or backend not in BACKEND_NAMES:
            raise ConfigError(
                f"JOBPLANE_CAPACITY_LIMITS entry {part!r} must look like BACKEND:FAMILY=N "
                f"(BACKEND one of {', '.join(BACKEND_NAMES)}; FAMILY an instance family, GPU type, cpu or *)"
            )
        limits[f"{backend}:{family.strip()}"] = _int(f"JOBPLANE_CAPACITY_LIMITS[{pool.strip()}]", value.strip(), 0)
    return tuple(sorted(limits.items()))


@dataclass(frozen=True)
class Settings:
    """Everything a function needs to know about its deployment, read once per container."""

    stage: str = "dev"
    region: str = "us-east-1"
    # Table names: one set per stage.
    jobs_table: str = "jobplane-dev-jobs"
    events_table: str = "jobplane-dev-job-events"
    tokens_table: str = "jobplane-dev-tokens"
    idempotency_table: str = "jobplane-dev-idempotency"
    capacity_table: str = "jobplane-dev-capacity"
    devvms_table: str = "jobplane-dev-devvms"
    # Standard SDK variable; set only against emulators (moto server in the local stack and tests).
    aws_endpoint_url: str | None = None
    enabled_backends: tuple[str, ...] = ("local",)
    default_backend: str = "local"
    # The local backend: where job folders (logs, exit status) live and where its runner reports.
    local_state_dir: str = ".jobplane/jobs"
    local_event_url: str | None = None
    # When set, the local backend runs only these programs (e.g. while fuzzing the API).
    local_allowed_programs: tuple[str, ...] = ()
    # Slack: names of secrets, never the secrets themselves. A name is a Secrets Manager secret,
    # or an SSM Parameter Store parameter when it starts with "ssm:" (e.g. ssm:/jobplane/dev/slack-bot-token).
    slack_webhook_secret: str | None = None
    slack_bot_token_secret: str | None = None
    slack_signing_secret: str | None = None
    # Dedup markers of sent notifications and the Slack user -> jobplane user mapping.
    slack_table: str = "jobplane-dev-slack"
    # Slack's Web API (chat.postMessage); tests point it at a local server.
    slack_api_url: str = "https://slack.com/api/"
    # Seconds one notify invocation may spend on Slack (retries included), within the Lambda's own limit.
    slack_send_budget_seconds: int = 20
    # Slow slash commands run here, asynchronously: "lambda" (invoke slack_worker_function with
    # InvocationType=Event) or "thread" (in-process, for the local stack).
    slack_async: str = "lambda"
    slack_worker_function: str = "jobplane-dev-slack_worker"
    # Seconds a LAUNCHING job may stay so before reconcile treats the launch as lost.
    launch_deadline_seconds: int = 600
    # The reaper: a tagged VM is stopped when its GPU stays under idle_gpu_percent (or it sends no
    # heartbeat) for idle_minutes, or when it runs past max_runtime_minutes + overdue_grace_minutes.
    idle_gpu_percent: float = 5.0
    idle_minutes: int = 30
    overdue_grace_minutes: int = 15
    # Concurrent-use limits of the quota-aware queue: "backend:family" -> units (GPUs; a CPU job is 1).
    # `family` is an instance family (ml.g5, g5), a GPU type (A10G), `cpu`, or `*` for every GPU family.
    capacity_limits: tuple[tuple[str, int], ...] = ()
    # --- Google Cloud (Vertex AI, GCE, Cloud Functions) ---------------------------------------
    # The project and region GCP backends run in; required when vertex or gce is enabled.
    gcp_project: str | None = None
    gcp_region: str = "us-central1"
    gce_zone: str = "us-central1-a"
    # GCE ad-hoc VMs: boot image (a Deep Learning VM family: docker, NVIDIA driver, gcloud), disk, network.
    gce_image: str = "projects/deeplearning-platform-release/global/images/family/common-cu123-debian-11-py310"
    gce_disk_gb: int = 200
    gce_network: str = "global/networks/default"
    # Service accounts the jobs run as (VMs and Vertex workers); None: the project's default.
    gce_service_account: str | None = None
    vertex_service_account: str | None = None
    # gs:// bucket (and prefix) where VMs write their exit status; required when gce is enabled.
    gcp_status_uri: str | None = None
    # Pub/Sub topic (projects/P/topics/T) the log sink and jobplane's VMs publish state hints to.
    gcp_events_topic: str | None = None
    # Only against emulators and fakes: http://host:port serving the Vertex, Compute and Storage REST APIs.
    gcp_api_endpoint: str | None = None
    # Cloud Functions reach DynamoDB by assuming this role with their Google identity token.
    aws_role_arn: str | None = None
    aws_web_identity_audience: str = "sts.amazonaws.com"
    gce_metadata_host: str = "metadata.google.internal"
    log_level: str = "INFO"
    # --- AWS compute (SageMaker, Batch, ECS, EC2) and upload triggers ------------------------------
    # Roles are names (or ARNs); the checked-in policy limits iam:PassRole to exactly these.
    # Bucket for what jobplane itself writes: ad-hoc VMs' exit status and log tail, default outputs.
    artifacts_bucket: str = "jobplane-dev-artifacts"
    # SageMaker: the execution role training jobs run as, and each job's EBS volume.
    sagemaker_role: str = "jobplane-dev-sagemaker"
    sagemaker_volume_gb: int = 50
    # Extra minutes a managed-spot SageMaker job may wait for capacity (MaxWaitTimeInSeconds - MaxRuntime).
    spot_wait_minutes: int = 60
    # AWS Batch: job queues (CPU, GPU and, optionally, spot) and the role jobs run as.
    batch_job_queue: str = "jobplane-dev"
    batch_gpu_job_queue: str = "jobplane-dev-gpu"
    batch_spot_job_queue: str | None = None
    batch_job_role: str = "jobplane-dev-batch-job"
    # ECS: cluster, launch type (EC2, or FARGATE for CPU-only jobs), roles, and awsvpc networking.
    ecs_cluster: str = "jobplane-dev"
    ecs_launch_type: str = "EC2"
    ecs_task_role: str = "jobplane-dev-ecs-task"
    ecs_execution_role: str = "jobplane-dev-ecs-execution"
    ecs_subnets: tuple[str, ...] = ()
    ecs_security_groups: tuple[str, ...] = ()
    # Ad-hoc EC2: a launch template (lt-... id or a name) or an AMI, where the VM goes, and its profile.
    ec2_launch_template: str | None = None
    ec2_ami: str | None = None
    ec2_subnet: str | None = None
    ec2_security_groups: tuple[str, ...] = ()
    ec2_instance_profile: str = "jobplane-dev-ec2-job"
    # Upload trigger rules (bucket + prefix/glob -> job template); relative paths are from the code root.
    triggers_file: str = "chalicelib/triggers.yaml"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        stage = env.get("JOBPLANE_STAGE", "dev")
        prefix = env.get("JOBPLANE_TABLE_PREFIX", f"jobplane-{stage}")
        backends = tuple(b.strip() for b in env.get("JOBPLANE_BACKENDS", "local").split(",") if b.strip())
        unknown = [b for b in backends if b not in BACKEND_NAMES]
        if unknown:
            raise ConfigError(f"JOBPLANE_BACKENDS names unknown backends {unknown}; valid: {', '.join(BACKEND_NAMES)}")
        if not backends:
            raise ConfigError("JOBPLANE_BACKENDS must name at least one backend")
        default_backend = env.get("JOBPLANE_DEFAULT_BACKEND", backends[0])
        if default_backend not in backends:
            raise ConfigError(
                f"JOBPLANE_DEFAULT_BACKEND={default_backend!r} is not in JOBPLANE_BACKENDS {list(backends)}"
            )
        gcp_project = env.get("JOBPLANE_GCP_PROJECT") or None
        gcp_status_uri = env.get("JOBPLANE_GCP_STATUS_URI") or None
        if gcp_project is None and {"vertex", "gce"} & set(backends):
            raise ConfigError("JOBPLANE_GCP_PROJECT must be set when vertex or gce is in JOBPLANE_BACKENDS")
        if "gce" in backends and not (gcp_status_uri or "").startswith("gs://"):
            raise ConfigError("JOBPLANE_GCP_STATUS_URI must be a gs:// URI when gce is in JOBPLANE_BACKENDS")
        return cls(
            stage=stage,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            jobs_table=env.get("JOBPLANE_JOBS_TABLE", f"{prefix}-jobs"),
            events_table=env.get("JOBPLANE_EVENTS_TABLE", f"{prefix}-job-events"),
            tokens_table=env.get("JOBPLANE_TOKENS_TABLE", f"{prefix}-tokens"),
            idempotency_table=env.get("JOBPLANE_IDEMPOTENCY_TABLE", f"{prefix}-idempotency"),
            capacity_table=env.get("JOBPLANE_CAPACITY_TABLE", f"{prefix}-capacity"),
            devvms_table=env.get("JOBPLANE_DEVVMS_TABLE", f"{prefix}-devvms"),
            capacity_limits=_limits(env.get("JOBPLANE_CAPACITY_LIMITS", "")),
            idle_gpu_percent=float(_int("JOBPLANE_IDLE_GPU_PERCENT", env.get("JOBPLANE_IDLE_GPU_PERCENT", "5"), 0)),
            idle_minutes=_int("JOBPLANE_IDLE_MINUTES", env.get("JOBPLANE_IDLE_MINUTES", "30"), 1),
            overdue_grace_minutes=_int(
                "JOBPLANE_OVERDUE_GRACE_MINUTES", env.get("JOBPLANE_OVERDUE_GRACE_MINUTES", "15"), 0
            ),
            aws_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            enabled_backends=backends,
            default_backend=default_backend,
            local_state_dir=env.get("JOBPLANE_LOCAL_STATE_DIR", ".jobplane/jobs"),
            local_event_url=env.get("JOBPLANE_LOCAL_EVENT_URL") or None,
            local_allowed_programs=tuple(
                p.strip() for p in env.get("JOBPLANE_LOCAL_ALLOWED_PROGRAMS", "").split(",") if p.strip()
            ),
            slack_webhook_secret=env.get("JOBPLANE_SLACK_WEBHOOK_SECRET") or None,
            slack_bot_token_secret=env.get("JOBPLANE_SLACK_BOT_TOKEN_SECRET") or None,
            slack_signing_secret=env.get("JOBPLANE_SLACK_SIGNING_SECRET") or None,
            slack_table=env.get("JOBPLANE_SLACK_TABLE", f"{prefix}-slack"),
            slack_api_url=env.get("JOBPLANE_SLACK_API_URL") or "https://slack.com/api/",
            slack_send_budget_seconds=_int(
                "JOBPLANE_SLACK_SEND_BUDGET_SECONDS", env.get("JOBPLANE_SLACK_SEND_BUDGET_SECONDS", "20"), 1
            ),
            slack_async=_choice(
                "JOBPLANE_SLACK_ASYNC",
                env.get("JOBPLANE_SLACK_ASYNC", "thread" if stage == "local" else "lambda"),
                ("lambda", "thread"),
            ),
            slack_worker_function=env.get("JOBPLANE_SLACK_WORKER_FUNCTION", f"jobplane-{stage}-slack_worker"),
            launch_deadline_seconds=_int(
                "JOBPLANE_LAUNCH_DEADLINE_SECONDS", env.get("JOBPLANE_LAUNCH_DEADLINE_SECONDS", "600"), 1
            ),
            gcp_project=gcp_project,
            gcp_region=env.get("JOBPLANE_GCP_REGION") or "us-central1",
            gce_zone=env.get("JOBPLANE_GCE_ZONE") or f"{env.get('JOBPLANE_GCP_REGION') or 'us-central1'}-a",
            gce_image=env.get("JOBPLANE_GCE_IMAGE") or cls.gce_image,
            gce_disk_gb=_int("JOBPLANE_GCE_DISK_GB", env.get("JOBPLANE_GCE_DISK_GB", "200"), 10),
            gce_network=env.get("JOBPLANE_GCE_NETWORK") or cls.gce_network,
            gce_service_account=env.get("JOBPLANE_GCE_SERVICE_ACCOUNT") or None,
            vertex_service_account=env.get("JOBPLANE_VERTEX_SERVICE_ACCOUNT") or None,
            gcp_status_uri=gcp_status_uri,
            gcp_events_topic=env.get("JOBPLANE_GCP_EVENTS_TOPIC") or None,
            gcp_api_endpoint=env.get("JOBPLANE_GCP_API_ENDPOINT") or None,
            aws_role_arn=env.get("JOBPLANE_AWS_ROLE_ARN") or None,
            aws_web_identity_audience=env.get("JOBPLANE_AWS_WEB_IDENTITY_AUDIENCE") or "sts.amazonaws.com",
            gce_metadata_host=env.get("GCE_METADATA_HOST") or "metadata.google.internal",
            log_level=env.get("JOBPLANE_LOG_LEVEL", "INFO"),
            artifacts_bucket=env.get("JOBPLANE_ARTIFACTS_BUCKET", f"jobplane-{stage}-artifacts"),
            sagemaker_role=env.get("JOBPLANE_SAGEMAKER_ROLE", f"jobplane-{stage}-sagemaker"),
            sagemaker_volume_gb=_int("JOBPLANE_SAGEMAKER_VOLUME_GB", env.get("JOBPLANE_SAGEMAKER_VOLUME_GB", "50"), 1),
            spot_wait_minutes=_int("JOBPLANE_SPOT_WAIT_MINUTES", env.get("JOBPLANE_SPOT_WAIT_MINUTES", "60"), 0),
            batch_job_queue=env.get("JOBPLANE_BATCH_JOB_QUEUE", f"jobplane-{stage}"),
            batch_gpu_job_queue=env.get("JOBPLANE_BATCH_GPU_JOB_QUEUE", f"jobplane-{stage}-gpu"),
            batch_spot_job_queue=env.get("JOBPLANE_BATCH_SPOT_JOB_QUEUE") or None,
            batch_job_role=env.get("JOBPLANE_BATCH_JOB_ROLE", f"jobplane-{stage}-batch-job"),
            ecs_cluster=env.get("JOBPLANE_ECS_CLUSTER", f"jobplane-{stage}"),
            ecs_launch_type=_choice(
                "JOBPLANE_ECS_LAUNCH_TYPE", env.get("JOBPLANE_ECS_LAUNCH_TYPE", "ec2"), ("ec2", "fargate")
            ).upper(),
            ecs_task_role=env.get("JOBPLANE_ECS_TASK_ROLE", f"jobplane-{stage}-ecs-task"),
            ecs_execution_role=env.get("JOBPLANE_ECS_EXECUTION_ROLE", f"jobplane-{stage}-ecs-execution"),
            ecs_subnets=_list(env.get("JOBPLANE_ECS_SUBNETS", "")),
            ecs_security_groups=_list(env.get("JOBPLANE_ECS_SECURITY_GROUPS", "")),
            ec2_launch_template=env.get("JOBPLANE_EC2_LAUNCH_TEMPLATE") or None,
            ec2_ami=env.get("JOBPLANE_EC2_AMI") or None,
            ec2_subnet=env.get("JOBPLANE_EC2_SUBNET") or None,
            ec2_security_groups=_list(env.get("JOBPLANE_EC2_SECURITY_GROUPS", "")),
            ec2_instance_profile=env.get("JOBPLANE_EC2_INSTANCE_PROFILE", f"jobplane-{stage}-ec2-job"),
            triggers_file=env.get("JOBPLANE_TRIGGERS_FILE", "chalicelib/triggers.yaml"),
        )

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings (for the local stack's child processes)."""
        env = {
            "JOBPLANE_STAGE": self.stage,
            "AWS_REGION": self.region,
            "JOBPLANE_JOBS_TABLE": self.jobs_table,
            "JOBPLANE_EVENTS_TABLE": self.events_table,
            "JOBPLANE_TOKENS_TABLE": self.tokens_table,
            "JOBPLANE_IDEMPOTENCY_TABLE": self.idempotency_table,
            "JOBPLANE_CAPACITY_TABLE": self.capacity_table,
            "JOBPLANE_DEVVMS_TABLE": self.devvms_table,
            "JOBPLANE_CAPACITY_LIMITS": ",".join(f"{k}={v}" for k, v in self.capacity_limits),
            "JOBPLANE_BACKENDS": ",".join(self.enabled_backends),
            "JOBPLANE_DEFAULT_BACKEND": self.default_backend,
            "JOBPLANE_LOCAL_STATE_DIR": self.local_state_dir,
            "JOBPLANE_LAUNCH_DEADLINE_SECONDS": str(self.launch_deadline_seconds),
            "JOBPLANE_LOG_LEVEL": self.log_level,
            "JOBPLANE_SLACK_TABLE": self.slack_table,
            "JOBPLANE_SLACK_API_URL": self.slack_api_url,
            "JOBPLANE_SLACK_SEND_BUDGET_SECONDS": str(self.slack_send_budget_seconds),
            "JOBPLANE_SLACK_ASYNC": self.slack_async,
            "JOBPLANE_SLACK_WORKER_FUNCTION": self.slack_worker_function,
            "JOBPLANE_ARTIFACTS_BUCKET": self.artifacts_bucket,
            "JOBPLANE_TRIGGERS_FILE": self.triggers_file,
            "JOBPLANE_SAGEMAKER_ROLE": self.sagemaker_role,
            "JOBPLANE_SAGEMAKER_VOLUME_GB": str(self.sagemaker_volume_gb),
            "JOBPLANE_SPOT_WAIT_MINUTES": str(self.spot_wait_minutes),
            "JOBPLANE_BATCH_JOB_QUEUE": self.batch_job_queue,
            "JOBPLANE_BATCH_GPU_JOB_QUEUE": self.batch_gpu_job_queue,
            "JOBPLANE_BATCH_JOB_ROLE": self.batch_job_role,
            "JOBPLANE_ECS_CLUSTER": self.ecs_cluster,
            "JOBPLANE_ECS_LAUNCH_TYPE": self.ecs_launch_type.lower(),
            "JOBPLANE_ECS_TASK_ROLE": self.ecs_task_role,
            "JOBPLANE_ECS_EXECUTION_ROLE": self.ecs_execution_role,
            "JOBPLANE_ECS_SUBNETS": ",".join(self.ecs_subnets),
            "JOBPLANE_ECS_SECURITY_GROUPS": ",".join(self.ecs_security_groups),
            "JOBPLANE_EC2_SECURITY_GROUPS": ",".join(self.ec2_security_groups),
            "JOBPLANE_EC2_INSTANCE_PROFILE": self.ec2_instance_profile,
        }
        for name, value in (
            ("AWS_ENDPOINT_URL", self.aws_endpoint_url),
            ("JOBPLANE_LOCAL_EVENT_URL", self.local_event_url),
            ("JOBPLANE_BATCH_SPOT_JOB_QUEUE", self.batch_spot_job_queue),
            ("JOBPLANE_EC2_LAUNCH_TEMPLATE", self.ec2_launch_template),
            ("JOBPLANE_EC2_AMI", self.ec2_ami),
            ("JOBPLANE_EC2_SUBNET", self.ec2_subnet),
            ("JOBPLANE_SLACK_WEBHOOK_SECRET", self.slack_webhook_secret),
            ("JOBPLANE_SLACK_BOT_TOKEN_SECRET", self.slack_bot_token_secret),
            ("JOBPLANE_SLACK_SIGNING_SECRET", self.slack_signing_secret),
            ("JOBPLANE_GCP_PROJECT", self.gcp_project),
            ("JOBPLANE_GCP_STATUS_URI", self.gcp_status_uri),
            ("JOBPLANE_GCP_EVENTS_TOPIC", self.gcp_events_topic),
            ("JOBPLANE_GCP_API_ENDPOINT", self.gcp_api_endpoint),
            ("JOBPLANE_GCP_REGION", self.gcp_region),
            ("JOBPLANE_GCE_ZONE", self.gce_zone),
            ("JOBPLANE_GCE_IMAGE", self.gce_image),
            ("JOBPLANE_GCE_DISK_GB", str(self.gce_disk_gb)),
            ("JOBPLANE_GCE_NETWORK", self.gce_network),
            ("JOBPLANE_GCE_SERVICE_ACCOUNT", self.gce_service_account),
            ("JOBPLANE_VERTEX_SERVICE_ACCOUNT", self.vertex_service_account),
            ("JOBPLANE_AWS_ROLE_ARN", self.aws_role_arn),
            ("JOBPLANE_AWS_WEB_IDENTITY_AUDIENCE", self.aws_web_identity_audience),
        ):
            if value:
                env[name] = value
        return env


def deploy_constants(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Names the Chalice decorators need when app.py is imported (packaging and Lambda alike)."""
    env = os.environ if environ is None else environ
    stage = env.get("JOBPLANE_STAGE", "dev")
    return {
        "upload_bucket": env.get("JOBPLANE_UPLOAD_BUCKET", f"jobplane-{stage}-uploads"),
        "jobs_stream_arn": env.get(
            "JOBPLANE_JOBS_STREAM_ARN",
            f"arn:aws:dynamodb:us-east-1:000000000000:table/jobplane-{stage}-jobs/stream/latest",
        ),
    }
