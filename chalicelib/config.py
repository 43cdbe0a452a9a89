"""Settings.from_env(): the only place that reads os.environ; each setting is declared once."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from chalicelib.backends import DEFAULT_BACKENDS, names
from chalicelib.errors import ConfigError


def backend_names() -> tuple[str, ...]:
    """The backend names settings accept: the registry's, read when parsed (the registry imports no backend)."""
    return names()


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


# --- kinds of value: how a variable's text becomes a field and back ---------------------------
@dataclass(frozen=True)
class Text:
    def parse(self, var: str, raw: str) -> Any:
        return raw

    def show(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class Url(Text):
    def parse(self, var: str, raw: str) -> str:
        if not raw.startswith(("http://", "https://")):
            raise ConfigError(f"{var} must be an http:// or https:// URL, got {raw!r}")
        return raw


@dataclass(frozen=True)
class Integer(Text):
    minimum: int = 0

    def parse(self, var: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{var} must be an integer, got {raw!r}") from None
        if value < self.minimum:
            raise ConfigError(f"{var} must be at least {self.minimum}, got {value}")
        return value


@dataclass(frozen=True)
class Number(Text):
    minimum: float
    maximum: float

    def parse(self, var: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{var} must be a number, got {raw!r}") from None
        # float() also accepts nan, which every comparison would let through.
        if not self.minimum <= value <= self.maximum:
            raise ConfigError(f"{var} must be a number from {self.minimum:g} to {self.maximum:g}, got {raw!r}")
        return value

    def show(self, value: Any) -> str:
        return repr(float(value))


@dataclass(frozen=True)
class Choice(Text):
    """One of a few words, matched without regard to case and kept in the spelling listed."""

    valid: tuple[str, ...]

    def parse(self, var: str, raw: str) -> str:
        for word in self.valid:
            if raw.strip().lower() == word.lower():
                return word
        raise ConfigError(f"{var} must be one of {', '.join(self.valid)}, got {raw!r}")


@dataclass(frozen=True)
class Names(Text):
    """A comma-separated list; blanks between commas are ignored."""

    def parse(self, var: str, raw: str) -> tuple[str, ...]:
        return tuple(p.strip() for p in raw.split(",") if p.strip())

    def show(self, value: Any) -> str:
        return ",".join(value)


@dataclass(frozen=True)
class Backends(Names):
    def parse(self, var: str, raw: str) -> tuple[str, ...]:
        backends = super().parse(var, raw)
        valid = backend_names()
        unknown = [b for b in backends if b not in valid]
        if unknown:
            raise ConfigError(f"{var} names unknown backends {unknown}; valid: {', '.join(valid)}")
        if not backends:
            raise ConfigError(f"{var} must name at least one backend")
        return backends


@dataclass(frozen=True)
class Limits(Text):
    """JOBPLANE_CAPACITY_LIMITS="sagemaker:ml.g5=4,ec2:*=16,local:cpu=2" -> (("sagemaker:ml.g5", 4), ...)."""

    def parse(self, var: str, raw: str) -> tuple[tuple[str, int], ...]:
        valid = backend_names()
        limits: dict[str, int] = {}
        for part in (p.strip() for p in raw.split(",")):
            if not part:
                continue
            pool, sep, value = part.partition("=")
            backend, colon, family = pool.strip().partition(":")
            if not sep or not colon or not family or backend not in valid:
                raise ConfigError(
                    f"{var} entry {part!r} must look like BACKEND:FAMILY=N "
                    f"(BACKEND one of {', '.join(valid)}; FAMILY an instance family, GPU type, cpu or *)"
                )
            limits[f"{backend}:{family.strip()}"] = Integer(0).parse(f"{var}[{pool.strip()}]", value.strip())
        return tuple(sorted(limits.items()))

    def show(self, value: Any) -> str:
        return ",".join(f"{pool}={units}" for pool, units in value)


@dataclass(frozen=True)
class Clusters(Text):
    """JOBPLANE_K8S_CLUSTERS: a JSON list of the kubernetes backend's clusters (see backends/kubernetes/clusters.py)."""

    def parse(self, var: str, raw: str) -> tuple[Any, ...]:
        from chalicelib.backends.kubernetes.clusters import parse_clusters

        return parse_clusters(var, raw)

    def show(self, value: Any) -> str:
        from chalicelib.backends.kubernetes.clusters import show_clusters

        return show_clusters(value)


# --- the declaration --------------------------------------------------------------------------
@dataclass(frozen=True)
class Var:
    """How one field is read: its variable, older names it also answers to, kind, derived default."""

    name: str
    kind: Text
    also: tuple[str, ...] = ()
    # A default computed from the fields declared before it: a str.format template or a function.
    derive: str | Callable[[dict[str, Any]], Any] | None = None


_VAR = "jobplane.setting"


def setting(
    name: str,
    default: Any = MISSING,
    kind: Text = Text(),
    *,
    derive: str | Callable[[dict[str, Any]], Any] | None = None,
    also: tuple[str, ...] = (),
) -> Any:
    """Declare a field read from variable `name`; with neither default nor derive it is required."""
    metadata = {_VAR: Var(name, kind, also, derive)}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def read_env(cls: type, env: Mapping[str, str]) -> Any:
    """Build `cls` from `env` in declaration order, so a derived default sees the fields before it."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        var: Var = f.metadata[_VAR]
        # Empty counts as unset for every setting: no setting has "" as a valid value.
        raw = next((env[n] for n in (var.name, *var.also) if env.get(n, "").strip()), None)
        if raw is not None:
            values[f.name] = var.kind.parse(var.name, raw)
        elif isinstance(var.derive, str):
            values[f.name] = var.derive.format(**values)
        elif var.derive is not None:
            values[f.name] = var.derive(values)
        elif f.default is not MISSING:
            values[f.name] = f.default
        else:
            raise ConfigError(f"{var.name} is required and not set")
    return cls(**values)


def write_env(settings: Any) -> dict[str, str]:
    """The variables that make read_env() return `settings` again (unset fields are left out)."""
    env = {}
    for f in fields(settings):
        var: Var = f.metadata[_VAR]
        value = getattr(settings, f.name)
        if value is not None:
            env[var.name] = var.kind.show(value)
    return env


_POSITIVE = Integer(1)
_COUNT = Integer(0)


def _slack_async_default(values: dict[str, Any]) -> str:
    # The local stack has no Lambda to invoke: slow commands (and reconcile's shards) run on a thread there.
    return "thread" if values["stage"] == "local" else "lambda"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a function needs to know about its deployment, read once per container."""

    stage: str = setting("JOBPLANE_STAGE", "dev")
    region: str = setting("AWS_REGION", "us-east-1", also=("AWS_DEFAULT_REGION",))
    # Table names: one set per stage.
    table_prefix: str = setting("JOBPLANE_TABLE_PREFIX", derive="jobplane-{stage}")
    jobs_table: str = setting("JOBPLANE_JOBS_TABLE", derive="{table_prefix}-jobs")
    events_table: str = setting("JOBPLANE_EVENTS_TABLE", derive="{table_prefix}-job-events")
    tokens_table: str = setting("JOBPLANE_TOKENS_TABLE", derive="{table_prefix}-tokens")
    idempotency_table: str = setting("JOBPLANE_IDEMPOTENCY_TABLE", derive="{table_prefix}-idempotency")
    capacity_table: str = setting("JOBPLANE_CAPACITY_TABLE", derive="{table_prefix}-capacity")
    devvms_table: str = setting("JOBPLANE_DEVVMS_TABLE", derive="{table_prefix}-devvms")
    # Each job's metric series (JOBPLANE_METRICS lines), one item per job and key.
    metrics_table: str = setting("JOBPLANE_METRICS_TABLE", derive="{table_prefix}-metrics")
    # Inference endpoints and their append-only transition history.
    endpoints_table: str = setting("JOBPLANE_ENDPOINTS_TABLE", derive="{table_prefix}-endpoints")
    endpoint_events_table: str = setting("JOBPLANE_ENDPOINT_EVENTS_TABLE", derive="{table_prefix}-endpoint-events")
    # Monthly budgets per owner and per label, set by an admin (chalicelib/budgets.py).
    budgets_table: str = setting("JOBPLANE_BUDGETS_TABLE", derive="{table_prefix}-budgets")
    # Standard SDK variable; set only against emulators (moto server in the local stack and tests).
    aws_endpoint_url: str | None = setting("AWS_ENDPOINT_URL", None, Url())
    enabled_backends: tuple[str, ...] = setting("JOBPLANE_BACKENDS", DEFAULT_BACKENDS, Backends())
    default_backend: str = setting("JOBPLANE_DEFAULT_BACKEND", derive="{enabled_backends[0]}")
    # The local backend: where job folders (logs, exit status) live and where its runner reports.
    local_state_dir: str = setting("JOBPLANE_LOCAL_STATE_DIR", ".jobplane/jobs")
    local_event_url: str | None = setting("JOBPLANE_LOCAL_EVENT_URL", None, Url())
    # The stack's secret from which each job's event-signing key is derived (created 0600 on first use).
    local_event_key_file: str = setting("JOBPLANE_LOCAL_EVENT_KEY_FILE", derive="{local_state_dir}/event-key")
    # Who local jobs run as: a user name, or "self" (the stack's user); unset means nobody when root, else self.
    local_run_as: str | None = setting("JOBPLANE_LOCAL_RUN_AS", None)
    # When set, the local backend runs only these programs (e.g. while fuzzing the API).
    local_allowed_programs: tuple[str, ...] = setting("JOBPLANE_LOCAL_ALLOWED_PROGRAMS", (), Names())
    # USD per hour a local job costs (a shared GPU workstation can be charged back); 0 means free.
    # Above $100/h is refused: more than the largest cloud GPU instance, so almost surely a typo.
    local_price_per_hour: float = setting("JOBPLANE_LOCAL_PRICE_PER_HOUR", 0.0, Number(0, 100))
    # Seconds between the local runner's uploads of $JOBPLANE_CHECKPOINT_DIR while a job runs (and once at its end).
    local_checkpoint_seconds: int = setting("JOBPLANE_LOCAL_CHECKPOINT_SECONDS", 60, _POSITIVE)
    # Slack: names of secrets, never the secrets themselves. A name is a Secrets Manager secret,
    # or an SSM Parameter Store parameter when it starts with "ssm:" (e.g. ssm:/jobplane/dev/slack-bot-token).
    slack_webhook_secret: str | None = setting("JOBPLANE_SLACK_WEBHOOK_SECRET", None)
    slack_bot_token_secret: str | None = setting("JOBPLANE_SLACK_BOT_TOKEN_SECRET", None)
    slack_signing_secret: str | None = setting("JOBPLANE_SLACK_SIGNING_SECRET", None)
    # Dedup markers of sent notifications and the Slack user -> jobplane user mapping.
    slack_table: str = setting("JOBPLANE_SLACK_TABLE", derive="{table_prefix}-slack")
    # Slack's Web API (chat.postMessage); tests point it at a local server.
    slack_api_url: str = setting("JOBPLANE_SLACK_API_URL", "https://slack.com/api/", Url())
    # Seconds one notify invocation may spend on Slack (retries included), within the Lambda's own limit.
    slack_send_budget_seconds: int = setting("JOBPLANE_SLACK_SEND_BUDGET_SECONDS", 20, _POSITIVE)
    # Slow slash commands run here, asynchronously: "lambda" (invoke slack_worker_function with
    # InvocationType=Event) or "thread" (in-process, for the local stack).
    slack_async: str = setting("JOBPLANE_SLACK_ASYNC", kind=Choice(("lambda", "thread")), derive=_slack_async_default)
    slack_worker_function: str = setting("JOBPLANE_SLACK_WORKER_FUNCTION", derive="jobplane-{stage}-slack_worker")
    # Reconcile at scale: one invocation reads the truth of at most this many active jobs (a whole batch
    # of 100 at least); a tick with more hands the rest, in shards, to reconcile_shard: "lambda" (invoke
    # reconcile_shard_function with InvocationType=Event) or "thread" (in-process, for the local stack).
    reconcile_shard_jobs: int = setting("JOBPLANE_RECONCILE_SHARD_JOBS", 1000, Integer(100))
    reconcile_async: str = setting(
        "JOBPLANE_RECONCILE_ASYNC", kind=Choice(("lambda", "thread")), derive=_slack_async_default
    )
    reconcile_shard_function: str = setting(
        "JOBPLANE_RECONCILE_SHARD_FUNCTION", derive="jobplane-{stage}-reconcile_shard"
    )
    # Seconds a LAUNCHING job may stay so before reconcile treats the launch as lost.
    launch_deadline_seconds: int = setting("JOBPLANE_LAUNCH_DEADLINE_SECONDS", 600, _POSITIVE)
    # The reaper: a tagged VM is stopped when its GPU stays under idle_gpu_percent (or it sends no
    # heartbeat) for idle_minutes, or when it runs past max_runtime_minutes + overdue_grace_minutes.
    idle_gpu_percent: float = setting("JOBPLANE_IDLE_GPU_PERCENT", 5.0, Number(0, 100))
    # Minutes, fractions allowed (the local stack's tests judge a VM in seconds); granularity on a cloud is
    # the reconcile schedule's, one minute.
    idle_minutes: float = setting("JOBPLANE_IDLE_MINUTES", 30, Number(0.01, 10080))
    overdue_grace_minutes: int = setting("JOBPLANE_OVERDUE_GRACE_MINUTES", 15, _COUNT)
    # Concurrent-use limits of the quota-aware queue: "backend:family" -> units (GPUs; a CPU job is 1).
    # `family` is an instance family (ml.g5, g5), a GPU type (A10G), `cpu`, or `*` for every GPU family.
    capacity_limits: tuple[tuple[str, int], ...] = setting("JOBPLANE_CAPACITY_LIMITS", (), Limits())
    # Account quotas (Service Quotas for SageMaker and EC2, Compute Engine's regional GPU quotas), read before
    # each launch and cached for a reconcile tick: a candidate whose quota cannot take the job is failed over.
    quotas: str = setting("JOBPLANE_QUOTAS", "read", Choice(("read", "off")))
    # --- Google Cloud (Vertex AI, GCE, Cloud Functions) ---------------------------------------
    # The project and region GCP backends run in; required when vertex or gce is enabled.
    gcp_project: str | None = setting("JOBPLANE_GCP_PROJECT", None)
    gcp_region: str = setting("JOBPLANE_GCP_REGION", "us-central1")
    gce_zone: str = setting("JOBPLANE_GCE_ZONE", derive="{gcp_region}-a")
    # GCE ad-hoc VMs: boot image (a Deep Learning VM family: docker, NVIDIA driver, gcloud), disk, network.
    gce_image: str = setting(
        "JOBPLANE_GCE_IMAGE",
        "projects/deeplearning-platform-release/global/images/family/common-cu123-debian-11-py310",
    )
    gce_disk_gb: int = setting("JOBPLANE_GCE_DISK_GB", 200, Integer(10))
    gce_network: str = setting("JOBPLANE_GCE_NETWORK", "global/networks/default")
    # Service accounts the jobs run as (VMs and Vertex workers); None: the project's default.
    gce_service_account: str | None = setting("JOBPLANE_GCE_SERVICE_ACCOUNT", None)
    vertex_service_account: str | None = setting("JOBPLANE_VERTEX_SERVICE_ACCOUNT", None)
    # gs:// bucket (and prefix) where VMs write their exit status; required when gce is enabled.
    gcp_status_uri: str | None = setting("JOBPLANE_GCP_STATUS_URI", None)
    # GCS bucket for GCP jobs' default outputs (outputs/<job_id>/) and checkpoints (checkpoints/<job_id>/).
    gcp_artifacts_bucket: str = setting("JOBPLANE_GCP_ARTIFACTS_BUCKET", derive="jobplane-{stage}-artifacts")
    # Pub/Sub topic (projects/P/topics/T) the log sink and jobplane's VMs publish state hints to.
    gcp_events_topic: str | None = setting("JOBPLANE_GCP_EVENTS_TOPIC", None)
    # Only against emulators and fakes: http://host:port serving the Vertex, Compute and Storage REST APIs.
    gcp_api_endpoint: str | None = setting("JOBPLANE_GCP_API_ENDPOINT", None, Url())
    # Cloud Functions reach DynamoDB by assuming this role with their Google identity token.
    aws_role_arn: str | None = setting("JOBPLANE_AWS_ROLE_ARN", None)
    aws_web_identity_audience: str = setting("JOBPLANE_AWS_WEB_IDENTITY_AUDIENCE", "sts.amazonaws.com")
    # Standard Google variable (host[:port], no scheme); tests point it at a fake metadata server.
    gce_metadata_host: str = setting("GCE_METADATA_HOST", "metadata.google.internal")
    log_level: str = setting("JOBPLANE_LOG_LEVEL", "INFO", Choice(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")))
    # --- Kubernetes (EKS, GKE, kubeconfig) ------------------------------------------------------
    # The clusters, first enabled one the default: JSON [{"name", "kind": eks|gke|kubeconfig, "namespace",
    # "flavour": gke|eks|karpenter, "local_queue", eks: "cluster", "region"; gke: "project", "location",
    # "cluster"; kubeconfig: "context"}]. Unset: KUBECONFIG's current context, namespace default.
    # Standard variable: the kubeconfig file `kubeconfig` clusters read (first of a path list); unset: ~/.kube/config.
    kubeconfig: str | None = setting("KUBECONFIG", None)
    k8s_clusters: tuple[Any, ...] = setting("JOBPLANE_K8S_CLUSTERS", (), Clusters())
    # How long a finished Job (and its pods, their logs) stays in the cluster: reconcile reads it before then.
    k8s_ttl_seconds: int = setting("JOBPLANE_K8S_TTL_SECONDS", 86400, Integer(600))
    # --- AWS compute (SageMaker, Batch, ECS, EC2) and upload triggers ------------------------------
    # Roles are names (or ARNs); the checked-in policy limits iam:PassRole to exactly these.
    # Bucket for what jobplane itself writes: ad-hoc VMs' exit status and log tail, default outputs.
    artifacts_bucket: str = setting("JOBPLANE_ARTIFACTS_BUCKET", derive="jobplane-{stage}-artifacts")
    # Packed code (`jobplane submit` with a workdir): the largest .tar.gz POST /code issues an upload for.
    code_max_mb: int = setting("JOBPLANE_CODE_MAX_MB", 100, _POSITIVE)
    # How long an upload URL (POST /code) and an artifact's download URL (GET /jobs/{id}/artifacts) stay valid.
    presign_seconds: int = setting("JOBPLANE_PRESIGN_SECONDS", 900, Integer(60))
    # SageMaker: the execution role training jobs run as, and each job's EBS volume.
    sagemaker_role: str = setting("JOBPLANE_SAGEMAKER_ROLE", derive="jobplane-{stage}-sagemaker")
    sagemaker_volume_gb: int = setting("JOBPLANE_SAGEMAKER_VOLUME_GB", 50, _POSITIVE)
    # Extra minutes a managed-spot SageMaker job may wait for capacity (MaxWaitTimeInSeconds - MaxRuntime).
    spot_wait_minutes: int = setting("JOBPLANE_SPOT_WAIT_MINUTES", 60, _COUNT)
    # AWS Batch: job queues (CPU, GPU and, optionally, spot) and the role jobs run as.
    batch_job_queue: str = setting("JOBPLANE_BATCH_JOB_QUEUE", derive="jobplane-{stage}")
    batch_gpu_job_queue: str = setting("JOBPLANE_BATCH_GPU_JOB_QUEUE", derive="jobplane-{stage}-gpu")
    batch_spot_job_queue: str | None = setting("JOBPLANE_BATCH_SPOT_JOB_QUEUE", None)
    batch_job_role: str = setting("JOBPLANE_BATCH_JOB_ROLE", derive="jobplane-{stage}-batch-job")
    # ECS: cluster, launch type (EC2, or FARGATE for CPU-only jobs), roles, and awsvpc networking.
    ecs_cluster: str = setting("JOBPLANE_ECS_CLUSTER", derive="jobplane-{stage}")
    ecs_launch_type: str = setting("JOBPLANE_ECS_LAUNCH_TYPE", "EC2", Choice(("EC2", "FARGATE")))
    # The CloudWatch Logs group ECS tasks' awslogs driver writes to (and GET /jobs/{id}/logs reads).
    ecs_log_group: str = setting("JOBPLANE_ECS_LOG_GROUP", derive="/jobplane/{stage}/ecs")
    ecs_task_role: str = setting("JOBPLANE_ECS_TASK_ROLE", derive="jobplane-{stage}-ecs-task")
    ecs_execution_role: str = setting("JOBPLANE_ECS_EXECUTION_ROLE", derive="jobplane-{stage}-ecs-execution")
    ecs_subnets: tuple[str, ...] = setting("JOBPLANE_ECS_SUBNETS", (), Names())
    ecs_security_groups: tuple[str, ...] = setting("JOBPLANE_ECS_SECURITY_GROUPS", (), Names())
    # Ad-hoc EC2: a launch template (lt-... id or a name) or an AMI, where the VM goes, and its profile.
    ec2_launch_template: str | None = setting("JOBPLANE_EC2_LAUNCH_TEMPLATE", None)
    ec2_ami: str | None = setting("JOBPLANE_EC2_AMI", None)
    ec2_subnet: str | None = setting("JOBPLANE_EC2_SUBNET", None)
    ec2_security_groups: tuple[str, ...] = setting("JOBPLANE_EC2_SECURITY_GROUPS", (), Names())
    ec2_instance_profile: str = setting("JOBPLANE_EC2_INSTANCE_PROFILE", derive="jobplane-{stage}-ec2-job")
    # Seconds between a job VM's uploads of $JOBPLANE_CHECKPOINT_DIR while the job runs (and once at its end).
    ec2_checkpoint_seconds: int = setting("JOBPLANE_EC2_CHECKPOINT_SECONDS", 60, _POSITIVE)
    # Seconds between the EC2 agent's heartbeats (heartbeat.json next to its exit report, with its GPU use).
    ec2_heartbeat_seconds: int = setting("JOBPLANE_EC2_HEARTBEAT_SECONDS", 60, _POSITIVE)
    # Upload trigger rules (bucket + prefix/glob -> job template); relative paths are from the code root.
    triggers_file: str = setting("JOBPLANE_TRIGGERS_FILE", "chalicelib/triggers.yaml")

    def __post_init__(self) -> None:
        # Checks across fields run here, so dataclasses.replace() cannot build what from_env() refuses.
        backends = self.enabled_backends
        if self.default_backend not in backends:
            raise ConfigError(
                f"JOBPLANE_DEFAULT_BACKEND={self.default_backend!r} is not in JOBPLANE_BACKENDS {list(backends)}"
            )
        self._check_backend_requirements()

    def _check_backend_requirements(self) -> None:
        """Each enabled backend's descriptor names the settings it cannot run without."""
        from chalicelib.backends import descriptor_or_none, descriptors

        for name in self.enabled_backends:
            found = descriptor_or_none(name)
            for need in found.requires if found else ():
                value = getattr(self, need.field)
                if value and str(value).startswith(need.prefix):
                    continue
                # Name every backend that needs it, as the error is about the setting, not one backend.
                wanting = [d.name for d in descriptors() if any(r.field == need.field for r in d.requires)]
                variable = next(f.metadata[_VAR].name for f in fields(self) if f.name == need.field)
                what = f"be a {need.prefix} URI" if need.prefix else "be set"
                raise ConfigError(f"{variable} must {what} when {' or '.join(wanting)} is in JOBPLANE_BACKENDS")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        return read_env(cls, _environ(environ))

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings (for the local stack's child processes)."""
        return write_env(self)


@dataclass(frozen=True, kw_only=True)
class DeployConstants:
    """The resource names app.py's decorators take, declared like Settings but read before any handler runs."""

    stage: str = setting("JOBPLANE_STAGE", "dev")
    upload_bucket: str = setting("JOBPLANE_UPLOAD_BUCKET", derive="jobplane-{stage}-uploads")
    jobs_stream_arn: str = setting(
        "JOBPLANE_JOBS_STREAM_ARN",
        derive="arn:aws:dynamodb:us-east-1:000000000000:table/jobplane-{stage}-jobs/stream/latest",
    )


def deploy_constants(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Names the Chalice decorators need when app.py is imported (packaging and Lambda alike)."""
    constants = read_env(DeployConstants, _environ(environ))
    return {"upload_bucket": constants.upload_bucket, "jobs_stream_arn": constants.jobs_stream_arn}
