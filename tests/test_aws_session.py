"""One botocore session per container: stores, AWS backends and the secrets reader share it and its clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from chalicelib import aws_session
from tests.factories import ROOT, make_settings


def test_backends_share_one_client_per_service_from_the_one_session(tmp_path, moto_endpoint):
    from chalicelib.backends.aws.ec2 import Ec2Backend
    from chalicelib.backends.aws.sagemaker import SageMakerBackend

    settings = make_settings(tmp_path, moto_endpoint)
    sagemaker, ec2 = SageMakerBackend(settings), Ec2Backend(settings)
    # Both look up the role's account: one STS client for the container, not one per backend.
    assert sagemaker.client("sts") is ec2.client("sts")
    assert sagemaker.client("sts").meta.config.retries["mode"] == "standard"


def test_every_table_of_the_stores_is_served_from_the_one_session(tmp_path, moto_endpoint):
    from chalicelib.store.tables import dynamo_stores

    stores = dynamo_stores(make_settings(tmp_path, moto_endpoint))
    models = [model for store in stores.values() for model in store.models.values()]
    connections = [model._get_connection().connection for model in models]
    for connection in connections:
        connection.client  # noqa: B018 - made on first use
    session = aws_session.botocore_session()
    assert len(models) > 4
    # One session (the service description parsed once), a client per table (each table its own pool).
    # Credentials are resolved once for the container, as the backends' clients see them.
    assert {id(c.session.get_credentials()) for c in connections} == {id(session.get_credentials())}
    assert len({id(c.client) for c in connections}) == len(connections)


def test_the_secrets_reader_uses_the_shared_session(tmp_path, moto_endpoint):
    from chalicelib.deps import read_secret

    settings = make_settings(tmp_path, moto_endpoint)
    secrets = aws_session.client("secretsmanager", settings.region, settings.aws_endpoint_url)
    secrets.create_secret(Name=f"{settings.table_prefix}-hook", SecretString=" https://hooks.example/x \n")
    assert read_secret(f"{settings.table_prefix}-hook", settings) == "https://hooks.example/x"
    ssm = aws_session.client("ssm", settings.region, settings.aws_endpoint_url)
    ssm.put_parameter(Name=f"/{settings.table_prefix}/token", Value="xoxb-1", Type="SecureString")
    assert read_secret(f"ssm:/{settings.table_prefix}/token", settings) == "xoxb-1"


def test_clients_made_from_many_threads_at_once_are_one_client():
    made: list[object] = []
    barrier = threading.Barrier(8)

    def make():
        barrier.wait()
        made.append(aws_session.client("sqs", "eu-west-3", "http://127.0.0.1:9"))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 8 and len({id(c) for c in made}) == 1


def test_a_different_config_or_endpoint_is_a_different_client():
    base = aws_session.client("sqs", "eu-west-3", "http://127.0.0.1:9")
    assert aws_session.client("sqs", "eu-west-3", "http://127.0.0.1:9", aws_session.standard_retries()) is not base
    assert aws_session.client("sqs", "eu-west-3", "http://127.0.0.1:8") is not base
    assert aws_session.client("sqs", "eu-west-3", "http://127.0.0.1:9") is base


FIRST_EVENT = """
import json, os, sys
import app
event = json.loads(os.environ["EVENT"])
result = app.on_job_state_change(event, None)
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "pydantic" or m == "chalicelib.jobs.spec")
print(json.dumps({"result": result, "loaded": loaded, "boto3": "boto3" in sys.modules}))
"""


def test_a_real_first_state_event_imports_neither_pydantic_nor_the_spec_module(tmp_path, moto_endpoint):
    """A fresh process, as a cold Lambda: the recorded SageMaker event against moto, the job in the store."""
    import os

    from chalicelib.auth import Principal
    from chalicelib.jobs.service import JobService
    from chalicelib.jobs.spec import parse_spec
    from chalicelib.store.dynamo import DynamoJobStore

    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": "us-east-1",
        "JOBPLANE_STAGE": "cold",
        "JOBPLANE_TABLE_PREFIX": f"cold-{tmp_path.name[-12:]}",
        "JOBPLANE_BACKENDS": "sagemaker",
        "JOBPLANE_LOCAL_STATE_DIR": str(tmp_path / "jobs"),
    }
    settings = make_settings(tmp_path, **env)
    store = DynamoJobStore(settings)
    store.create_tables()
    service = JobService(store, settings)
    spec = {"name": "cold", "backend": "sagemaker", "image": "train:1", "command": ["python", "train.py"]}
    job, _ = service.submit(Principal("alice"), parse_spec(spec))
    fixture = ROOT / "tests" / "fixtures" / "events" / "sagemaker-training-job-state-change.json"
    event = fixture.read_text().replace("0123456789abcdef0123456789abcdef", job.job_id)
    child = {k: v for k, v in os.environ.items() if not k.startswith("JOBPLANE_")}
    result = subprocess.run(
        [sys.executable, "-c", FIRST_EVENT],
        cwd=ROOT,
        env={**child, **env, "EVENT": event},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["result"]["outcome"] == "applied" and report["result"]["status"] == "SUCCEEDED"
    assert report["loaded"] == []
    assert report["boto3"] is False  # botocore alone: boto3's own import is not on the event path
    assert store.get_job(job.job_id).status.value == "SUCCEEDED"


def test_the_sessions_loader_loads_exactly_what_botocores_own_loader_loads():
    from botocore.loaders import create_loader

    def load(loader, service, type_name):
        try:
            return loader.load_service_model(service, type_name)
        except Exception as exc:  # noqa: BLE001 - the same error is part of "exactly"
            return type(exc), str(exc)

    stock, ours = create_loader(), aws_session._loader(None)
    for service in ("dynamodb", "sagemaker", "sts", "ec2", "s3", "no-such-service"):
        for type_name in ("service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2"):
            assert load(ours, service, type_name) == load(stock, service, type_name), (service, type_name)
    assert load(ours, "sts", "waiters-2")[0].__name__ == "UnknownServiceError"  # STS has no waiters
    assert ours.load_data("endpoints") == stock.load_data("endpoints")
    assert type(ours.load_data("endpoints")) is dict  # not botocore's OrderedDicts, 2-3x slower to decode


def test_the_loader_finds_a_known_service_without_listing_every_service():
    from botocore.exceptions import UnknownServiceError

    loader = aws_session._loader(None)
    listed: list[str] = []
    original = loader.list_available_services
    loader.list_available_services = lambda type_name: listed.append(type_name) or original(type_name)
    loader.load_service_model("dynamodb", "service-2")
    loader.load_service_model("dynamodb", "endpoint-rule-set-1")
    assert listed == []
    with pytest.raises(UnknownServiceError, match="Unknown service: 'no-such-service'"):
        loader.load_service_model("no-such-service", "service-2")  # botocore's own error, from its own listing
    assert listed == ["service-2"]


def test_the_loader_keeps_the_aws_data_path(tmp_path):
    model = {"version": "2.0", "metadata": {"apiVersion": "2020-01-01"}, "operations": {}, "shapes": {}}
    (tmp_path / "jobplane-test" / "2020-01-01").mkdir(parents=True)
    (tmp_path / "jobplane-test" / "2020-01-01" / "service-2.json").write_text(json.dumps(model))
    loader = aws_session._loader(f"{tmp_path}{os.pathsep}/nonexistent")
    assert loader.load_service_model("jobplane-test", "service-2") == model
    assert loader.load_service_model("dynamodb", "service-2")["metadata"]["serviceId"] == "DynamoDB"


def test_the_one_session_uses_that_loader():
    aws_session.reset()
    try:
        loader = aws_session.botocore_session().get_component("data_loader")
        assert type(loader).__name__ == "DirectLoader" and loader.search_paths[-1].endswith("botocore/data")
    finally:
        aws_session.reset()
