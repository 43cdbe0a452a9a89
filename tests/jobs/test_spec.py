"""JobSpec at the edge: YAML and JSON accepted, every invalid field named with what would be valid."""

from __future__ import annotations

import json

import pytest

from chalicelib.errors import ValidationError
from chalicelib.jobs.spec import GPU_TYPES, MAX_BODY_BYTES, load_spec_text, parse_spec
from chalicelib.jobs.spec_types import JobSpec

MINIMAL = {"name": "train", "command": ["python", "train.py"], "backend": "local"}

FULL_YAML = """\
name: resnet-cifar
image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/train:latest
command: ["python", "train.py", "--epochs", "10"]
env: {LR: "0.1"}
resources: {gpus: 1, gpu_type: A10G, cpus: 4, memory_gb: 16, spot: true}
backend: auto
max_runtime_minutes: 1440
inputs: [s3://bucket/datasets/cifar/]
outputs: s3://bucket/outputs/
checkpoint_uri: s3://bucket/checkpoints/resnet-cifar/
retries: {max_attempts: 3, on: [interruption, capacity]}
notify: {slack_channel: "#ml-jobs"}
labels: {team: vision}
"""


def _invalid(**overrides) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_spec({**MINIMAL, **overrides})
    return info.value


def _only_detail(err: ValidationError) -> dict:
    assert len(err.details) == 1, err.details
    return err.details[0]


# --- valid documents ------------------------------------------------------------------


def test_can_load_the_full_yaml_example_from_the_design():
    spec = load_spec_text(FULL_YAML, "application/x-yaml")
    assert spec.name == "resnet-cifar"
    assert spec.command == ("python", "train.py", "--epochs", "10")
    assert spec.env == {"LR": "0.1"}
    assert spec.resources.gpus == 1
    assert spec.resources.gpu_type == "A10G"
    assert spec.resources.cpus == 4
    assert spec.resources.memory_gb == 16
    assert spec.resources.spot is True
    assert spec.backend == "auto"
    assert spec.inputs == {"0": "s3://bucket/datasets/cifar/"}
    assert spec.outputs == "s3://bucket/outputs/"
    assert spec.checkpoint_uri == "s3://bucket/checkpoints/resnet-cifar/"
    assert spec.retries.max_attempts == 3
    assert spec.retries.on == ("interruption", "capacity")
    assert spec.notify.slack_channel == "#ml-jobs"
    assert spec.labels == {"team": "vision"}


def test_can_load_the_same_spec_as_json_with_an_equal_result():
    as_json = {
        "name": "resnet-cifar",
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:latest",
        "command": ["python", "train.py", "--epochs", "10"],
        "env": {"LR": "0.1"},
        "resources": {"gpus": 1, "gpu_type": "A10G", "cpus": 4, "memory_gb": 16, "spot": True},
        "backend": "auto",
        "max_runtime_minutes": 1440,
        "inputs": ["s3://bucket/datasets/cifar/"],
        "outputs": "s3://bucket/outputs/",
        "checkpoint_uri": "s3://bucket/checkpoints/resnet-cifar/",
        "retries": {"max_attempts": 3, "on": ["interruption", "capacity"]},
        "notify": {"slack_channel": "#ml-jobs"},
        "labels": {"team": "vision"},
    }
    from_json = load_spec_text(json.dumps(as_json).encode(), "application/json")
    assert from_json == load_spec_text(FULL_YAML, "application/x-yaml")


def test_yaml_reads_on_off_yes_no_as_strings_so_retries_on_keeps_its_key():
    spec = load_spec_text(
        "name: a\ncommand: [x]\nbackend: local\n"
        "env: {DEBUG: on, QUIET: no}\nretries: {max_attempts: 2, on: [capacity]}\n"
    )
    assert spec.env == {"DEBUG": "on", "QUIET": "no"}
    assert spec.retries.on == ("capacity",)


def test_a_minimal_spec_gets_the_documented_defaults():
    spec = parse_spec(MINIMAL)
    assert spec.image is None
    assert spec.env == {}
    assert spec.resources.gpus == 0
    assert spec.resources.gpu_type is None
    assert spec.resources.spot is False
    assert spec.max_runtime_minutes == 1440
    assert spec.retries.max_attempts == 1
    assert spec.retries.on == ("interruption",)
    assert spec.inputs == {}
    assert spec.outputs is None


