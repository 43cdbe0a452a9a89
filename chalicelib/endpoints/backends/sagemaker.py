"""SageMaker real-time and Serverless Inference endpoints: a framework image serving the generated inference.py."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, ClassVar

from chalicelib.backends import Cloud
from chalicelib.endpoints import adapter
from chalicelib.endpoints.backends import EndpointBackendDescriptor
from chalicelib.endpoints.backends.base import Deployment, EndpointBackend, EndpointObservation, EndpointStatus
from chalicelib.errors import BackendError, ValidationError

DETAIL_TYPE = "SageMaker Endpoint State Change"
EVENT_SOURCE = "aws.sagemaker"
VARIANT = "AllTraffic"
TAG_ENDPOINT_ID = "jobplane:endpoint-id"
TAG_STAGE = "jobplane:stage"
TAG_MANAGED = "jobplane:managed"
# AWS's PyTorch inference image (Deep Learning Containers account 763104351884 serves most regions); it runs
# the SageMaker inference toolkit, so code/inference.py in model.tar.gz is what it serves. A deployment's own
# `image` replaces it.
FRAMEWORK_IMAGE = "763104351884.dkr.ecr.{region}.amazonaws.com/pytorch-inference:2.3.0-{device}-sagemaker"
DEVICE_TAGS = {"cpu": "cpu-py311-ubuntu20.04", "gpu": "gpu-py311-cu121-ubuntu20.04"}
# DescribeEndpoint's EndpointStatus, and the event's (IN_SERVICE): compared without case or underscores.
STATES: dict[str, EndpointStatus] = {
    "creating": EndpointStatus.CREATING,
    "inservice": EndpointStatus.IN_SERVICE,
    "updating": EndpointStatus.UPDATING,
    # A new config rolling out and being rolled back: the old one serves meanwhile.
    "rollingback": EndpointStatus.UPDATING,
    # SageMaker patching its own hosts: the endpoint keeps serving.
    "systemupdating": EndpointStatus.IN_SERVICE,
    "deleting": EndpointStatus.DELETING,
    "failed": EndpointStatus.FAILED,
    "updaterollbackfailed": EndpointStatus.FAILED,
    "outofservice": EndpointStatus.FAILED,
}
# ServerlessConfig.MemorySizeInMB takes 1024..6144 in steps of 1024; MaxConcurrency 1..200.
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_MAX_CONCURRENCY = 200


IAM_ACTIONS = (
    "sagemaker:CreateModel",
    "sagemaker:CreateEndpointConfig",
    "sagemaker:CreateEndpoint",
    "sagemaker:UpdateEndpoint",
    "sagemaker:DescribeEndpoint",
    "sagemaker:DeleteEndpoint",
    "sagemaker:DeleteEndpointConfig",
    "sagemaker:DeleteModel",
    "sagemaker:AddTags",  # the Tags of the three Create calls
    "sagemaker:InvokeEndpoint",
    "cloudwatch:GetMetricData",
    # model.tar.gz: the model (a job's outputs/) and code (code/) read, the package written under
    # code/endpoints/; the policy limits each to those prefixes of the artifact store
    "s3:GetObject",
    "s3:PutObject",
    "s3:ListBucket",
    # Autoscaling between min_replicas and max_replicas: Application Auto Scaling's calls, and what SageMaker's
    # "Auto scaling prerequisites" page says its caller needs besides them (the endpoint and its config read,
    # instance counts changed, the target tracking alarms, and the service-linked role made on first use).
    "application-autoscaling:RegisterScalableTarget",
    "application-autoscaling:PutScalingPolicy",
    "application-autoscaling:DeregisterScalableTarget",
    "sagemaker:DescribeEndpointConfig",
    "sagemaker:UpdateEndpointWeightsAndCapacities",
    "cloudwatch:PutMetricAlarm",
    "cloudwatch:DescribeAlarms",
    "cloudwatch:DeleteAlarms",
    "iam:CreateServiceLinkedRole",
)
#: Application Auto Scaling's names for a SageMaker variant's instance count and its target tracking metric
SCALING_NAMESPACE = "sagemaker"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"
#: invocations per instance per minute the policy keeps each instance at (the SageMaker guide's example value)
TARGET_INVOCATIONS_PER_INSTANCE = 70.0
SCALE_IN_COOLDOWN_SECONDS = 300
SCALE_OUT_COOLDOWN_SECONDS = 60
#: the service-linked role RegisterScalableTarget makes on first use (iam:CreateServiceLinkedRole on it only)
SCALING_SERVICE = "sagemaker.application-autoscaling.amazonaws.com"
SCALING_ROLE = (
    f"arn:aws:iam::*:role/aws-service-role/{SCALING_SERVICE}/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
)
#: the alarms target tracking makes: TargetTracking-<ResourceId>-AlarmHigh|AlarmLow-<id>
SCALING_ALARMS = ("arn:aws:cloudwatch:*:*:alarm:TargetTracking-endpoint/jpe-*",)
RESOURCE_KINDS = ("endpoint", "endpoint-config", "model")

SAGEMAKER = EndpointBackendDescriptor(
    name="sagemaker",
    cloud=Cloud.AWS,
    # It shares the sagemaker training backend's account, execution role and EventBridge source.
    enabled_with="sagemaker",
    implementation="chalicelib.endpoints.backends.sagemaker:SageMakerEndpointBackend",
    rank=20,
    role="a real-time endpoint",
    model_schemes=("s3://",),
    event_sources=(EVENT_SOURCE,),
    iam_actions=IAM_ACTIONS,
    resource_kinds=RESOURCE_KINDS,
    service_linked_roles=((SCALING_ROLE, SCALING_SERVICE),),
    alarm_resources=SCALING_ALARMS,
    unpriced_reason="the price catalog holds SageMaker training rates only, not real-time hosting rates",
)
SAGEMAKER_SERVERLESS = EndpointBackendDescriptor(
    name="sagemaker-serverless",
    cloud=Cloud.AWS,
    enabled_with="sagemaker",
    implementation="chalicelib.endpoints.backends.sagemaker:SageMakerServerlessBackend",
    rank=10,
    role="serverless bills per request, not per hour",
    gpus=False,
    max_memory_gb=6,  # ServerlessConfig.MemorySizeInMB: 1024 to 6144
    model_schemes=("s3://",),
    event_sources=(EVENT_SOURCE,),
    iam_actions=IAM_ACTIONS,
    resource_kinds=RESOURCE_KINDS,
    service_linked_roles=((SCALING_ROLE, SCALING_SERVICE),),
    alarm_resources=SCALING_ALARMS,
    unpriced_reason="SageMaker Serverless Inference bills per millisecond of compute and per GB processed, "
    "not by the hour",
)


def native_status_key(value: str) -> str:
    return value.replace("_", "").replace(" ", "").lower()


def endpoint_status(native: str) -> EndpointStatus:
    """jobplane's status for SageMaker's; an unknown value is an error, never a guess."""
    try:
        return STATES[native_status_key(native)]
    except KeyError:
        raise BackendError(f"sagemaker: unknown EndpointStatus {native!r}") from None


def version_name(deployment: Deployment) -> str:
    """The model's and the endpoint config's name for one version: jpe-<endpoint_id>-v<version>."""
    return f"{deployment.native_name}-v{deployment.version}"


def _not_found(exc: BackendError) -> bool:
    lowered = exc.message.lower()
    return "could not find" in lowered or "not found" in lowered or "does not exist" in lowered


def _exists(exc: BackendError) -> bool:
    lowered = exc.message.lower()
    return "already exist" in lowered or "resourceinuse" in lowered


class SageMakerEndpointBackend(EndpointBackend):
    name = "sagemaker"
    max_payload_bytes = 6 * 1024 * 1024
    serverless: ClassVar[bool] = False
    descriptor: ClassVar[EndpointBackendDescriptor] = SAGEMAKER
    iam_actions: ClassVar[tuple[str, ...]] = IAM_ACTIONS
    #: the SageMaker resources it makes, all named jpe-<endpoint_id>[-v<version>]
    resource_kinds: ClassVar[tuple[str, ...]] = RESOURCE_KINDS

    def __init__(self, settings) -> None:
        self.settings = settings
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    # --- clients ----------------------------------------------------------------------------------
    def client(self, service: str = "sagemaker"):
        with self._lock:
            if service not in self._clients:
                from chalicelib import aws_session

                self._clients[service] = aws_session.client(
                    service, self.settings.region, self.settings.aws_endpoint_url, aws_session.standard_retries()
                )
            return self._clients[service]

    def set_client(self, service: str, client: Any) -> None:
        """Use this client for `service` (tests hand in one wrapped in a botocore Stubber)."""
        with self._lock:
            self._clients[service] = client

    def _call(self, operation: str, service: str = "sagemaker", **kwargs: Any) -> dict[str, Any]:
        from chalicelib.backends.aws.errors import aws_errors

        method = "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")
        with aws_errors(service, operation):
            return getattr(self.client(service), method)(**kwargs)

    # --- requests (pure) -----------------------------------------------------------------------------
    def validate(self, deployment: Deployment) -> None:
        adapter.check_handler_name(deployment.handler)
        for field, uri in (("model.uri", deployment.model_uri), ("workdir", deployment.code_uri)):
            if uri is not None and not uri.startswith("s3://"):
                raise ValidationError(
                    f"{self.name} reads the model and code from S3", [{"field": field, "message": "an s3:// URI"}]
                )
        if deployment.min_replicas < 1 and not self.serverless:
            raise ValidationError(
                "a SageMaker real-time endpoint keeps at least one instance (use sagemaker-serverless to pay per "
                "request)",
                [{"field": "min_replicas", "message": "at least 1"}],
            )
        self.instance_type(deployment)

    def instance_type(self, deployment: Deployment) -> str:
        """ml.* type: the deployment's instance_type, else the GPU table (ml.g5, ml.p...), else ml.m5."""
        from chalicelib.backends.aws.base import instance_type_for
        from chalicelib.errors import UnsupportedError

        r = deployment.resources
        wanted = SimpleNamespace(
            instance_type=r.instance_type,
            gpus=r.gpus,
            gpu_type=r.gpu_type or ("A10G" if r.gpus else None),
            cpus=1,
            memory_gb=r.memory_gb or 1,
        )
        try:
            return instance_type_for(wanted, "ml.")
        except UnsupportedError as exc:
            raise ValidationError(exc.message, exc.details) from None

    def image(self, deployment: Deployment) -> str:
        if deployment.image:
            return deployment.image
        gpu = deployment.resources.gpus > 0 or self.instance_type(deployment).startswith(("ml.g", "ml.p"))
        device = "gpu" if gpu and not self.serverless else "cpu"
        return FRAMEWORK_IMAGE.format(region=self.settings.region, device=DEVICE_TAGS[device])

    def tags(self, deployment: Deployment) -> list[dict[str, str]]:
        tags = {
            TAG_ENDPOINT_ID: deployment.endpoint_id,
            TAG_STAGE: self.settings.stage,
            TAG_MANAGED: "true",
            "jobplane:owner": deployment.owner,
            "jobplane:version": str(deployment.version),
        }
        tags.update({f"label:{k}": v for k, v in sorted(deployment.labels.items())})
        return [{"Key": k, "Value": v} for k, v in tags.items()]

    def model_request(self, deployment: Deployment, model_data_url: str) -> dict[str, Any]:
        from chalicelib.backends.aws.base import role_arn

        return {
            "ModelName": version_name(deployment),
            "PrimaryContainer": {
                "Image": self.image(deployment),
                "ModelDataUrl": model_data_url,
                "Environment": adapter.model_environment(deployment.env),
            },
            "ExecutionRoleArn": role_arn(self.settings.sagemaker_role, self._account()),
            "Tags": self.tags(deployment),
        }

    def variant(self, deployment: Deployment) -> dict[str, Any]:
        return {
            "VariantName": VARIANT,
            "ModelName": version_name(deployment),
            "InstanceType": self.instance_type(deployment),
            "InitialInstanceCount": deployment.min_replicas,
        }

    def endpoint_config_request(self, deployment: Deployment) -> dict[str, Any]:
        return {
            "EndpointConfigName": version_name(deployment),
            "ProductionVariants": [self.variant(deployment)],
            "Tags": self.tags(deployment),
        }

    def update_request(self, native_id: str, deployment: Deployment) -> dict[str, Any]:
        """Blue/green: SageMaker brings up the new config's fleet, shifts all traffic at once, then retires the
        old fleet; the endpoint serves throughout."""
        return {
            "EndpointName": native_id,
            "EndpointConfigName": version_name(deployment),
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                    "TerminationWaitInSeconds": 0,
                }
            },
        }

    @staticmethod
    def scaling_resource(native_id: str) -> str:
        return f"endpoint/{native_id}/variant/{VARIANT}"

    def scaling_requests(self, native_id: str, deployment: Deployment) -> tuple[dict[str, Any], dict[str, Any]]:
        """RegisterScalableTarget (min..max instances) and PutScalingPolicy (target tracking on invocations per
        instance) for the endpoint's variant."""
        target = {
            "ServiceNamespace": SCALING_NAMESPACE,
            "ResourceId": self.scaling_resource(native_id),
            "ScalableDimension": SCALABLE_DIMENSION,
        }
        register = {**target, "MinCapacity": deployment.min_replicas, "MaxCapacity": deployment.max_replicas}
        policy = {
            **target,
            "PolicyName": f"{native_id}-invocations",
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": TARGET_INVOCATIONS_PER_INSTANCE,
                "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
                "ScaleInCooldown": SCALE_IN_COOLDOWN_SECONDS,
                "ScaleOutCooldown": SCALE_OUT_COOLDOWN_SECONDS,
            },
        }
        return register, policy

    def serving(self, native_id: str, deployment: Deployment) -> None:
        """Once the variant is in service (Application Auto Scaling refuses a variant that does not exist yet):
        register it between min_replicas and max_replicas with a target tracking policy. Both calls create or
        update, so the next version's rollout (same variant, same instance type) registers it again harmlessly."""
        if self.serverless or deployment.max_replicas <= deployment.min_replicas:
            return
        register, policy = self.scaling_requests(native_id, deployment)
        self._call("RegisterScalableTarget", "application-autoscaling", **register)
        self._call("PutScalingPolicy", "application-autoscaling", **policy)

    def _deregister(self, native_id: str) -> None:
        """Before DeleteEndpoint, as SageMaker's guide asks; nothing registered is no error."""
        from botocore.exceptions import ClientError

        from chalicelib.backends.aws.errors import translate

        try:
            self.client("application-autoscaling").deregister_scalable_target(
                ServiceNamespace=SCALING_NAMESPACE,
                ResourceId=self.scaling_resource(native_id),
                ScalableDimension=SCALABLE_DIMENSION,
            )
        except ClientError as exc:
            # The API reference documents ObjectNotFoundException for a target that does not exist; moto 5.2
            # answers ValidationException "No scalable target found".
            error = exc.response.get("Error") or {}
            missing = (
                error.get("Code") == "ObjectNotFoundException"
                or "no scalable target found" in str(error.get("Message", "")).lower()
            )
            if not missing:
                raise translate(exc, "application-autoscaling", "DeregisterScalableTarget") from exc

    def _account(self) -> str:
        """This account's id, for the execution role's ARN when only its name is configured (looked up once)."""
        if self.settings.sagemaker_role.startswith("arn:"):
            return "*"
        if "account" not in self._clients:
            self._clients["account"] = self._call("GetCallerIdentity", "sts")["Account"]
        return self._clients["account"]

    # --- calls ------------------------------------------------------------------------------------------
    def _create_version(self, deployment: Deployment) -> None:
        """Package model.tar.gz, then CreateModel and CreateEndpointConfig for this version (each once)."""
        from chalicelib.backends.aws.errors import aws_errors

        with aws_errors("s3", "PutObject"):
            url = adapter.stage_model(self.client("s3"), deployment, self.settings.artifacts_bucket)
        for operation, request in (
            ("CreateModel", self.model_request(deployment, url)),
            ("CreateEndpointConfig", self.endpoint_config_request(deployment)),
        ):
            try:
                self._call(operation, **request)
            except BackendError as exc:
                if not _exists(exc):  # a retried create: the version's resources are already there
                    raise

    def create(self, deployment: Deployment) -> str:
        self.validate(deployment)
        name = deployment.native_name
        if self._describe_raw(name) is not None:
            return name
        self._create_version(deployment)
        try:
            self._call(
                "CreateEndpoint",
                EndpointName=name,
                EndpointConfigName=version_name(deployment),
                Tags=self.tags(deployment),
            )
        except BackendError as exc:
            if not _exists(exc):
                raise
        return name

    def update(self, native_id: str, deployment: Deployment) -> None:
        self.validate(deployment)
        self._create_version(deployment)
        self._call("UpdateEndpoint", **self.update_request(native_id, deployment))

    def _describe_raw(self, native_id: str) -> dict[str, Any] | None:
        try:
            return self._call("DescribeEndpoint", EndpointName=native_id)
        except BackendError as exc:
            if _not_found(exc):
                return None
            raise

    def describe(self, native_id: str, operation: str | None = None) -> EndpointObservation | None:  # noqa: ARG002
        found = self._describe_raw(native_id)
        if found is None:
            return None
        native = str(found["EndpointStatus"])
        at = found.get("LastModifiedTime")
        return EndpointObservation(
            status=endpoint_status(native),
            native_status=native,
            native_id=native_id,
            url=self.invocation_url(native_id),
            reason=str(found.get("FailureReason") or ""),
            at=at.astimezone(UTC) if isinstance(at, datetime) else None,
        )

    def invocation_url(self, native_id: str) -> str:
        return f"https://runtime.sagemaker.{self.settings.region}.amazonaws.com/endpoints/{native_id}/invocations"

    def delete(self, native_id: str) -> None:
        """DeleteEndpoint, then every version's endpoint config and model (v1 up to the one it serves)."""
        found = self._describe_raw(native_id)
        latest = 1
        if found is not None:
            # The config it serves, or the one an update is rolling out: whichever is newer.
            pending = found.get("PendingDeploymentSummary") or {}
            configs = (found.get("EndpointConfigName"), pending.get("EndpointConfigName"))
            versions = [str(c).rpartition("-v")[2] for c in configs if c]
            latest = max([int(v) for v in versions if v.isdigit()] + [1])
            if not self.serverless:
                self._deregister(native_id)
            self._forget("DeleteEndpoint", EndpointName=native_id)
        for version in range(1, latest + 1):
            name = f"{native_id}-v{version}"
            self._forget("DeleteEndpointConfig", EndpointConfigName=name)
            self._forget("DeleteModel", ModelName=name)

    def _forget(self, operation: str, **kwargs: Any) -> None:
        try:
            self._call(operation, **kwargs)
        except BackendError as exc:
            if not _not_found(exc):
                raise

    def invoke(self, native_id: str, body: dict[str, Any]) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        from chalicelib.backends.aws.errors import translate

        try:
            answer = self.client("sagemaker-runtime").invoke_endpoint(
                EndpointName=native_id, ContentType=adapter.JSON, Accept=adapter.JSON, Body=adapter.dumps(body)
            )
        except ClientError as exc:
            error = exc.response.get("Error") or {}
            if error.get("Code") == "ModelError":
                # The model container answered an error: its own status and message reach the caller.
                status = exc.response.get("OriginalStatusCode", "")
                message = exc.response.get("OriginalMessage") or error.get("Message") or ""
                raise BackendError(f"the model answered an error {status}: {message}".replace("  ", " ")) from exc
            raise translate(exc, "sagemaker-runtime", "InvokeEndpoint") from exc
        raw = answer["Body"].read()
        try:
            return json.loads(raw)
        except ValueError:
            raise BackendError(f"the model answered something other than JSON: {raw[:200]!r}") from None

    def metric_query(self, native_id: str, since: datetime, until: datetime) -> dict[str, Any]:
        return {
            "MetricDataQueries": [
                {
                    "Id": "invocations",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": "AWS/SageMaker",
                            "MetricName": "Invocations",
                            "Dimensions": [
                                {"Name": "EndpointName", "Value": native_id},
                                {"Name": "VariantName", "Value": VARIANT},
                            ],
                        },
                        "Period": 60,
                        "Stat": "Sum",
                    },
                    "ReturnData": True,
                }
            ],
            "StartTime": since,
            "EndTime": until,
        }

    def invocations_since(self, native_id: str, since: datetime) -> int:
        query = self.metric_query(native_id, since, datetime.now(UTC))
        total = 0.0
        while True:
            page = self._call("GetMetricData", "cloudwatch", **query)
            for result in page.get("MetricDataResults", []):
                total += sum(result.get("Values", []))
            token = page.get("NextToken")
            if not token:
                return int(total)
            query["NextToken"] = token

    def parse_event(self, event: dict[str, Any]) -> tuple[str, EndpointObservation] | None:
        if event.get("source") != EVENT_SOURCE or event.get("detail-type") != DETAIL_TYPE:
            return None
        detail = event.get("detail") or {}
        name = str(detail.get("EndpointName") or "")
        tags = detail.get("Tags") or {}
        if not name.startswith("jpe-") or tags.get(TAG_STAGE, self.settings.stage) != self.settings.stage:
            return None
        native = str(detail.get("EndpointStatus") or "")
        if native_status_key(native) not in STATES:
            return None
        from chalicelib.backends.aws.base import epoch_ms

        observation = EndpointObservation(
            status=STATES[native_status_key(native)],
            native_status=native,
            native_id=name,
            url=self.invocation_url(name),
            reason=str(detail.get("FailureReason") or ""),
            at=epoch_ms(detail.get("LastModifiedTime") or event.get("time")),
        )
        return name, observation


