"""SageMaker endpoints: create, describe, delete on moto; UpdateEndpoint, InvokeEndpoint and GetMetricData (which
moto lacks or fakes) through botocore's Stubber with the service's response shapes; the published state event."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from chalicelib.endpoints.backends import ENDPOINT_REGISTRY, backend_class
from chalicelib.endpoints.backends.base import EndpointObservation, EndpointStatus
from chalicelib.endpoints.backends.sagemaker import (
    STATES,
    SageMakerEndpointBackend,
    SageMakerServerlessBackend,
    endpoint_status,
)
from chalicelib.errors import BackendError, ValidationError
from tests.factories import ENDPOINT_NATIVE_NAME as NAME
from tests.factories import ENDPOINT_STATE_EVENT as STATE_EVENT
from tests.factories import boto, check_aws_request, endpoint_model_dir, make_deployment, make_settings

S = EndpointStatus


@pytest.fixture(params=["server", "in-process"])
def aws(request, tmp_path):
    """moto (the local stack's server, and in-process), with the model's files and the artifact bucket in S3."""
    import contextlib
    import uuid

    from moto import mock_aws

    server = request.param == "server"
    endpoint = request.getfixturevalue("moto_endpoint") if server else None
    # A fresh artifact bucket per test: the server is shared by the session.
    settings = make_settings(
        tmp_path, endpoint, JOBPLANE_STAGE="test", JOBPLANE_ARTIFACTS_BUCKET=f"art-{uuid.uuid4().hex[:12]}"
    )
    with contextlib.nullcontext() if server else mock_aws():
        s3 = boto(settings, "s3")
        for bucket in ("models-bucket", settings.artifacts_bucket):
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                s3.create_bucket(Bucket=bucket)
        model = endpoint_model_dir(tmp_path / "model")
        for name in ("scale.txt", "serve.py"):
            s3.put_object(Bucket="models-bucket", Key=f"scaler/{name}", Body=(model / name).read_bytes())
        yield settings
        # The server outlives the test: what it made under NAME goes, as a user's DELETE would remove it.
        SageMakerEndpointBackend(settings).delete(NAME)


def test_the_registry_names_the_three_cloud_endpoint_backends():
    assert {k: backend_class(k).__name__ for k in ENDPOINT_REGISTRY if k != "local"} == {
        "sagemaker": "SageMakerEndpointBackend",
        "sagemaker-serverless": "SageMakerServerlessBackend",
        "vertex": "VertexEndpointBackend",
    }


def test_builds_valid_requests_with_a_gpu_instance_the_framework_image_and_tags(settings):
    backend = SageMakerEndpointBackend(settings)
    backend._account = lambda: "123456789012"
    deployment = make_deployment(resources={"gpus": 1, "gpu_type": "A10G"}, labels={"team": "vision"}, env={"A": "1"})
    model = backend.model_request(deployment, "s3://b/model.tar.gz")
    config = backend.endpoint_config_request(deployment)
    check_aws_request("sagemaker", "CreateModel", model)
    check_aws_request("sagemaker", "CreateEndpointConfig", config)
    assert model["ModelName"] == config["EndpointConfigName"] == f"{NAME}-v1"
    assert model["PrimaryContainer"] == {
        "Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:"
        "2.3.0-gpu-py311-cu121-ubuntu20.04-sagemaker",
        "ModelDataUrl": "s3://b/model.tar.gz",
        "Environment": {
            "A": "1",
            "SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        },
    }
    assert model["ExecutionRoleArn"] == f"arn:aws:iam::123456789012:role/{settings.sagemaker_role}"
    assert config["ProductionVariants"] == [
        {
            "VariantName": "AllTraffic",
            "ModelName": f"{NAME}-v1",
            "InstanceType": "ml.g5.xlarge",
            "InitialInstanceCount": 1,
        }
    ]
    tags = {t["Key"]: t["Value"] for t in config["Tags"]}
    assert tags["jobplane:endpoint-id"] == "e" * 32 and tags["jobplane:stage"] == settings.stage
    assert tags["label:team"] == "vision"
    # More GPUs: the table's next size; the deployment's own image and instance type win.
    four = make_deployment(resources={"gpus": 4, "gpu_type": "A10G"}, min_replicas=2, max_replicas=2)
    assert backend.variant(four)["InstanceType"] == "ml.g5.12xlarge"
    assert backend.variant(four)["InitialInstanceCount"] == 2
    own = make_deployment(
        image="1.dkr.ecr.us-east-1.amazonaws.com/serve:1", resources={"instance_type": "p4d.24xlarge"}
    )
    assert backend.image(own) == own.image
    assert backend.variant(own)["InstanceType"] == "ml.p4d.24xlarge"
    cpu = make_deployment()
    assert backend.variant(cpu)["InstanceType"] == "ml.m5.large"
    assert "-cpu-py311" in backend.image(cpu)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"model_uri": "gs://b/model/"}, "model.uri"),
        ({"min_replicas": 0}, "min_replicas"),
        ({"resources": {"gpus": 16, "gpu_type": "A10G"}}, "resources.gpus"),
        ({"resources": {"gpus": 1, "gpu_type": "TPU"}}, "resources.gpu_type"),
        ({"handler": "../x.py"}, "handler"),
    ],
)
def test_refuses_what_a_real_time_endpoint_cannot_serve_naming_the_field(settings, changes, field):
    with pytest.raises(ValidationError) as raised:
        SageMakerEndpointBackend(settings).validate(make_deployment(**changes))
    assert raised.value.details[0]["field"] == field


def test_can_create_describe_and_delete_an_endpoint_on_moto(aws):
    backend = SageMakerEndpointBackend(aws)
    deployment = make_deployment()
    native = backend.create(deployment)
    assert native == NAME
    assert backend.create(deployment) == NAME  # idempotent: the endpoint exists, nothing is made twice
    sagemaker = boto(aws, "sagemaker")
    model = sagemaker.describe_model(ModelName=f"{NAME}-v1")
    assert model["PrimaryContainer"]["ModelDataUrl"] == (
        f"s3://{aws.artifacts_bucket}/code/endpoints/{'e' * 32}/v1/model.tar.gz"
    )
    config = sagemaker.describe_endpoint_config(EndpointConfigName=f"{NAME}-v1")
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"
    observation = backend.describe(native)
    assert (observation.status, observation.native_status) == (EndpointStatus.IN_SERVICE, "InService")
    assert observation.url.endswith(f"/endpoints/{NAME}/invocations")
    backend.delete(native)
    assert backend.describe(native) is None
    with pytest.raises(Exception, match="Could not find"):
        sagemaker.describe_model(ModelName=f"{NAME}-v1")
    backend.delete(native)  # harmless when gone


def test_can_create_a_serverless_endpoint_with_memory_and_concurrency(aws):
    backend = SageMakerServerlessBackend(aws)
    deployment = make_deployment(resources={"memory_gb": 2.5}, min_replicas=0, max_replicas=5)
    backend.create(deployment)
    config = boto(aws, "sagemaker").describe_endpoint_config(EndpointConfigName=f"{NAME}-v1")
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 5}
    check_aws_request("sagemaker", "CreateEndpointConfig", backend.endpoint_config_request(deployment))
    assert backend.max_payload_bytes == 4 * 1024 * 1024
    assert "-cpu-py311" in backend.image(deployment)


@pytest.mark.parametrize(
    "resources, field, words",
    [
        ({"gpus": 1, "gpu_type": "T4"}, "resources.gpus", "no GPUs"),
        ({"instance_type": "ml.m5.large"}, "resources.instance_type", "memory"),
        ({"memory_gb": 8}, "resources.memory_gb", "6 GB"),
    ],
)
def test_serverless_refuses_a_gpu_and_what_it_cannot_size_with_the_reason(settings, resources, field, words):
    with pytest.raises(ValidationError, match=words) as raised:
        SageMakerServerlessBackend(settings).validate(make_deployment(resources=resources))
    assert raised.value.details[0]["field"] == field


def test_update_creates_the_next_version_and_rolls_it_out_blue_green(aws):
    backend = SageMakerEndpointBackend(aws)
    backend.create(make_deployment())
    client = boto(aws, "sagemaker")
    backend.set_client("sagemaker", client)
    v2 = make_deployment(version=2)
    package = f"s3://{aws.artifacts_bucket}/code/endpoints/{'e' * 32}/v2/model.tar.gz"
    with Stubber(client) as stub:
        stub.add_response(
            "create_model",
            {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{NAME}-v2"},
            backend.model_request(v2, package),
        )
        stub.add_response(
            "create_endpoint_config",
            {"EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/{NAME}-v2"},
            backend.endpoint_config_request(v2),
        )
        stub.add_response(
            "update_endpoint",
            {"EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{NAME}"},
            backend.update_request(NAME, v2),
        )
        backend.update(NAME, v2)
        stub.assert_no_pending_responses()
    assert backend.update_request(NAME, v2)["DeploymentConfig"]["BlueGreenUpdatePolicy"][
        "TrafficRoutingConfiguration"
    ] == {
        "Type": "ALL_AT_ONCE",
        "WaitIntervalInSeconds": 0,
    }
    check_aws_request("sagemaker", "UpdateEndpoint", backend.update_request(NAME, v2))
    serverless = SageMakerServerlessBackend(aws).update_request(NAME, v2)
    assert serverless == {"EndpointName": NAME, "EndpointConfigName": f"{NAME}-v2"}


def test_delete_removes_every_version_the_endpoint_went_through(aws):
    backend = SageMakerEndpointBackend(aws)
    client = boto(aws, "sagemaker")
    backend.set_client("sagemaker", client)
    with Stubber(client) as stub:
        stub.add_response(
            "describe_endpoint",
            {
                "EndpointName": NAME,
                "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{NAME}",
                "EndpointConfigName": f"{NAME}-v2",
                # An update to v3 rolling out when the delete came: its config and model go too.
                "PendingDeploymentSummary": {"EndpointConfigName": f"{NAME}-v3"},
                "EndpointStatus": "Updating",
                "CreationTime": datetime(2026, 1, 1, tzinfo=UTC),
                "LastModifiedTime": datetime(2026, 1, 1, tzinfo=UTC),
            },
            {"EndpointName": NAME},
        )
        stub.add_response("delete_endpoint", {}, {"EndpointName": NAME})
        for version in (1, 2, 3):
            stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": f"{NAME}-v{version}"})
            stub.add_response("delete_model", {}, {"ModelName": f"{NAME}-v{version}"})
        backend.delete(NAME)
        stub.assert_no_pending_responses()


def test_invoke_sends_json_and_reports_a_model_error_clearly(settings):
    backend = SageMakerEndpointBackend(settings)
    runtime = boto(settings, "sagemaker-runtime")
    backend.set_client("sagemaker-runtime", runtime)
    answer = json.dumps({"y": [3.0]}).encode()
    with Stubber(runtime) as stub:
        stub.add_response(
            "invoke_endpoint",
            {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
            {
                "EndpointName": NAME,
                "ContentType": "application/json",
                "Accept": "application/json",
                "Body": b'{"x": [1]}',
            },
        )
        assert backend.invoke(NAME, {"x": [1]}) == {"y": [3.0]}
        stub.add_client_error(
            "invoke_endpoint",
            service_error_code="ModelError",
            service_message="Received server error (500) from primary with message ValueError: boom requested",
            http_status_code=424,
            response_meta={},
        )
        with pytest.raises(BackendError, match="the model answered an error.*boom requested"):
            backend.invoke(NAME, {"boom": 1})


def test_counts_invocations_from_cloudwatch_over_every_page(settings):
    backend = SageMakerEndpointBackend(settings)
    cloudwatch = boto(settings, "cloudwatch")
    backend.set_client("cloudwatch", cloudwatch)
    since = datetime.now(UTC) - timedelta(minutes=60)
    query = backend.metric_query(NAME, since, datetime.now(UTC))
    check_aws_request("cloudwatch", "GetMetricData", query)
    stat = query["MetricDataQueries"][0]["MetricStat"]
    assert stat["Metric"]["Namespace"] == "AWS/SageMaker" and stat["Metric"]["MetricName"] == "Invocations"
    assert stat["Metric"]["Dimensions"] == [
        {"Name": "EndpointName", "Value": NAME},
        {"Name": "VariantName", "Value": "AllTraffic"},
    ]
    with Stubber(cloudwatch) as stub:
        page = {"Id": "invocations", "Label": "Invocations", "StatusCode": "PartialData"}
        stub.add_response(
            "get_metric_data",
            {"MetricDataResults": [{**page, "Timestamps": [since, since], "Values": [3.0, 4.0]}], "NextToken": "t1"},
            None,
        )
        stub.add_response(
            "get_metric_data", {"MetricDataResults": [{**page, "StatusCode": "Complete", "Values": [5.0]}]}, None
        )
        assert backend.invocations_since(NAME, since) == 12
        stub.add_response(
            "get_metric_data", {"MetricDataResults": [{**page, "StatusCode": "Complete", "Values": []}]}, None
        )
        assert backend.invocations_since(NAME, since) == 0


@pytest.mark.parametrize("native", ["IN_SERVICE", "InService"])
def test_parses_the_published_state_event_in_either_spelling(settings, native):
    event = json.loads(json.dumps(STATE_EVENT))
    event["detail"]["EndpointStatus"] = native
    name, observation = SageMakerEndpointBackend(settings).parse_event(event)
    assert name == NAME
    assert (observation.status, observation.native_status) == (EndpointStatus.IN_SERVICE, native)
    assert observation.at == datetime.fromtimestamp(1592411994.287, UTC)


def test_ignores_events_about_other_endpoints_stages_and_resources(settings):
    backend = SageMakerEndpointBackend(settings)
    other = json.loads(json.dumps(STATE_EVENT))
    other["detail"]["EndpointName"] = "MyEndpoint"
    staged = json.loads(json.dumps(STATE_EVENT))
    staged["detail"]["Tags"] = {"jobplane:stage": "prod"}
    training = {**STATE_EVENT, "detail-type": "SageMaker Training Job State Change"}
    assert [backend.parse_event(e) for e in (other, staged, training)] == [None, None, None]
    failed = json.loads(json.dumps(STATE_EVENT))
    failed["detail"].update(
        EndpointStatus="FAILED", FailureReason="The primary container did not pass the ping health check."
    )
    _, observation = backend.parse_event(failed)
    assert observation.status is EndpointStatus.FAILED and "ping health check" in observation.reason


def test_maps_every_endpoint_status_the_api_documents_and_refuses_an_unknown_one():
    import botocore.session

    shape = botocore.session.get_session().get_service_model("sagemaker").shape_for("EndpointStatus")
    assert {endpoint_status(value) for value in shape.enum} <= set(EndpointStatus)
    assert len(STATES) == len(shape.enum)
    with pytest.raises(BackendError, match="unknown EndpointStatus"):
        endpoint_status("Hibernating")


def test_the_endpoint_state_event_reaches_apps_eventbridge_pattern():
    """app.py subscribes on_job_state_change to the checked-in AWS sources: the endpoint event's is among them."""
    from chalicelib.backends import Cloud
    from chalicelib.backends.sources import deployed

    sources = SageMakerEndpointBackend.descriptor.event_sources
    assert STATE_EVENT["source"] in sources
    assert set(sources) <= set(deployed(Cloud.AWS))


def test_payload_limits_and_serverless_concurrency_bounds(settings):
    assert SageMakerEndpointBackend(settings).max_payload_bytes == 6 * 1024 * 1024
    assert SageMakerServerlessBackend(settings).max_payload_bytes == 4 * 1024 * 1024
    serverless = SageMakerServerlessBackend(settings)
    serverless.validate(make_deployment(min_replicas=0, max_replicas=200))
    with pytest.raises(ValidationError) as raised:
        serverless.validate(make_deployment(max_replicas=201))
    assert raised.value.details[0] == {"field": "max_replicas", "message": "1 to 200 (MaxConcurrency)"}


def test_autoscaling_registers_the_variant_between_min_and_max_with_target_tracking_on_moto(aws):
    backend = SageMakerEndpointBackend(aws)
    deployment = make_deployment(min_replicas=1, max_replicas=4)
    backend.validate(deployment)  # max_replicas above min_replicas is autoscaling, no longer refused
    native = backend.create(deployment)
    assert (
        boto(aws, "sagemaker").describe_endpoint_config(EndpointConfigName=f"{NAME}-v1")["ProductionVariants"][0][
            "InitialInstanceCount"
        ]
        == 1
    )
    backend.serving(native, deployment)
    backend.serving(native, deployment)  # the next rollout registers again: create-or-update, still one of each
    scaling = boto(aws, "application-autoscaling")
    resource = f"endpoint/{NAME}/variant/AllTraffic"
    [target] = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])[
        "ScalableTargets"
    ]
    assert (target["ScalableDimension"], target["MinCapacity"], target["MaxCapacity"]) == (
        "sagemaker:variant:DesiredInstanceCount",
        1,
        4,
    )
    [policy] = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)["ScalingPolicies"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
    }
    assert tracking["TargetValue"] == 70.0
    for operation, request in zip(
        ("RegisterScalableTarget", "PutScalingPolicy"), backend.scaling_requests(native, deployment), strict=True
    ):
        check_aws_request("application-autoscaling", operation, request)
    backend.delete(native)  # deregistered before DeleteEndpoint
    assert (
        scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])["ScalableTargets"] == []
    )


