"""Endpoints on the local stack over real HTTP, driven by the CLI: a spec FILE whose workdir holds the handler
(packed and uploaded by `jobplane endpoint deploy`), a model in the embedded S3, invoke from stdin, update,
status and delete; the model server's own HTTP address answers too."""

from __future__ import annotations

import json

import boto3
import pytest
import requests

from tests.factories import ROOT
from tests.factories import stack_api as api
from tests.factories import stack_cli as cli

pytestmark = pytest.mark.e2e


def test_the_cli_deploys_invokes_updates_and_deletes_a_local_endpoint(stack, tmp_path):
    s3 = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=stack["state"]["aws_endpoint"],
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the embedded emulator accepts any key
    )
    s3.create_bucket(Bucket="e2e-models")
    s3.put_object(Bucket="e2e-models", Key="clf/model.json", Body=json.dumps({"label_counts": {"cat": 1, "dog": 1}}))
    code = tmp_path / "code"
    code.mkdir()
    (code / "serve.py").write_text((ROOT / "examples" / "workdir-demo" / "serve.py").read_text())
    spec = tmp_path / "endpoint.yaml"
    spec.write_text("name: e2e-clf\nmodel: {uri: 's3://e2e-models/clf/'}\nworkdir: code\nbackend: local\n")

    deployed = cli(stack, "endpoint", "deploy", str(spec), "--wait", "--timeout", "60")
    assert "uploaded to s3://" in deployed.stdout and "IN_SERVICE on local" in deployed.stdout, deployed.stdout
    endpoint_id = _endpoint_id(stack, "e2e-clf")
    endpoint = api(stack, "GET", f"/endpoints/{endpoint_id}").json()
    assert endpoint["code_uri"].startswith("s3://") and endpoint["url"].startswith("http://127.0.0.1:")

    answer = cli(stack, "endpoint", "invoke", endpoint_id, stdin='{"text": " Cat. "}')
    assert json.loads(answer.stdout) == {"label": "cat", "share": 0.5, "answer": "cat: seen 1 of 2 times in training"}
    direct = requests.post(endpoint["url"] + "/invocations", json={"text": "dog"}, timeout=10)
    assert direct.status_code == 200 and direct.json()["label"] == "dog"
    bad = cli(stack, "endpoint", "invoke", endpoint_id, stdin='{"text": "emu"}', check=False)
    assert bad.returncode == 2 and "predict raised KeyError" in bad.stderr

    listed = json.loads(cli(stack, "endpoint", "list", "--json").stdout)
    mine = [e for e in listed if e["endpoint_id"] == endpoint_id]
    assert mine[0]["status"] == "IN_SERVICE" and mine[0]["invocations"] == 2  # the API's two; the direct one not
    (code / "v2.py").write_text("def load(d):\n    return 2\n\ndef predict(model, inputs):\n    return {'v': model}\n")
    s3.put_object(Bucket="e2e-models", Key="clf/v2.py", Body=(code / "v2.py").read_text())
    updated = cli(stack, "endpoint", "update", endpoint_id, "--handler", "v2.py", "--model-uri", "s3://e2e-models/clf/")
    assert " v2" in updated.stdout
    cli(stack, "endpoint", "update", endpoint_id, "--idle-minutes", "0", check=False)  # may still be UPDATING: 409
    status = cli(stack, "endpoint", "status", endpoint_id)
    assert "UPDATING -> IN_SERVICE" in status.stdout or "-> UPDATING" in status.stdout, status.stdout

    deleted = cli(stack, "endpoint", "delete", endpoint_id)
    assert "DELETED" in deleted.stdout
    with pytest.raises(requests.RequestException):
        requests.post(endpoint["url"] + "/invocations", json={"text": "dog"}, timeout=3)


def _endpoint_id(stack, name: str) -> str:
    [found] = [e for e in api(stack, "GET", "/endpoints").json()["endpoints"] if e["name"] == name]
    return found["endpoint_id"]
