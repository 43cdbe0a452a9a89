"""The local endpoint backend against the embedded S3 (moto): models and code staged, the handler looked up
in the endpoint's code, then the model's files, then the training job's code."""

from __future__ import annotations

import io
import json
import tarfile

import boto3
import pytest

from chalicelib.endpoints.backends.base import Deployment, EndpointResources, EndpointStatus
from chalicelib.endpoints.backends.local import LocalEndpointBackend
from chalicelib.errors import BackendValidationError, UnsupportedError
from tests.factories import ROOT, make_settings, wait_for

HANDLER = (ROOT / "examples" / "workdir-demo" / "serve.py").read_text()


def tarball(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def world(tmp_path, moto_endpoint):
    settings = make_settings(tmp_path, moto_endpoint)
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint)
    bucket = f"models-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="job/outputs/model.json", Body=json.dumps({"label_counts": {"cat": 2, "dog": 2}}))
    s3.put_object(Bucket=bucket, Key="code/job.tar.gz", Body=tarball({"serve.py": HANDLER}))
    own = "def load(d):\n    return 'own'\n\ndef predict(model, inputs):\n    return {'served_by': model}\n"
    s3.put_object(Bucket=bucket, Key="code/own.tar.gz", Body=tarball({"serve.py": own}))
    backend = LocalEndpointBackend(settings)
    yield backend, bucket
    for folder in backend.root.glob("jpe-*"):
        backend.delete(folder.name)


def deployment(bucket, endpoint_id="e" * 32, **kw) -> Deployment:
    fields = {"model_uri": f"s3://{bucket}/job/outputs/", "handler": "serve.py", "stage": "test", "owner": "alice"}
    fields.update(kw)
    return Deployment(endpoint_id=endpoint_id, name="clf", **fields)


def serving(backend, native_id):
    return wait_for(
        lambda: (o := backend.describe(native_id)).status is not EndpointStatus.CREATING and o, what="the server"
    )


def test_the_handler_is_found_in_the_training_jobs_code_when_the_model_has_none(world):
    backend, bucket = world
    native_id = backend.create(deployment(bucket, fallback_code_uri=f"s3://{bucket}/code/job.tar.gz"))
    observed = serving(backend, native_id)
    assert observed.status is EndpointStatus.IN_SERVICE and observed.url.startswith("http://127.0.0.1:")
    assert backend.invoke(native_id, {"text": "Cat"})["answer"] == "cat: seen 2 of 4 times in training"
    from datetime import UTC, datetime, timedelta

    assert backend.invocations_since(native_id, datetime.now(UTC) - timedelta(minutes=1)) == 1
    assert backend.invocations_since(native_id, datetime.now(UTC) + timedelta(minutes=1)) == 0
    backend.delete(native_id)
    assert backend.describe(native_id).status is EndpointStatus.DELETED


def test_the_endpoints_own_code_comes_before_the_jobs(world):
    backend, bucket = world
    d = deployment(
        bucket, code_uri=f"s3://{bucket}/code/own.tar.gz", fallback_code_uri=f"s3://{bucket}/code/job.tar.gz"
    )
    native_id = backend.create(d)
    serving(backend, native_id)
    assert backend.invoke(native_id, {}) == {"served_by": "own"}
    assert backend.create(d) == native_id  # a retried create starts no second server
    assert len(list((backend.root / native_id).glob("v*"))) == 1


def test_a_handler_found_nowhere_and_a_gpu_are_refused_with_the_reason(world):
    backend, bucket = world
    with pytest.raises(BackendValidationError) as info:
        backend.create(deployment(bucket, endpoint_id="f" * 32))
    assert f"handler serve.py is in none of: s3://{bucket}/job/outputs/" in info.value.message
    with pytest.raises(UnsupportedError) as info:
        backend.validate(deployment(bucket, resources=EndpointResources(gpus=1)))
    assert info.value.details[0]["field"] == "resources.gpus"
    with pytest.raises(BackendValidationError, match="no model files under"):
        backend.create(deployment(bucket, endpoint_id="d" * 32, model_uri=f"s3://{bucket}/nothing/"))