def test_a_fixed_size_or_serverless_endpoint_registers_no_scaling(settings):
    scaling = boto(settings, "application-autoscaling")
    for backend, deployment in (
        (SageMakerEndpointBackend(settings), make_deployment(min_replicas=2, max_replicas=2)),
        (SageMakerServerlessBackend(settings), make_deployment(min_replicas=0, max_replicas=5)),
    ):
        backend.set_client("application-autoscaling", scaling)
        with Stubber(scaling) as stub:  # any call would find no response waiting and raise
            backend.serving(NAME, deployment)
            stub.assert_no_pending_responses()
    with Stubber(scaling) as stub:  # AWS's answer for a target never registered: deleting goes on
        stub.add_client_error(
            "deregister_scalable_target", "ObjectNotFoundException", "No scalable target registered", 400
        )
        real_time = SageMakerEndpointBackend(settings)
        real_time.set_client("application-autoscaling", scaling)
        real_time._deregister(NAME)
        stub.assert_no_pending_responses()


def test_the_service_attaches_scaling_when_the_endpoint_comes_in_service_and_survives_a_refusal(settings):
    """Stubber with Application Auto Scaling's published response shapes; a refusal is logged, the endpoint
    stays IN_SERVICE (serving at min_replicas)."""
    from chalicelib.endpoints.model import EndpointHistoryEntry
    from chalicelib.endpoints.service import EndpointService
    from chalicelib.jobs.model import EventSource
    from chalicelib.store.endpoints import InMemoryEndpointStore
    from tests.factories import make_endpoint

    service = EndpointService(InMemoryEndpointStore(), settings)
    backend = service.backend("sagemaker")
    scaling = boto(settings, "application-autoscaling")
    backend.set_client("application-autoscaling", scaling)
    endpoint = make_endpoint(body={"backend": "sagemaker", "min_replicas": 1, "max_replicas": 3})
    endpoint = endpoint.with_changes(native_id=NAME)
    service.store.put_endpoint(
        endpoint, EndpointHistoryEntry(endpoint.endpoint_id, endpoint.created_at, None, S.CREATING, "", EventSource.API)
    )
    register, policy = backend.scaling_requests(NAME, service._deployment(endpoint, None))
    assert (register["MinCapacity"], register["MaxCapacity"]) == (1, 3)
    with Stubber(scaling) as stub:
        stub.add_response(
            "register_scalable_target",
            {"ScalableTargetARN": "arn:aws:application-autoscaling:us-east-1:123456789012:scalable-target/056d"},
            register,
        )
        stub.add_response(
            "put_scaling_policy",
            {
                "PolicyARN": "arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:6d8972f3:resource/sagemaker/"
                f"endpoint/{NAME}/variant/AllTraffic:policyName/{NAME}-invocations",
                "Alarms": [
                    {
                        "AlarmName": f"TargetTracking-endpoint/{NAME}/variant/AllTraffic-AlarmHigh-d4f0770c",
                        "AlarmARN": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:TargetTracking-endpoint/"
                        f"{NAME}/variant/AllTraffic-AlarmHigh-d4f0770c",
                    }
                ],
            },
            policy,
        )
        in_service = EndpointObservation(EndpointStatus.IN_SERVICE, "InService", NAME)
        assert service.observe(endpoint, in_service, EventSource.BACKEND).status is S.IN_SERVICE
        stub.assert_no_pending_responses()
    updating = service.store.get_endpoint(endpoint.endpoint_id)
    updating = service.observe(updating, EndpointObservation(S.UPDATING, "Updating", NAME), EventSource.BACKEND)
    with Stubber(scaling) as stub:
        stub.add_client_error(
            "register_scalable_target", "AccessDeniedException", "not authorized to iam:CreateServiceLinkedRole", 400
        )
        back = service.observe(updating, in_service, EventSource.BACKEND)
        stub.assert_no_pending_responses()
    assert back.status is S.IN_SERVICE
    refused = service.store.get_endpoint(endpoint.endpoint_id)
    assert "not authorized to iam:CreateServiceLinkedRole" in refused.serving_error
    assert "not authorized" in refused.to_api()["serving_error"]
    # The next reconcile tick tries again (DescribeEndpoint in its published shape, then the two calls).
    sagemaker = boto(settings, "sagemaker")
    backend.set_client("sagemaker", sagemaker)
    now = datetime.now(UTC)
    described = {
        "EndpointName": NAME,
        "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{NAME}",
        "EndpointConfigName": f"{NAME}-v1",
        "EndpointStatus": "InService",
        "CreationTime": now,
        "LastModifiedTime": now,
    }
    with Stubber(sagemaker) as sm, Stubber(scaling) as stub:
        sm.add_response("describe_endpoint", described, {"EndpointName": NAME})
        stub.add_response("register_scalable_target", {"ScalableTargetARN": "arn:x"}, register)
        stub.add_response("put_scaling_policy", {"PolicyARN": "arn:y", "Alarms": []}, policy)
        assert [d.action for d in service.reconcile()] == ["refreshed"]
        stub.assert_no_pending_responses()
        sm.assert_no_pending_responses()
    assert service.store.get_endpoint(endpoint.endpoint_id).serving_error is None
