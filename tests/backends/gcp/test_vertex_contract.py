"""The job contract on Vertex AI: the custom job's container stages code and inputs from Cloud Storage FUSE
(/gcs/<bucket>/...), runs setup then the command, and writes outputs and checkpoints through to the bucket."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
from google.cloud import aiplatform_v1

from chalicelib.backends.base import Handle
from chalicelib.backends.gcp.vertex import WRAPPER, VertexBackend
from chalicelib.errors import UnsupportedError
from tests.factories import gcp_env, make_job, make_settings, make_spec
from tests.vmharness import HOSTILE, TRAIN, archive

JOB_ID = "f" * 32
CODE = archive({"train.py": TRAIN, "pkg/data.txt": "packed with the code"})
SHA = hashlib.sha256(CODE).hexdigest()
SPEC = {
    "image": "us-docker.pkg.dev/p/train/img:1",
    "command": ["python", "train.py", *HOSTILE],
    "setup": [
        ["python", "-c", "import os; open('setup-ran', 'w').write(os.getcwd()); open('order', 'w').write('1')"],
        ["/bin/sh", "-c", 'printf 2 >> order && test -e "$JOBPLANE_INPUT_DIR/labels/labels.csv"'],
    ],
    "env": {"LR": "0.1"},
    "code_uri": f"gs://art/code/{SHA}.tar.gz",
    "code_sha256": SHA,
    "inputs": {"cifar": "gs://data/cifar/", "labels": "gs://data/labels.csv"},
    "outputs": "gs://art/outputs/",
}


@pytest.fixture
def backend(tmp_path):
    return VertexBackend(make_settings(tmp_path, **gcp_env("http://127.0.0.1:9")))


def _custom_job(backend, **spec):
    job = make_job("vertex", {**SPEC, **spec}, job_id=JOB_ID)
    return backend.custom_job(job, Handle.of(job))


def test_the_request_mounts_the_contract_on_cloud_storage_fuse(backend):
    custom_job = _custom_job(backend)
    # The official type accepts its own JSON back with unknown fields refused: the shape is Vertex's.
    again = aiplatform_v1.CustomJob.from_json(aiplatform_v1.CustomJob.to_json(custom_job), ignore_unknown_fields=False)
    container = again.job_spec.worker_pool_specs[0].container_spec
    assert list(container.command) == ["/bin/sh", "-c", WRAPPER, "jobplane"]
    assert list(container.args) == [
        f"/gcs/art/code/{SHA}.tar.gz", SHA, "/tmp/jobplane/code", "2",
        "cifar", "/gcs/data/cifar", "prefix",
        "labels", "/gcs/data/labels.csv", "object",
        "3", *SPEC["setup"][0], "3", *SPEC["setup"][1],
        str(len(SPEC["command"])), *SPEC["command"],
    ]  # fmt: skip
    env = {e.name: e.value for e in container.env}
    assert {k: v for k, v in env.items() if k.endswith("_DIR")} == {
        "JOBPLANE_INPUT_DIR": "/tmp/jobplane/inputs",
        "JOBPLANE_OUTPUT_DIR": f"/gcs/art/outputs/{JOB_ID}",
        "JOBPLANE_CHECKPOINT_DIR": f"/gcs/jobplane-test-artifacts/checkpoints/{JOB_ID}",
    }
    assert again.job_spec.base_output_directory.output_uri_prefix == f"gs://art/outputs/{JOB_ID}/"
    assert WRAPPER.count("$") and all(value not in WRAPPER for value in (SHA, "cifar", "LR"))
    with pytest.raises(ValueError, match="Unknown field"):
        aiplatform_v1.ContainerSpec(image_uri="x", commands=["x"])


def test_a_named_checkpoint_uri_is_the_checkpoint_folder_under_gcs(backend):
    env = {
        e.name: e.value
        for e in _custom_job(backend, checkpoint_uri="gs://ckpts/run-1")
        .job_spec.worker_pool_specs[0]
        .container_spec.env
    }
    assert env["JOBPLANE_CHECKPOINT_DIR"] == "/gcs/ckpts/run-1"


@pytest.mark.parametrize(
    ("field", "scheme"),
    [
        ("inputs.cifar", {"inputs": {"cifar": "{s}://data/cifar/"}}),
        ("outputs", {"outputs": "{s}://outs/"}),
        ("checkpoint_uri", {"checkpoint_uri": "{s}://ckpts/"}),
        ("code_uri", {"code_uri": "{s}://art/code/" + SHA + ".tar.gz", "code_sha256": SHA}),
    ],
)
def test_gcp_backends_refuse_s3_locations_and_ec2_refuses_gs_naming_the_field(tmp_path, field, scheme):
    from chalicelib.backends.aws.ec2 import Ec2Backend
    from chalicelib.backends.gcp.gce import GceBackend

    settings = make_settings(tmp_path, **gcp_env("http://127.0.0.1:9"), JOBPLANE_EC2_AMI="ami-1")

    def spec(s: str):
        located = json.loads(json.dumps(scheme).replace("{s}", s))
        return make_spec(**{**SPEC, "code_uri": None, "code_sha256": None, "inputs": {}, "outputs": None, **located})

    for backend, foreign in ((VertexBackend(settings), "s3"), (GceBackend(settings, client=object()), "s3")):
        backend.validate(spec("gs"))
        with pytest.raises(UnsupportedError) as refused:
            backend.validate(spec(foreign))
        assert refused.value.details[0]["field"] == field
        assert "gs://" in refused.value.details[0]["message"]
    Ec2Backend(settings).validate(spec("s3"))
    with pytest.raises(UnsupportedError) as refused:
        Ec2Backend(settings).validate(spec("gs"))
    assert refused.value.details[0]["field"] == field


def test_auto_skips_a_backend_that_cannot_read_the_jobs_data(tmp_path):
    from chalicelib.planner import plan

    env = {**gcp_env("http://127.0.0.1:9"), "JOBPLANE_BACKENDS": "vertex,ec2"}
    settings = make_settings(tmp_path, **env, JOBPLANE_EC2_AMI="ami-1")
    bare = {**SPEC, "backend": "auto", "code_uri": None, "code_sha256": None}
    name, why = plan(make_spec(**{**bare, "inputs": {"cifar": "s3://data/cifar/"}, "outputs": "s3://outs/"}), settings)
    assert name == "ec2" and "skipped vertex" in why and "gs://" in why
    assert plan(make_spec(**{**bare, "inputs": {"cifar": "gs://data/cifar/"}}), settings)[0] == "vertex"


@pytest.mark.skipif(shutil.which("dash") is None, reason="the wrapper is run by a POSIX sh (dash) here")
def test_the_wrapper_stages_runs_and_writes_through_to_the_bucket(tmp_path, backend):
    """The container's wrapper for real, with /gcs at a folder (the paths are its arguments and env)."""
    gcs = tmp_path / "gcs"
    for path, data in {
        f"art/code/{SHA}.tar.gz": CODE,
        "data/cifar/a.bin": b"A",
        "data/cifar/sub/b.bin": b"B",
        "data/labels.csv": b"cat,dog",
        f"jobplane-test-artifacts/checkpoints/{JOB_ID}/step-1.pt": b"one",
    }.items():
        (gcs / path).parent.mkdir(parents=True, exist_ok=True)
        (gcs / path).write_bytes(data)
    container = _custom_job(backend).job_spec.worker_pool_specs[0].container_spec

    def here(value: str) -> str:
        return value.replace("/gcs/", f"{gcs}/").replace("/tmp/jobplane/", f"{tmp_path}/jp/")

    env = {e.name: here(e.value) for e in container.env}
    env["PATH"] = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    command = [shutil.which("dash"), *list(container.command)[1:]]
    result = subprocess.run([*command, *map(here, container.args)], env=env, cwd=tmp_path, capture_output=True)
    assert result.returncode == 3, result.stderr  # train.py fails on purpose, after writing what it found

    out = gcs / "art" / "outputs" / JOB_ID
    seen = json.loads((out / "report.json").read_text())
    work = str(tmp_path / "jp" / "code")
    assert seen["cwd"] == work and seen["setup"] == work and seen["setup_order"] == "12"
    assert seen["argv"] == HOSTILE and seen["code_file"] == "packed with the code" and seen["lr"] == "0.1"
    assert seen["labels"] == "cat,dog" and seen["restored"] == ["step-1.pt"]
    assert (out / "model" / "weights.bin").read_text() == "w"  # in the bucket (FUSE writes through)
    assert (gcs / "jobplane-test-artifacts" / "checkpoints" / JOB_ID / "step-2.pt").read_text() == "two"
    inputs = tmp_path / "jp" / "inputs"
    assert sorted(p.name for p in (inputs / "cifar").rglob("*.bin")) == ["a.bin", "b.bin"]
    assert (inputs / "labels" / "labels.csv").resolve() == gcs / "data" / "labels.csv"
    assert list(tmp_path.rglob("PWNED*")) == []


@pytest.mark.skipif(shutil.which("dash") is None, reason="the wrapper is run by a POSIX sh (dash) here")
def test_the_wrapper_refuses_code_outside_its_folder(tmp_path, backend):
    bad = archive({"../escaped.txt": "x"})
    digest = hashlib.sha256(bad).hexdigest()
    (tmp_path / "code.tar.gz").write_bytes(bad)
    args = [str(tmp_path / "code.tar.gz"), digest, str(tmp_path / "work"), "0", "1", "true"]
    env = {
        "PATH": "/usr/bin:/bin",
        **{f"JOBPLANE_{d}_DIR": str(tmp_path / d) for d in ("INPUT", "OUTPUT", "CHECKPOINT")},
    }
    result = subprocess.run([shutil.which("dash"), "-c", WRAPPER, "jobplane", *args], env=env, capture_output=True)
    assert result.returncode == 1 and b"members outside its folder" in result.stderr
    assert list(tmp_path.rglob("escaped*")) == []
