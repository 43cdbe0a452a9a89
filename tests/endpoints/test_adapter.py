"""The generated inference.py, imported and driven as the SageMaker inference toolkit calls it, and model.tar.gz."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile

import pytest

from chalicelib.endpoints import adapter
from chalicelib.errors import ValidationError
from tests.factories import boto, endpoint_model_dir, make_deployment


def unpack(data: bytes, into):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(into, filter="data")
    return names


def import_inference(code_dir):
    spec = importlib.util.spec_from_file_location(f"inference_{abs(hash(str(code_dir)))}", code_dir / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_can_serve_a_handler_through_the_toolkits_four_functions(tmp_path):
    model = endpoint_model_dir(tmp_path / "model", scale=2.5, handler=False)
    handler = endpoint_model_dir(tmp_path / "src", handler=True) / "serve.py"
    (tmp_path / "src" / "requirements.txt").write_text("numpy\n")
    names = unpack(adapter.pack_model(model, handler, tmp_path / "src" / "requirements.txt"), tmp_path / "opt-ml-model")
    assert names == ["scale.txt", "code/inference.py", "code/serve.py", "code/requirements.txt"]
    root = tmp_path / "opt-ml-model"
    inference = import_inference(root / "code")
    # As sagemaker_inference's Transformer does: model_fn once, then per request input -> predict -> output.
    loaded = inference.model_fn(str(root))
    data = inference.input_fn(json.dumps({"x": [1, 2]}).encode(), "application/json")
    assert data == [1.0, 2.0]  # preprocess ran
    prediction = inference.predict_fn(data, loaded)
    body = inference.output_fn(prediction, "application/json")
    assert json.loads(body) == {"y": [2.5, 5.0], "postprocessed": True}
    # A str body and a */* Accept (what a client sends by default) work too.
    assert inference.input_fn('{"x": [4]}', "application/json; charset=utf-8") == [4.0]
    assert json.loads(inference.output_fn([1.0], "*/*")) == {"y": [1.0], "postprocessed": True}


def test_refuses_what_the_handler_cannot_read_and_lets_the_handlers_error_reach_the_toolkit(tmp_path):
    model = endpoint_model_dir(tmp_path / "model")
    unpack(adapter.pack_model(model, model / "serve.py"), tmp_path / "out")
    inference = import_inference(tmp_path / "out" / "code")
    with pytest.raises(ValueError, match="unsupported content type 'text/csv'"):
        inference.input_fn(b"1,2", "text/csv")
    with pytest.raises(ValueError, match="unsupported accept type"):
        inference.output_fn([1], "text/csv")
    with pytest.raises(ValueError, match="boom requested"):
        inference.input_fn(b'{"boom": 1}', "application/json")


def test_a_handler_without_pre_and_postprocess_passes_the_request_and_answer_through(tmp_path):
    model = endpoint_model_dir(tmp_path / "model", handler=False)
    (tmp_path / "plain.py").write_text(
        "def load(d):\n    return 10\n\ndef predict(m, x):\n    return {'got': x, 'm': m}\n"
    )
    unpack(adapter.pack_model(model, tmp_path / "plain.py"), tmp_path / "out")
    inference = import_inference(tmp_path / "out" / "code")
    model_obj = inference.model_fn(str(tmp_path / "out"))
    out = inference.output_fn(
        inference.predict_fn(inference.input_fn(b'{"a": 1}', "application/json"), model_obj), None
    )
    assert json.loads(out) == {"got": {"a": 1}, "m": 10}


def test_a_handler_missing_predict_fails_at_import_naming_it(tmp_path):
    model = endpoint_model_dir(tmp_path / "model", handler=False)
    (tmp_path / "bad.py").write_text("def load(d):\n    return 1\n")
    unpack(adapter.pack_model(model, tmp_path / "bad.py"), tmp_path / "out")
    with pytest.raises(RuntimeError, match=r"bad.py defines no predict\(\)"):
        import_inference(tmp_path / "out" / "code")


@pytest.mark.parametrize("name", ["../serve.py", "dir/serve.py", "inference.py", "serve.txt"])
def test_refuses_a_handler_name_that_is_not_one_python_file(name):
    with pytest.raises(ValidationError) as raised:
        adapter.render_inference(name)
    assert raised.value.details[0]["field"] == "handler"


def test_packing_is_deterministic_and_replaces_a_code_folder_the_model_carried(tmp_path):
    model = endpoint_model_dir(tmp_path / "model")
    (model / "code").mkdir()
    (model / "code" / "inference.py").write_text("raise SystemExit('stale')")
    first = adapter.pack_model(model, model / "serve.py")
    assert first == adapter.pack_model(model, model / "serve.py")
    names = unpack(first, tmp_path / "out")
    assert names.count("code/inference.py") == 1
    assert "stale" not in (tmp_path / "out" / "code" / "inference.py").read_text()


def test_can_stage_model_tar_gz_from_s3_with_the_handler_from_the_workdir(tmp_path, settings):
    from moto import mock_aws

    with mock_aws():
        s3 = boto(settings, "s3")
        for bucket in ("models-bucket", "artifacts"):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket="models-bucket", Key="scaler/scale.txt", Body=b"4")
        s3.put_object(Bucket="models-bucket", Key="scaler/sub/vocab.json", Body=b"{}")
        workdir = io.BytesIO()
        with tarfile.open(fileobj=workdir, mode="w:gz") as tar:
            src = endpoint_model_dir(tmp_path / "src")
            (src / "requirements.txt").write_text("scikit-learn\n")
            for name in ("serve.py", "requirements.txt"):
                tar.add(src / name, arcname=name)
        s3.put_object(Bucket="artifacts", Key="code/abc.tar.gz", Body=workdir.getvalue())
        deployment = make_deployment(code_uri="s3://artifacts/code/abc.tar.gz", version=3)
        uri = adapter.stage_model(s3, deployment, "artifacts")
        assert uri == f"s3://artifacts/code/endpoints/{'e' * 32}/v3/model.tar.gz"
        data = s3.get_object(Bucket="artifacts", Key=uri.split("/", 3)[3])["Body"].read()
    names = unpack(data, tmp_path / "out")
    assert sorted(names) == sorted(
        ["scale.txt", "sub/vocab.json", "code/inference.py", "code/serve.py", "code/requirements.txt"]
    )
    inference = import_inference(tmp_path / "out" / "code")
    assert json.loads(
        inference.output_fn(inference.predict_fn([2.0], inference.model_fn(str(tmp_path / "out"))), None)
    )["y"] == [8.0]


def test_staging_names_the_handler_when_it_is_not_among_the_files(settings):
    from moto import mock_aws

    with mock_aws():
        s3 = boto(settings, "s3")
        s3.create_bucket(Bucket="models-bucket")
        s3.put_object(Bucket="models-bucket", Key="scaler/scale.txt", Body=b"4")
        with pytest.raises(ValidationError, match="handler serve.py is not in the model's files"):
            adapter.stage_model(s3, make_deployment(), "models-bucket")


def test_the_generated_module_needs_nothing_but_the_standard_library():
    source = adapter.render_inference("serve.py")
    imported = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith("import ")}
    assert imported <= set(sys.stdlib_module_names)


def test_a_model_that_is_one_object_or_a_tarball_is_staged_as_the_model_folder(tmp_path, settings):
    from moto import mock_aws

    with mock_aws():
        s3 = boto(settings, "s3")
        s3.create_bucket(Bucket="models-bucket")
        s3.put_object(Bucket="models-bucket", Key="one/scale.txt", Body=b"5")
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode="w:gz") as tar:
            endpoint_model_dir(tmp_path / "trained", scale=6.0)
            tar.add(tmp_path / "trained" / "scale.txt", arcname="scale.txt")
            tar.add(tmp_path / "trained" / "serve.py", arcname="serve.py")
        # SageMaker training's own output: <outputs>/<job>/output/model.tar.gz
        s3.put_object(Bucket="models-bucket", Key="job/output/model.tar.gz", Body=packed.getvalue())
        code = io.BytesIO()
        with tarfile.open(fileobj=code, mode="w:gz") as tar:
            tar.add(tmp_path / "trained" / "serve.py", arcname="serve.py")
        s3.put_object(Bucket="models-bucket", Key="code/c.tar.gz", Body=code.getvalue())
        scales = {}
        for uri, code_uri in (
            ("s3://models-bucket/one/scale.txt", "s3://models-bucket/code/c.tar.gz"),
            ("s3://models-bucket/job/output/model.tar.gz", None),
        ):
            staged = adapter.stage_model(s3, make_deployment(model_uri=uri, code_uri=code_uri), "models-bucket")
            data = s3.get_object(Bucket="models-bucket", Key=staged.split("/", 3)[3])["Body"].read()
            out = tmp_path / f"out{len(scales)}"
            unpack(data, out)
            scales[uri] = (out / "scale.txt").read_text()
    assert scales == {"s3://models-bucket/one/scale.txt": "5", "s3://models-bucket/job/output/model.tar.gz": "6.0"}


def test_packing_gives_the_same_bytes_a_second_later(tmp_path, monkeypatch):
    """gzip's header holds a time: packs made in different seconds are the same bytes (and the same S3 ETag)."""
    import time

    model = endpoint_model_dir(tmp_path / "model")
    first = adapter.pack_model(model, model / "serve.py")
    later = time.time() + 5
    monkeypatch.setattr(time, "time", lambda: later)  # what gzip and tarfile read for "now"
    assert adapter.pack_model(model, model / "serve.py") == first