class SageMakerServerlessBackend(SageMakerEndpointBackend):
    """Serverless Inference: CPU only, billed per request; memory and concurrency instead of instances."""

    name = "sagemaker-serverless"
    descriptor = SAGEMAKER_SERVERLESS
    max_payload_bytes = 4 * 1024 * 1024
    serverless = True

    def validate(self, deployment: Deployment) -> None:
        r = deployment.resources
        if r.gpus or r.gpu_type:
            raise ValidationError(
                "SageMaker Serverless Inference has no GPUs",
                [{"field": "resources.gpus", "message": "0 on sagemaker-serverless; use backend sagemaker for a GPU"}],
            )
        if r.instance_type:
            raise ValidationError(
                "SageMaker Serverless Inference takes memory, not an instance type",
                [{"field": "resources.instance_type", "message": "unset; give resources.memory_gb (1 to 6)"}],
            )
        self.memory_mb(deployment)
        if not 1 <= deployment.max_replicas <= SERVERLESS_MAX_CONCURRENCY:
            raise ValidationError(
                "SageMaker Serverless concurrency out of range",
                [{"field": "max_replicas", "message": f"1 to {SERVERLESS_MAX_CONCURRENCY} (MaxConcurrency)"}],
            )
        super().validate(deployment)

    def memory_mb(self, deployment: Deployment) -> int:
        wanted = (deployment.resources.memory_gb or 2) * 1024
        for size in SERVERLESS_MEMORY_MB:
            if size >= wanted:
                return size
        raise ValidationError(
            "SageMaker Serverless Inference has at most 6 GB of memory",
            [{"field": "resources.memory_gb", "message": "1 to 6 on sagemaker-serverless"}],
        )

    def instance_type(self, deployment: Deployment) -> str:
        return "serverless"

    def variant(self, deployment: Deployment) -> dict[str, Any]:
        return {
            "VariantName": VARIANT,
            "ModelName": version_name(deployment),
            "ServerlessConfig": {
                "MemorySizeInMB": self.memory_mb(deployment),
                "MaxConcurrency": deployment.max_replicas,
            },
        }

    def update_request(self, native_id: str, deployment: Deployment) -> dict[str, Any]:
        # Serverless endpoints take no DeploymentConfig; UpdateEndpoint still swaps the config without downtime.
        return {"EndpointName": native_id, "EndpointConfigName": version_name(deployment)}