def test_to_dict_round_trips_through_parse_spec():
    spec = load_spec_text(FULL_YAML)
    again = parse_spec(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_gpus_with_an_instance_type_need_no_gpu_type():
    spec = parse_spec({**MINIMAL, "backend": "ec2", "resources": {"gpus": 1, "instance_type": "g5.xlarge"}})
    assert spec.resources.instance_type == "g5.xlarge"


def test_a_spec_is_immutable():
    spec = parse_spec(MINIMAL)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        spec.name = "other"  # type: ignore[misc]
    assert isinstance(spec, JobSpec)


# --- unknown fields -------------------------------------------------------------------


def test_an_unknown_top_level_field_is_rejected_by_name_with_the_valid_fields():
    detail = _only_detail(_invalid(epochs=10))
    assert detail["field"] == "epochs"
    assert detail["type"] == "extra_forbidden"
    assert detail["message"].startswith("unknown field; valid fields here: backend, capacity_wait_minutes,")
    assert "max_runtime_minutes" in detail["message"]


def test_an_unknown_nested_field_is_rejected_with_its_dotted_name_and_the_siblings_that_exist():
    detail = _only_detail(_invalid(resources={"gpu": 1}))
    assert detail["field"] == "resources.gpu"
    assert detail["message"] == (
        "unknown field; valid fields here: cluster, cpus, gpu_type, gpus, instance_type, memory_gb, nodes, spot, tpu"
    )
    detail = _only_detail(_invalid(retries={"max_attempts": 2, "when": ["interruption"]}))
    assert detail["field"] == "retries.when"
    assert detail["message"] == "unknown field; valid fields here: fatal_exit_codes, max_attempts, on"


def test_every_invalid_field_is_reported_and_the_message_counts_the_rest():
    err = _invalid(name="Bad Name", resources={"gpus": 99}, colour="blue")
    fields = sorted(d["field"] for d in err.details)
    assert fields == ["colour", "name", "resources.gpus"]
    assert err.message.endswith("(and 2 more)")
    assert err.STATUS_CODE == 400
    assert err.to_dict()["error"]["code"] == "invalid_request"


# --- one invalid field at a time ------------------------------------------------------


@pytest.mark.parametrize("name", ["", "Train", "-train", "train-", "a_b", "a" * 64, "tr ain", "trαin"])
def test_an_invalid_name_names_the_field_and_the_pattern(name):
    detail = _only_detail(_invalid(name=name))
    assert detail["field"] == "name"
    assert detail["message"] == (
        "must be 1..63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
    )


@pytest.mark.parametrize("name", ["a", "a" * 63, "resnet-50", "0x"])
def test_a_valid_name_is_accepted(name):
    assert parse_spec({**MINIMAL, "name": name}).name == name


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        (17, "Input should be less than or equal to 16"),
        (-1, "Input should be greater than or equal to 0"),
        ("many", "Input should be a valid integer, unable to parse string as an integer"),
    ],
)
def test_gpus_out_of_range_names_resources_gpus_and_the_range(gpus, message):
    detail = _only_detail(_invalid(backend="ec2", resources={"gpus": gpus, "gpu_type": "T4"}))
    assert detail["field"] == "resources.gpus"
    assert detail["message"] == message


def test_an_unknown_gpu_type_lists_the_known_ones():
    detail = _only_detail(_invalid(backend="ec2", resources={"gpus": 1, "gpu_type": "RTX4090"}))
    assert detail["field"] == "resources.gpu_type"
    for gpu in GPU_TYPES:
        assert f"'{gpu}'" in detail["message"]


def test_gpus_without_a_gpu_type_names_resources_gpu_type_and_the_choices():
    detail = _only_detail(_invalid(backend="ec2", resources={"gpus": 2}))
    assert detail["field"] == "resources.gpu_type"
    assert detail["message"] == (
        "gpu_type (one of " + ", ".join(GPU_TYPES) + ") or instance_type is required when gpus > 0"
    )


