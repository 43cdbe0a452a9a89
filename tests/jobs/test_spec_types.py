"""The typed JobSpec past the edge: frozen, one statement of each default, serialised without pydantic."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from chalicelib.jobs import spec as edge
from chalicelib.jobs import spec_types as typed
from chalicelib.jobs.model import Job, JobStatus, utcnow
from chalicelib.jobs.spec import parse_spec
from tests.factories import FULL_SPEC, ROOT

PAIRS = [
    (edge.JobSpec, typed.JobSpec),
    (edge.Resources, typed.Resources),
    (edge.Retries, typed.Retries),
    (edge.Notify, typed.Notify),
]


@pytest.mark.parametrize(("model", "dataclass"), PAIRS, ids=lambda c: c.__name__)
def test_the_edge_model_and_the_typed_spec_have_the_same_fields_and_defaults(model, dataclass):
    fields = {f.name: f for f in dataclasses.fields(dataclass)}
    assert list(model.model_fields) == list(fields)
    for name, info in model.model_fields.items():
        if info.is_required():
            assert fields[name].default is dataclasses.MISSING and fields[name].default_factory is dataclasses.MISSING
            continue
        declared = info.get_default(call_default_factory=True)
        if isinstance(declared, edge.BaseModel):
            declared = declared.model_dump(mode="json")
            assert declared == typed._to_dict(typed.default(dataclass, name)), name
        else:
            assert declared == typed.default(dataclass, name), name


def test_the_1440_minute_default_is_stated_once_in_chalicelib():
    sources = [p for p in (ROOT / "chalicelib").rglob("*.py")]
    stating = [str(p.relative_to(ROOT)) for p in sources if "max_runtime_minutes: int = 1440" in p.read_text()]
    restating = [
        str(p.relative_to(ROOT))
        for p in sources
        if "max_runtime_minutes" in p.read_text() and "1440" in p.read_text() and p.name != "spec_types.py"
    ]
    assert stating == ["chalicelib/jobs/spec_types.py"]
    assert restating == []


def test_a_minimal_spec_takes_every_default_from_the_typed_spec():
    parsed = parse_spec({"name": "train", "image": "train:1", "command": ["python", "train.py"]})
    assert parsed == typed.JobSpec(name="train", image="train:1", command=("python", "train.py"))
    assert type(parsed) is typed.JobSpec


def test_to_dict_is_the_public_json_shape_of_the_edge_model():
    validated = edge.JobSpec.model_validate(FULL_SPEC).model_dump(mode="json", exclude_none=False)
    assert parse_spec(FULL_SPEC).to_dict() == validated
    assert list(parse_spec(FULL_SPEC).to_dict()) == list(validated)
    assert json.loads(json.dumps(parse_spec(FULL_SPEC).to_dict())) == validated


def test_from_dict_round_trips_to_dict():
    spec = parse_spec(FULL_SPEC)
    again = typed.JobSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.retries.on == ("interruption", "capacity")
    assert again.resources == typed.Resources(gpus=1, gpu_type="A10G", cpus=4.0, memory_gb=16.0, spot=True)


def test_the_typed_spec_is_frozen_inside_too():
    spec = parse_spec(FULL_SPEC)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.env["LR"] = "9"  # type: ignore[index]
    assert isinstance(spec.command, tuple) and isinstance(spec.setup, tuple)
    with pytest.raises(TypeError):
        spec.inputs["0"] = "s3://other/"  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "command": ["a"], "colour": "red"}, "spec has unknown field 'colour'"),
        ({"name": "x", "command": ["a"], "resources": {"gpu": 1}}, "spec.resources has unknown field 'gpu'"),
        ({"command": ["a"]}, "spec lacks the required field 'name'"),
        ({"name": "x", "command": ["a"], "retries": [3]}, "spec.retries must be a mapping, got list"),
    ],
)
def test_from_dict_names_the_field_it_cannot_read(data, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        typed.JobSpec.from_dict(data)


def test_a_job_holds_only_a_typed_spec():
    with pytest.raises(TypeError, match="Job.spec must be a JobSpec"):
        Job("0" * 32, "x", "alice", JobStatus.QUEUED, "local", {"name": "x", "command": ["a"]}, utcnow())


COLD = """
import json, sys
from chalicelib.config import Settings
from chalicelib.store.dynamo import DynamoJobStore
import chalicelib.events, chalicelib.jobs.service  # the event path: decide and apply, no validation

store = DynamoJobStore(Settings.from_env({"JOBPLANE_STAGE": "cold", "AWS_REGION": "us-east-1"}))
image = {
    "job_id": {"S": "0123456789abcdef0123456789abcdef"}, "sk": {"S": "x"}, "name": {"S": "train"},
    "owner": {"S": "alice"}, "status": {"S": "RUNNING"}, "backend": {"S": "sagemaker"},
    "spec": {"S": json.dumps({"name": "train", "command": ["python", "train.py"], "image": "train:1"})},
    "native_id": {"S": "jp-0123456789abcdef0123456789abcdef"}, "attempt": {"N": "1"},
    "created_at": {"S": "2024-05-01T12:00:00.000000+0000"},
}
job = store.job_from_image(image)
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "pydantic" or m == "chalicelib.jobs.spec")
print(json.dumps({"max_runtime": job.spec.max_runtime_minutes, "name": job.native_name, "loaded": loaded}))
"""


def test_the_store_and_the_event_path_build_a_job_without_importing_pydantic_or_the_edge_spec():
    result = subprocess.run(
        [sys.executable, "-c", COLD], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"max_runtime": 1440, "name": "jp-0123456789abcdef0123456789abcdef", "loaded": []}
