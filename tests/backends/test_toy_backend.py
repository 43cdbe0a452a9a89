"""A backend added with one module and one registry line: planned, run to SUCCEEDED, linked in Slack, granted IAM."""

from __future__ import annotations

import pytest

from chalicelib import backends
from chalicelib.backends import BackendDescriptor, Cloud, policy
from chalicelib.notify.messages import Kind, build_message
from tests.backends.toy_backend import ToyBackend
from tests.factories import make_settings, make_stores, use_stores, wait_for

TOY = "tests.backends.toy_backend:ToyBackend"


@pytest.fixture
def toy():
    """The one registry line, undone afterwards so no other test sees the toy."""
    backends.register("toy", TOY)
    try:
        yield
    finally:
        backends.unregister("toy")


@pytest.fixture
def toy_api(toy, tmp_path, moto_endpoint):
    from chalice.test import Client

    from chalicelib import deps
    from chalicelib.jobs.service import JobService
    from tests.factories import ApiClient

    settings = make_settings(tmp_path, moto_endpoint, JOBPLANE_BACKENDS="toy,local")
    stores = make_stores(settings)
    use_stores(settings, stores, service=JobService(stores["jobs"], settings))
    import app as app_module

    with Client(app_module.app) as client:
        yield ApiClient(client, stores), settings
    deps.reset()


def _reconcile(api):
    event = api.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=["arn:aws:events:rule/reconcile"]
    )
    return api.lambda_.invoke("reconcile", event).payload


def test_can_run_a_job_on_a_backend_added_with_one_module_and_one_registry_line(toy_api):
    api, settings = toy_api
    token = api.token("alice")
    spec = {"name": "toy-train", "command": ["train", "--epochs", "1"], "backend": "toy"}
    created = api.request("POST", "/jobs", token=token, body=spec)
    assert created.status_code == 201, created.body
    job_id = created.json_body["job_id"]
    assert created.json_body["backend"] == "toy"

    def finished():
        _reconcile(api)
        body = api.request("GET", f"/jobs/{job_id}", token=token).json_body
        return body if body["status"] == "SUCCEEDED" else None

    done = wait_for(finished, 20.0, what="the toy job to succeed")
    assert done["native_id"].startswith("jp-")
    history = api.request("GET", f"/jobs/{job_id}/events", token=token).json_body["events"]
    assert [e["to"] for e in history][-1] == "SUCCEEDED"

    # Its console link, from its descriptor, in the Slack message built for it.
    job = api.store.get_job(job_id)
    message = build_message(job, Kind.SUCCEEDED, settings.region)
    links = [e["text"] for b in message["blocks"] if b["type"] == "context" for e in b["elements"]]
    assert links == [f"<https://toy.example/us-east-1/jobs/{done['native_id']}|Open in the Toy Cloud console>"]

    # Its IAM actions in the generated policy.
    statements = {s["Sid"]: s for s in policy.build(settings)["Statement"]}
    assert statements["Toy"]["Action"] == ["toy:DescribeJob", "toy:RunJob", "toy:StopJob"]
    assert {"toy:RunJob", "toy:DescribeJob", "toy:StopJob"} <= policy.declared_actions(settings)


def test_the_planner_ranks_the_toy_by_its_descriptor(toy, tmp_path):
    from chalicelib.jobs.spec import parse_spec
    from chalicelib.planner import plan

    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="ec2,toy", JOBPLANE_DEFAULT_BACKEND="ec2")
    spec = parse_spec({"name": "bare", "command": ["true"]} | {"image": "busybox"})
    name, why = plan(spec, settings)
    assert name == "toy"
    assert why.startswith("auto: toy, the toy in-memory runner, for a CPU-only job")


def test_a_state_event_of_the_toy_reaches_it_through_the_registry(toy, tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="toy")
    found = backends.backends_for_source("jobplane.toy", settings)
    assert [b.name for b in found] == ["toy"]
    observed = found[0].parse_event(
        {"source": "jobplane.toy", "detail": {"name": "jp-" + "a" * 32, "status": "SUCCEEDED"}}
    )
    assert observed.job_id == "a" * 32 and observed.status.value == "SUCCEEDED"


