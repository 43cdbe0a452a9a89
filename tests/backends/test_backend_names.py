"""No backend name is written outside its own module and the registry; an unregistered name is accepted nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chalicelib import backends
from tests.factories import ROOT

# Where names are meant to be: the registry, and each backend's own module (its descriptor and its code).
HOMES = (
    "chalicelib/backends/__init__.py",
    "chalicelib/backends/aws/",
    "chalicelib/backends/gcp/",
    "chalicelib/backends/local/",
    "chalicelib/backends/kubernetes/",
    # The endpoint backends' own registry and modules (ENDPOINT_REGISTRY, its spec's choices and auto's
    # order): endpoint backend names, some equal to the training backends that enable them.
    "chalicelib/endpoints/",
)
# Where a string equal to a backend name is genuinely other data. Each entry: (path, text on the line, why).
ALLOWED = (
    # A stage, not a backend: the local stack's stage is called "local" too.
    ("chalicelib/config.py", 'values["stage"] == "local"', "stage name"),
    # The price catalog's keys are providers' price lists (EC2, SageMaker training, GCE, Vertex) and the
    # local machine's configured rate; several backends share one list (ecs and aws-batch run on EC2 prices).
    ("chalicelib/pricing/", "", "price list names"),
)
# A name no backend has (yet): nothing may accept it.
FUTURE = ("azureml",)


def _sources() -> list[Path]:
    files = [ROOT / "app.py", *(ROOT / "chalicelib").rglob("*.py"), *(ROOT / "gcp_functions").rglob("*.py")]
    return [f for f in files if not str(f.relative_to(ROOT)).startswith(HOMES)]


def _literal(names) -> re.Pattern[str]:
    """A backend name as a whole quoted string (so "local" matches, but a "local_state_dir" does not)."""
    return re.compile("[\"'](" + "|".join(re.escape(n) for n in names) + ")[\"']")


def _allowed(path: str, line: str) -> bool:
    return any(path.startswith(where) and text in line for where, text, _ in ALLOWED)


def test_no_backend_name_is_a_literal_outside_its_module_and_the_registry():
    names = sorted({*backends.names(), *FUTURE}, key=len, reverse=True)
    literal = _literal(names)
    found = []
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if literal.search(line) and not _allowed(rel, line):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "backend names belong in their module's descriptor or the registry:\n" + "\n".join(found)


def test_the_grep_would_catch_a_name_outside_its_home(tmp_path):
    assert _literal(backends.names()).search('if job.backend == "ec2":')
    assert not _allowed("chalicelib/planner.py", 'if job.backend == "ec2":')


def test_every_registered_backend_has_a_descriptor_of_its_own_name():
    for name in backends.names():
        found = backends.descriptor(name)
        assert found.name == name
        assert found.display_name and found.role and isinstance(found.cloud, backends.Cloud)


@pytest.mark.parametrize("name", FUTURE)
def test_a_future_backend_is_accepted_nowhere(name, tmp_path):
    from chalicelib.errors import ConfigError, ValidationError
    from chalicelib.jobs.spec import parse_spec
    from tests.factories import make_settings

    with pytest.raises(ValidationError) as info:
        parse_spec({"name": "x", "command": ["true"], "image": "busybox", "backend": name})
    assert info.value.details[0]["field"] == "backend"
    assert "'sagemaker'" in info.value.details[0]["message"]
    with pytest.raises(ConfigError, match="unknown backends"):
        make_settings(tmp_path, JOBPLANE_BACKENDS=name)
    with pytest.raises(ConfigError, match="JOBPLANE_CAPACITY_LIMITS"):
        make_settings(tmp_path, JOBPLANE_CAPACITY_LIMITS=f"{name}:*=2")
    with pytest.raises(ValidationError) as info:
        parse_spec({"name": "x", "command": ["true"], "image": "busybox", "fallback": [name]})
    assert info.value.details[0]["field"] == "fallback[0]"


def test_the_checked_in_event_sources_are_the_descriptors():
    from chalicelib.backends import sources

    assert sources.SOURCES_FILE.read_text() == sources.render(), "run python -m chalicelib.backends.sources"
    assert sources.deployed(backends.Cloud.AWS, backends.Cloud.LOCAL) == [
        *backends.event_sources(backends.Cloud.AWS),
        *backends.event_sources(backends.Cloud.LOCAL),
    ]


def test_the_eventbridge_pattern_covers_the_aws_and_local_sources():
    import app
    from chalicelib.backends.event_pattern import pattern_from_env

    (config,) = [e for e in app.app.event_sources if getattr(e, "name", "") == "on_job_state_change"]
    assert config.event_pattern == pattern_from_env()
    sources = [branch["source"][0] for branch in config.event_pattern["$or"]]
    assert list(dict.fromkeys(sources)) == backends.event_sources(backends.Cloud.AWS, backends.Cloud.LOCAL)
