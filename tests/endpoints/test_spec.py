"""The endpoint spec at the edge: JSON or YAML, defaults, and 400s naming the field."""

from __future__ import annotations

import pytest

from chalicelib.endpoints.spec import load_endpoint_text, parse_endpoint_spec, parse_endpoint_update
from chalicelib.errors import ValidationError
from tests.factories import endpoint_body


def test_yaml_and_json_give_the_same_spec_with_the_documented_defaults():
    text = "name: clf\nmodel: {from_job: " + "a" * 32 + "}\n"
    spec = load_endpoint_text(text)
    assert spec == load_endpoint_text('{"name": "clf", "model": {"from_job": "' + "a" * 32 + '"}}')
    assert (spec.handler, spec.backend, spec.min_replicas, spec.max_replicas, spec.idle_minutes) == (
        "serve.py",
        "auto",
        1,
        1,
        60,
    )
    assert spec.resources.gpus == 0 and spec.labels == {} and spec.notify.slack_channel is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (endpoint_body(model={}), "model"),
        (endpoint_body(model={"from_job": "not-an-id"}), "model.from_job"),
        (endpoint_body(resources={"gpus": 9}), "resources.gpus"),
        (endpoint_body(resources={"gpu_type": "B300"}), "resources.gpu_type"),
        (endpoint_body(resources={"cpus": 2}), "resources.cpus"),
        (endpoint_body(name="Bad_Name"), "name"),
        (endpoint_body(handler="serve.txt"), "handler"),
        (endpoint_body(code_uri="http://x/code.tar.gz"), "code_uri"),
        (endpoint_body(idle_minutes=20000), "idle_minutes"),
    ],
)
def test_each_bad_field_is_named(body, field):
    with pytest.raises(ValidationError) as info:
        parse_endpoint_spec(body)
    assert info.value.details[0]["field"] == field, info.value.details
    assert info.value.message.startswith(f"invalid endpoint spec: {field}: ")


def test_an_empty_or_non_mapping_body_is_refused_naming_the_body():
    for text in ("", "- a\n- b\n", "{not json"):
        with pytest.raises(ValidationError) as info:
            load_endpoint_text(text)
        assert info.value.details[0]["field"] == "(body)"


def test_an_update_needs_something_to_change():
    with pytest.raises(ValidationError) as info:
        parse_endpoint_update({})
    assert "at least one of model, handler, code_uri, idle_minutes" in info.value.message
    assert parse_endpoint_update({"handler": "v2.py"}).handler == "v2.py"
