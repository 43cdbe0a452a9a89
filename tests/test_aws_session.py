"""One botocore session per container: stores, AWS backends and the secrets reader share it and its clients."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

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