def test_a_gpu_type_without_gpus_names_resources_gpus():
    detail = _only_detail(_invalid(backend="ec2", resources={"gpu_type": "T4"}))
    assert detail["field"] == "resources.gpus"
    assert "set gpus to 1 or more, or remove gpu_type" in detail["message"]


def test_an_unknown_backend_lists_the_backends():
    detail = _only_detail(_invalid(backend="azure"))
    assert detail["field"] == "backend"
    assert detail["message"] == (
        "Input should be 'auto', 'local', 'sagemaker', 'aws-batch', 'ecs', 'ec2', 'vertex', 'gce' or 'kubernetes'"
    )


def test_a_managed_backend_without_an_image_names_the_image_field():
    detail = _only_detail(_invalid(backend="sagemaker"))
    assert detail["field"] == "image"
    assert detail["message"] == (
        "image is required for backend 'sagemaker' (only local, ec2 and gce can run a bare command)"
    )


def test_a_tpu_outside_vertex_names_resources_tpu():
    detail = _only_detail(_invalid(backend="local", resources={"tpu": "v5litepod-8"}))
    assert detail["field"] == "resources.tpu"
    assert detail["message"] == "TPU jobs run only on backend vertex (or auto)"


@pytest.mark.parametrize(
    ("env", "field", "message"),
    [
        ({"1LR": "x"}, "env.1LR", "variable name '1LR' must match [A-Za-z_][A-Za-z0-9_]*"),
        ({"MY-VAR": "x"}, "env.MY-VAR", "variable name 'MY-VAR' must match [A-Za-z_][A-Za-z0-9_]*"),
        ({"A B": "x"}, "env.A B", "variable name 'A B' must match [A-Za-z_][A-Za-z0-9_]*"),
        (
            {"AWS_SECRET_ACCESS_KEY": "x"},
            "env.AWS_SECRET_ACCESS_KEY",
            "variable name 'AWS_SECRET_ACCESS_KEY' is reserved (JOBPLANE_* and AWS_* are set by jobplane)",
        ),
        (
            {"JOBPLANE_JOB_ID": "x"},
            "env.JOBPLANE_JOB_ID",
            "variable name 'JOBPLANE_JOB_ID' is reserved (JOBPLANE_* and AWS_* are set by jobplane)",
        ),
        ({"NUL": "a\x00b"}, "env.NUL", "value of NUL must be under 32 KiB with no NUL bytes"),
    ],
)
def test_a_bad_env_variable_names_the_variable_and_the_rule(env, field, message):
    detail = _only_detail(_invalid(env={"OK": "1", **env}))
    assert detail["field"] == field
    assert detail["message"] == message


def test_env_values_are_kept_verbatim_even_when_they_look_like_shell():
    hostile = {"CMD": "$(touch /tmp/x); `id` 'q' \"dq\"\nline2 ;rm -rf /"}
    assert parse_spec({**MINIMAL, "env": hostile}).env == hostile


@pytest.mark.parametrize(
    ("overrides", "field", "bad"),
    [
        ({"outputs": "http://bucket/out/"}, "outputs", "http://bucket/out/"),
        ({"checkpoint_uri": "/local/path"}, "checkpoint_uri", "/local/path"),
        ({"inputs": ["s3://good-bucket/a/", "ftp://host/x"]}, "inputs[1]", "ftp://host/x"),
        ({"inputs": ["s3://UPPER/x"]}, "inputs[0]", "s3://UPPER/x"),
    ],
)
def test_a_bad_uri_names_the_field_position_and_the_valid_schemes(overrides, field, bad):
    detail = _only_detail(_invalid(**overrides))
    assert detail["field"] == field
    assert detail["message"] == f"{bad!r} must be an s3:// or gs:// URI such as s3://bucket/prefix/"


def test_gs_and_s3_uris_are_accepted():
    spec = parse_spec({**MINIMAL, "inputs": ["gs://data-bucket/x/", "s3://b-1.example/y"], "outputs": "gs://out-b/"})
    assert spec.inputs == {"0": "gs://data-bucket/x/", "1": "s3://b-1.example/y"}


