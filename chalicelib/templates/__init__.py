"""Checked-in job templates: a JobSpec with ${param} placeholders and the params' defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalicelib.errors import NotFoundError, ValidationError
from chalicelib.jobs.spec import parse_spec
from chalicelib.jobs.spec_types import JobSpec

TEMPLATES_DIR = Path(__file__).resolve().parent
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PARAM_RE = re.compile(r"\$\{([a-z_][a-z0-9_]*)\}")
MAX_VALUE = 256


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    params: dict[str, str]
    document: dict[str, Any]  # the spec as written, placeholders and all: parse_spec validates it once filled


def template_names(directory: Path = TEMPLATES_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml") if NAME_RE.match(p.stem))


def load_template(name: str, directory: Path = TEMPLATES_DIR) -> Template:
    import yaml

    if not NAME_RE.match(name) or not (directory / f"{name}.yaml").is_file():
        known = ", ".join(template_names(directory)) or "none"
        raise NotFoundError(f"no job template {name!r}", [{"field": "template", "message": f"templates: {known}"}])
    data = yaml.safe_load((directory / f"{name}.yaml").read_text()) or {}
    return Template(
        name=name,
        description=str(data.get("description", "")),
        params={str(k): str(v) for k, v in (data.get("params") or {}).items()},
        document=data.get("spec") or {},
    )


def _fill(value: Any, params: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, params) for v in value]
    if not isinstance(value, str):
        return value
    # Values stay strings: the spec's validation turns "2" into 2 where a number belongs (gpus: "${gpus}").
    return PARAM_RE.sub(lambda m: params[m.group(1)], value)


def render(name: str, values: dict[str, str], directory: Path = TEMPLATES_DIR) -> JobSpec:
    """The template's spec with `values` over its defaults; `name` renames the job. ValidationError names
    an unknown parameter or the spec field a value broke."""
    template = load_template(name, directory)
    allowed = {**template.params, "name": str(template.document.get("name", ""))}
    for key, value in values.items():
        if key not in allowed:
            raise ValidationError(
                f"template {name!r} has no parameter {key!r}",
                [{"field": key, "message": f"parameters: {', '.join(sorted(allowed))}"}],
            )
        if len(value) > MAX_VALUE or not value.isprintable():
            raise ValidationError(
                f"the value of {key} is not valid", [{"field": key, "message": f"1..{MAX_VALUE} printable characters"}]
            )
    params = {**template.params, **values}
    missing = sorted({m for m in PARAM_RE.findall(repr(template.document)) if m not in params})
    if missing:
        raise ValidationError(f"template {name!r} uses undeclared parameters: {', '.join(missing)}")
    document = _fill(template.document, params)
    if "name" in values:
        document["name"] = values["name"]
    return parse_spec(document)