def test_an_unregistered_toy_is_refused_everywhere(tmp_path):
    from chalicelib.errors import ConfigError, ValidationError
    from chalicelib.jobs.spec import parse_spec

    backends.register("toy", TOY)
    backends.unregister("toy")
    with pytest.raises(ValidationError) as info:
        parse_spec({"name": "x", "command": ["true"], "backend": "toy"})
    assert info.value.details[0]["field"] == "backend"
    with pytest.raises(ConfigError, match="unknown backends"):
        make_settings(tmp_path, JOBPLANE_BACKENDS="toy")


def test_register_refuses_auto_and_a_second_target_for_a_name(toy):
    with pytest.raises(ValueError, match="cannot name a backend"):
        backends.register("auto", TOY)
    with pytest.raises(ValueError, match="already registered"):
        backends.register("toy", "tests.backends.other:Other")
    backends.register("toy", TOY)  # the same line again is harmless


def test_a_spec_for_a_backend_that_is_not_registered_gets_a_400_naming_backend_and_the_valid_names(toy_api):
    api, _ = toy_api
    spec = {"name": "aml", "command": ["train"], "image": "busybox", "backend": "azureml"}
    response = api.request("POST", "/jobs", token=api.token("alice"), body=spec)
    assert response.status_code == 400, response.body
    detail = response.json_body["error"]["details"][0]
    assert detail["field"] == "backend"
    assert "'toy'" in detail["message"] and "'sagemaker'" in detail["message"]
    assert "azureml" not in detail["message"]


def test_the_openapi_document_lists_the_registered_backends(toy_api):
    api, _ = toy_api
    schema = api.request("GET", "/openapi.json").json_body["components"]["schemas"]["JobSpec"]["properties"]
    assert schema["backend"]["enum"] == ["auto", *backends.names()]
    assert "toy" in schema["fallback"]["items"]["enum"] and "auto" not in schema["fallback"]["items"]["enum"]


class ToyGcpBackend(ToyBackend):
    """The toy as a GCP backend, to show Pub/Sub routing reads the descriptors."""

    descriptor = BackendDescriptor(
        name="toy-gcp",
        cloud=Cloud.GCP,
        display_name="Toy Cloud (GCP)",
        rank=6,
        role="the toy, on Google Cloud",
        event_sources=("toy.googleapis.com", "jobplane.toy-vm"),
        log_resource_types=("toy_job",),
    )


def test_gcp_messages_are_routed_by_the_registered_descriptors():
    import base64
    import json

    from chalicelib.events.gcp import pubsub_message, state_hint

    def message(body, attributes=None):
        data = base64.b64encode(json.dumps(body).encode()).decode()
        return pubsub_message({"message": {"data": data, "attributes": attributes or {}, "messageId": "1"}})

    entry = {"resource": {"type": "toy_job"}, "protoPayload": {}}
    vm = message({"state": "SUCCEEDED"}, {"jobplane-source": "jobplane.toy-vm", "jobplane-native-id": "jp-x"})
    assert state_hint(message(entry)) is None
    backends.register("toy-gcp", "tests.backends.test_toy_backend:ToyGcpBackend")
    try:
        assert state_hint(message(entry))["source"] == "toy.googleapis.com"
        assert state_hint(vm)["source"] == "jobplane.toy-vm"
        assert state_hint(vm)["detail"]["native_id"] == "jp-x"
        # Among the enabled backends only: a deployment without the toy ignores it.
        assert state_hint(message(entry), ["vertex", "gce"]) is None
        assert state_hint(message({"resource": {"type": "ml_job"}}), ["vertex"])["source"] == (
            "aiplatform.googleapis.com"
        )
    finally:
        backends.unregister("toy-gcp")