@pytest.mark.parametrize(
    ("retries", "field", "message"),
    [
        ({"max_attempts": 0}, "retries.max_attempts", "Input should be greater than or equal to 1"),
        ({"max_attempts": 11}, "retries.max_attempts", "Input should be less than or equal to 10"),
        ({"on": ["fire"]}, "retries.on[0]", "Input should be 'interruption' or 'capacity'"),
        ({"on": ["capacity", "oom"]}, "retries.on[1]", "Input should be 'interruption' or 'capacity'"),
    ],
)
def test_bad_retries_name_the_dotted_field_and_what_is_valid(retries, field, message):
    detail = _only_detail(_invalid(retries=retries))
    assert detail["field"] == field
    assert detail["message"] == message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"command": []}, "command"),
        ({"command": "   "}, "command"),
        ({"setup": [["pip", "install", "x"], []]}, "setup[1]"),
        ({"inputs": {"no spaces": "s3://bucket/x"}}, "inputs.no spaces"),
        ({"inputs": {"data": "http://bucket/x"}}, "inputs.data"),
        ({"inputs": {"jobplane-code": "s3://bucket/x"}}, "inputs.jobplane-code"),
        ({"inputs": {"JobPlane.x": "s3://bucket/x"}}, "inputs.JobPlane.x"),
        ({"workdir": "."}, "workdir"),
        ({"code_uri": "s3://bucket/code/x.zip", "code_sha256": "0" * 64}, "code_uri"),
        ({"code_uri": "s3://bucket/code/x.tar.gz"}, "code_sha256"),
        ({"command": ["  ", "x"]}, "command[0]"),
        ({"command": ["python", "a\x00b"]}, "command[1]"),
        ({"max_runtime_minutes": 0}, "max_runtime_minutes"),
        ({"max_runtime_minutes": 40321}, "max_runtime_minutes"),
        ({"labels": {"Team": "vision"}}, "labels.Team"),
        ({"labels": {"team": "Vision"}}, "labels.team"),
        ({"notify": {"slack_channel": "not a channel"}}, "notify.slack_channel"),
        ({"fallback": ["auto"]}, "fallback"),
        ({"resources": {"cpus": 0}}, "resources.cpus"),
    ],
)
def test_other_invalid_fields_are_named(overrides, field):
    assert _only_detail(_invalid(**overrides))["field"] == field


def test_a_missing_required_field_is_named():
    with pytest.raises(ValidationError) as info:
        parse_spec({"name": "train"})
    assert _only_detail(info.value) == {"field": "command", "message": "Field required", "type": "missing"}


# --- documents that are not specs -----------------------------------------------------


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "list"), ('"train"', "str"), ("42", "int")])
def test_a_document_that_is_not_a_mapping_is_refused(text, kind):
    with pytest.raises(ValidationError) as info:
        load_spec_text(text)
    assert info.value.details == [{"field": "(spec)", "message": f"got {kind}", "type": "model_type"}]


def test_broken_json_labelled_json_is_a_json_error_not_a_yaml_one():
    with pytest.raises(ValidationError) as info:
        load_spec_text(b'{"name": "x",', "application/json; charset=utf-8")
    assert info.value.message == "the body is not valid JSON"
    assert info.value.details[0]["field"] == "(body)"


def test_broken_yaml_is_a_validation_error_naming_the_body():
    with pytest.raises(ValidationError) as info:
        load_spec_text("name: [unclosed\n", "application/x-yaml")
    assert info.value.message == "the body is neither valid JSON nor valid YAML"
    assert info.value.details[0]["field"] == "(body)"
    assert info.value.details[0]["type"] == "yaml_invalid"


@pytest.mark.parametrize("body", [b"", b"   \n"])
def test_an_empty_body_is_refused(body):
    with pytest.raises(ValidationError) as info:
        load_spec_text(body)
    assert info.value.details == [{"field": "(body)", "message": "empty", "type": "missing"}]


def test_a_body_that_is_not_utf8_is_refused_naming_the_body():
    with pytest.raises(ValidationError) as info:
        load_spec_text(b"name: \xff\xfe")
    assert info.value.details[0]["field"] == "(body)"


