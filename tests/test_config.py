"""Settings: declared once, read from and written back to the environment without loss."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys

import pytest

from chalicelib import config
from chalicelib.config import Settings
from chalicelib.errors import ConfigError
from tests.factories import ROOT

FIELDS = dataclasses.fields(Settings)
DEFAULTS = Settings.from_env({})


def _var(f: dataclasses.Field) -> config.Var:
    return f.metadata[config._VAR]


def _other_choice(kind: config.Choice, default: str) -> str:
    return next(word for word in kind.valid if word != default)


def _limits_example(kind, default):
    first, second = config.backend_names()[:2]
    return ((f"{first}:g5", 3), (f"{second}:*", 0))


# One way to build a value other than the default for each kind; a new kind must add its own here.
EXAMPLES = {
    config.Text: lambda kind, default, name: f"{name}-example",
    config.Url: lambda kind, default, name: f"http://127.0.0.1:9/{name}",
    config.Integer: lambda kind, default, name: max(default or 0, kind.minimum) + 7,
    config.Number: lambda kind, default, name: (kind.minimum + kind.maximum) / 2 + 0.25,
    config.Choice: lambda kind, default, name: _other_choice(kind, default),
    config.Names: lambda kind, default, name: ("first-item", "second-item"),
    config.Backends: lambda kind, default, name: tuple(reversed(config.backend_names())),
    config.Limits: lambda kind, default, name: _limits_example(kind, default),
    config.Clusters: lambda kind, default, name: kind.parse(name, '[{"name": "lab", "local_queue": "team-a"}]'),
}
# Values the cross-field checks constrain, which no per-kind rule can know.
CONSISTENT = {
    "gcp_status_uri": "gs://example-bucket/status",
    "default_backend": tuple(reversed(config.backend_names()))[1],
}


def every_field_changed() -> Settings:
    values = {}
    for f in FIELDS:
        kind = _var(f).kind
        assert type(kind) in EXAMPLES, f"{f.name}: add an example value for {type(kind).__name__}"
        values[f.name] = EXAMPLES[type(kind)](kind, getattr(DEFAULTS, f.name), f.name)
    assert set(CONSISTENT) <= set(values)
    return Settings(**{**values, **CONSISTENT})


def test_every_field_survives_to_env_and_back():
    changed = every_field_changed()
    same_as_default = [f.name for f in FIELDS if getattr(changed, f.name) == getattr(DEFAULTS, f.name)]
    assert same_as_default == []
    assert Settings.from_env(changed.to_env()) == changed


def test_the_defaults_survive_to_env_and_back():
    assert Settings.from_env(DEFAULTS.to_env()) == DEFAULTS
    local = Settings.from_env({"JOBPLANE_STAGE": "local"})
    assert Settings.from_env(local.to_env()) == local


def test_every_field_has_its_own_variable():
    names = [_var(f).name for f in FIELDS]
    assert len(names) == len(set(names))


def test_a_missing_required_variable_is_named():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Needs:
        stage: str = config.setting("TOY_STAGE", "dev")
        token: str = config.setting("TOY_TOKEN")

    for env in ({}, {"TOY_TOKEN": ""}, {"TOY_TOKEN": "  "}):
        with pytest.raises(ConfigError, match="TOY_TOKEN is required"):
            config.read_env(Needs, env)
    assert config.read_env(Needs, {"TOY_TOKEN": "t"}).token == "t"


# What each kind refuses, and a word of what it would take instead.
BAD_VALUES = {
    config.Url: [("localhost:8000", "http:// or https://"), ("ftp://host/", "http:// or https://")],
    config.Integer: [("many", "an integer"), ("1.5", "an integer"), ("{below}", "at least {minimum}")],
    config.Number: [
        ("lots", "a number"),
        ("nan", "from {minimum:g} to {maximum:g}"),
        ("-1", "from {minimum:g} to {maximum:g}"),
        ("{above:g}", "to {maximum:g}"),
    ],
    config.Choice: [("carrier-pigeon", "one of {valid}")],
    config.Backends: [("nope", "valid: {names}"), (",", "at least one backend")],
    config.Limits: [
        ("nope:cpu=1", "BACKEND:FAMILY=N"),
        ("{first}=4", "BACKEND:FAMILY=N"),
        ("{first}:g5=x", "an integer"),
        ("{first}:g5=-1", "at least 0"),
    ],
    config.Clusters: [("[", "a JSON list"), ('[{{"name": "a", "kind": "aks"}}]', "kind must be one of eks")],
}
# Kinds that take any text: nothing to refuse.
ANY_TEXT = {config.Text, config.Names}


def bad_cases():
    for f in FIELDS:
        var = _var(f)
        kind = var.kind
        assert type(kind) in BAD_VALUES or type(kind) in ANY_TEXT, f"{f.name}: say what {type(kind).__name__} refuses"
        words = {
            "below": getattr(kind, "minimum", 0) - 1,
            "minimum": getattr(kind, "minimum", 0),
            "maximum": getattr(kind, "maximum", 0),
            "above": getattr(kind, "maximum", 0) + 1,
            "valid": ", ".join(getattr(kind, "valid", ())),
            "names": ", ".join(config.backend_names()),
            "first": config.backend_names()[0],
        }
        for raw, valid in BAD_VALUES.get(type(kind), []):
            yield pytest.param(var.name, raw.format(**words), valid.format(**words), id=f"{var.name}={raw}")


@pytest.mark.parametrize(("variable", "raw", "valid"), list(bad_cases()))
def test_every_bad_value_names_its_variable_and_what_is_valid(variable, raw, valid):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: raw})
    assert variable in info.value.message
    assert valid in info.value.message


def test_bad_values_are_checked_for_every_kind_that_refuses_any():
    checked = {case.values[0] for case in bad_cases()}
    refusing = {_var(f).name for f in FIELDS if type(_var(f).kind) not in ANY_TEXT}
    assert checked == refusing
    assert "JOBPLANE_IDLE_GPU_PERCENT" in checked and "JOBPLANE_ECS_LAUNCH_TYPE" in checked


def test_defaults_that_depend_on_other_settings():
    prod = Settings.from_env({"JOBPLANE_STAGE": "prod", "JOBPLANE_TABLE_PREFIX": "jp-prod"})
    assert (prod.jobs_table, prod.devvms_table, prod.slack_table) == ("jp-prod-jobs", "jp-prod-devvms", "jp-prod-slack")
    assert (prod.batch_job_queue, prod.sagemaker_role, prod.slack_async) == (
        "jobplane-prod",
        "jobplane-prod-sagemaker",
        "lambda",
    )
    local = Settings.from_env({"JOBPLANE_STAGE": "local"})
    assert (local.jobs_table, local.slack_async) == ("jobplane-local-jobs", "thread")
    assert Settings.from_env({"JOBPLANE_STAGE": "local", "JOBPLANE_SLACK_ASYNC": "Lambda"}).slack_async == "lambda"
    assert Settings.from_env({"JOBPLANE_BACKENDS": "ec2,local"}).default_backend == "ec2"
    assert Settings.from_env({"JOBPLANE_GCP_REGION": "asia-east1"}).gce_zone == "asia-east1-a"
    assert Settings.from_env({"AWS_DEFAULT_REGION": "eu-west-1"}).region == "eu-west-1"
    assert Settings.from_env({"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "eu-west-1"}).region == "us-west-2"


def test_an_empty_variable_means_the_default():
    settings = Settings.from_env(
        {"JOBPLANE_STAGE": "prod", "JOBPLANE_JOBS_TABLE": "", "JOBPLANE_IDLE_MINUTES": "", "AWS_ENDPOINT_URL": ""}
    )
    assert (settings.jobs_table, settings.idle_minutes, settings.aws_endpoint_url) == ("jobplane-prod-jobs", 30, None)


def test_choices_ignore_case_and_keep_one_spelling():
    settings = Settings.from_env({"JOBPLANE_ECS_LAUNCH_TYPE": "fargate", "JOBPLANE_LOG_LEVEL": "debug"})
    assert (settings.ecs_launch_type, settings.log_level) == ("FARGATE", "DEBUG")


def test_the_default_backend_must_be_enabled_even_through_replace():
    with pytest.raises(ConfigError, match="JOBPLANE_DEFAULT_BACKEND='ec2' is not in JOBPLANE_BACKENDS"):
        Settings.from_env({"JOBPLANE_BACKENDS": "local", "JOBPLANE_DEFAULT_BACKEND": "ec2"})
    with pytest.raises(ConfigError, match="JOBPLANE_GCP_PROJECT must be set"):
        dataclasses.replace(DEFAULTS, enabled_backends=("vertex",), default_backend="vertex")


def test_deploy_constants_follow_the_stage():
    assert config.deploy_constants({"JOBPLANE_STAGE": "prod"}) == {
        "upload_bucket": "jobplane-prod-uploads",
        "jobs_stream_arn": "arn:aws:dynamodb:us-east-1:000000000000:table/jobplane-prod-jobs/stream/latest",
    }
    assert config.deploy_constants({"JOBPLANE_UPLOAD_BUCKET": "mine"})["upload_bucket"] == "mine"


# --- who reads the environment --------------------------------------------------------------------
# Modules of chalicelib that touch os.environ for something other than settings, and why.
ENVIRON_ELSEWHERE = {
    "chalicelib/gcp_auth.py": "writes fresh AWS credentials where the SDKs' default chain finds them",
    "chalicelib/endpoints/vertex_serve.py": "the serving container's own process, set up by Vertex's AIP_*",
    "chalicelib/backends/local/backend.py": "passes the host's PATH, HOME and locale on to a local job's process",
    "chalicelib/backends/local/runner.py": "the job supervisor: its own process, started with the job's environment",
    "chalicelib/endpoints/backends/local.py": "passes the host's PATH on to a local model server's process",
}


def _environ_uses(tree: ast.AST) -> list[ast.AST]:
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                uses.append(node)
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            uses += [node for alias in node.names if alias.name in ("environ", "getenv")]
    return uses


def test_settings_are_the_only_reader_of_the_environment_in_chalicelib():
    readers = set()
    for path in sorted((ROOT / "chalicelib").rglob("*.py")):
        if _environ_uses(ast.parse(path.read_text())):
            readers.add(path.relative_to(ROOT).as_posix())
    assert readers == {"chalicelib/config.py", *ENVIRON_ELSEWHERE}
    tree = ast.parse((ROOT / "chalicelib" / "config.py").read_text())
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    readers_in_config = {fn.name for fn in functions if _environ_uses(fn)}
    assert readers_in_config == {"_environ"}
    assert len(_environ_uses(tree)) == 1


def test_importing_config_stays_light():
    code = (
        "import sys, chalicelib.config; "
        "print(sorted(m for m in ('boto3', 'botocore', 'pydantic', 'pynamodb', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_settings_read_every_backends_facts_without_importing_one_backend():
    """Settings check each enabled backend's requirements from its descriptor, which lives apart from the
    implementation: reading settings costs no backend module (nor botocore, nor Google's clients)."""
    from chalicelib.backends import names

    env = {
        "JOBPLANE_BACKENDS": ",".join(names()),
        "JOBPLANE_GCP_PROJECT": "p",
        "JOBPLANE_GCP_STATUS_URI": "gs://b/status",
    }
    code = (
        "import json, sys\n"
        "from chalicelib.config import Settings\n"
        f"settings = Settings.from_env({env!r})\n"
        "print(json.dumps([list(settings.enabled_backends), sorted(sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    enabled, modules = json.loads(out.stdout)
    assert enabled == list(names())
    backend_modules = [m for m in modules if m.startswith("chalicelib.backends.") and m.count(".") >= 3]
    # the descriptor modules are read, and nothing else under aws/, gcp/, local/
    assert sorted(backend_modules) == [
        "chalicelib.backends.aws.descriptors",
        "chalicelib.backends.gcp.descriptors",
        "chalicelib.backends.kubernetes.descriptors",
        "chalicelib.backends.local.descriptors",
    ]
    # (`google` and `google.cloud` themselves are namespace packages the interpreter's .pth files import)
    sdks = ("boto3", "botocore", "google.api_core", "google.auth", "google.protobuf", "google.cloud.", "kubernetes")
    assert [m for m in modules if m.startswith(sdks)] == []
    assert "chalicelib.backends.base" not in modules


def test_a_descriptor_names_its_implementation_and_the_class_declares_that_descriptor():
    from chalicelib.backends import backend_class, descriptor, names

    for name in names():
        found = descriptor(name)
        cls = backend_class(name)
        assert f"{cls.__module__}:{cls.__qualname__}" == found.implementation
        assert cls.descriptor is found and cls.name == name