def test_an_oversized_body_is_refused_before_it_is_parsed():
    with pytest.raises(ValidationError) as info:
        load_spec_text(b"#" * (MAX_BODY_BYTES + 1))
    assert info.value.details[0]["field"] == "(body)"
    assert str(MAX_BODY_BYTES) in info.value.message


def test_yaml_cannot_build_python_objects():
    with pytest.raises(ValidationError) as info:
        load_spec_text("!!python/object/apply:os.system ['touch /tmp/pwned']\n")
    assert info.value.details[0]["type"] == "yaml_invalid"


def test_a_string_command_and_setup_run_by_the_shell_inside_the_job():
    spec = parse_spec({**MINIMAL, "command": "python train.py --lr $LR | tee log", "setup": "pip install -r req.txt"})
    assert spec.command == ("/bin/sh", "-c", "python train.py --lr $LR | tee log")
    assert spec.setup == (("/bin/sh", "-c", "pip install -r req.txt"),)
    listed = parse_spec({**MINIMAL, "setup": [["pip", "install", "numpy"], ["python", "prep.py"]]})
    assert listed.setup == (("pip", "install", "numpy"), ("python", "prep.py"))


def test_inputs_as_a_list_are_named_by_position_and_as_a_mapping_keep_their_names():
    assert parse_spec({**MINIMAL, "inputs": ["s3://bucket/a/", "s3://bucket/b.csv"]}).inputs == {
        "0": "s3://bucket/a/",
        "1": "s3://bucket/b.csv",
    }
    named = parse_spec({**MINIMAL, "inputs": {"train": "s3://bucket/a/", "labels": "s3://bucket/b.csv"}})
    assert list(named.inputs.items()) == [("train", "s3://bucket/a/"), ("labels", "s3://bucket/b.csv")]


@pytest.mark.parametrize("name", ["JOBPLANE_OUTPUT_DIR", "JOBPLANE_INPUT_DIR", "JOBPLANE_ANYTHING", "AWS_PROFILE"])
def test_reserved_env_names_are_refused_naming_the_variable(name):
    detail = _only_detail(_invalid(env={name: "x"}))
    assert detail["field"] == f"env.{name}" and "reserved" in detail["message"]


def test_the_contract_places_outputs_checkpoints_and_code_by_job_and_digest():
    from chalicelib.jobs import contract

    spec = parse_spec(MINIMAL)
    assert contract.artifacts_uri(spec, "j1", "art") == "s3://art/outputs/j1/"
    assert contract.checkpoint_location(spec, "j1", "art") == "s3://art/checkpoints/j1/"
    named = parse_spec({**MINIMAL, "outputs": "s3://mine/out", "checkpoint_uri": "s3://mine/ckpt"})
    assert contract.artifacts_uri(named, "j1", "art") == "s3://mine/out/j1/"
    assert contract.checkpoint_location(named, "j1", "art") == "s3://mine/ckpt/"
    assert contract.code_key("a" * 64) == "code/" + "a" * 64 + ".tar.gz"
    with pytest.raises(ValueError):
        contract.code_key("../../etc")


# --- declared metric names --------------------------------------------------------------------


def test_declared_metric_names_are_kept_in_order():
    from chalicelib.jobs.spec import parse_spec

    spec = parse_spec({"name": "t", "command": ["true"], "backend": "local", "metrics": ["val_accuracy", "train/loss"]})
    assert spec.metrics == ("val_accuracy", "train/loss")
    assert parse_spec({"name": "t", "command": ["true"], "backend": "local"}).metrics == ()


@pytest.mark.parametrize(
    ("metrics", "field", "message"),
    [
        (["ok", "bad key"], "metrics[1]", "metric name 'bad key' must be 1..64 characters"),
        (["loss", "loss"], "metrics[1]", "metric name 'loss' is declared twice"),
        ([f"m{i}" for i in range(41)], "metrics", "Tuple should have at most 40 items"),
    ],
)
def test_a_bad_metric_name_names_its_position(metrics, field, message):
    detail = _only_detail(_invalid(metrics=metrics))
    assert detail["field"] == field
    assert detail["message"].startswith(message)
