"""The edge validator: a user's JobSpec checked with field-named errors, returned as the typed spec."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from chalicelib.errors import ValidationError
from chalicelib.jobs import spec_types as typed
from chalicelib.jobs.spec_types import default

GPU_TYPES = ("T4", "L4", "A10G", "V100", "A100", "A100-80GB", "H100", "H200", "L40S", "P100", "K80")
GpuType = Literal["T4", "L4", "A10G", "V100", "A100", "A100-80GB", "H100", "H200", "L40S", "P100", "K80"]
RetryOn = Literal["interruption", "capacity"]
# AWS (us-east-1, us-gov-west-1) and Google Cloud (us-central1, europe-west4) region names
REGION_RE = re.compile(r"^[a-z]{2,}(-[a-z]+)*-[a-z]*[0-9]+$")

NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
LABEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
URI_RE = re.compile(r"^(s3|gs)://[a-z0-9][a-z0-9.\-_]{1,221}[a-z0-9](/.*)?$")
# An input's name is its folder under $JOBPLANE_INPUT_DIR (and its SageMaker channel name).
INPUT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_INPUT_PREFIX = "jobplane"
SHELL = "/bin/sh"
# The most nodes any backend's descriptor may declare (each backend states its own max_nodes below this).
MAX_NODES = 1000
MAX_BODY_BYTES = 256 * 1024
PATTERN_HINTS = {
    "name": "must be 1..63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
    "image": "must be a container image reference without spaces",
    "resources.instance_type": "must be a provider instance type such as g5.xlarge or ml.g5.xlarge",
    "resources.tpu": "must be a TPU type such as v5litepod-8",
    "notify.slack_channel": "must be a Slack channel such as #ml-jobs",
}


class FieldError(ValueError):
    """A validator's complaint about one field below the one it runs on (pydantic would name only the latter)."""

    def __init__(self, path: str | int | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path if isinstance(path, tuple) else (path,)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Resources(_Strict):
    gpus: int = Field(default(typed.Resources, "gpus"), ge=0, le=16, description="GPUs per job (0..16)")
    gpu_type: GpuType | None = Field(
        default(typed.Resources, "gpu_type"),
        description="GPU model; required when gpus > 0 unless instance_type is set",
    )
    cpus: float = Field(default(typed.Resources, "cpus"), gt=0, le=192)
    memory_gb: float = Field(default(typed.Resources, "memory_gb"), gt=0, le=2048)
    spot: bool = default(typed.Resources, "spot")
    instance_type: str | None = Field(default(typed.Resources, "instance_type"), pattern=r"^[a-z0-9][a-z0-9.\-]{1,62}$")
    tpu: str | None = Field(
        default(typed.Resources, "tpu"),
        pattern=r"^v[0-9][a-z0-9-]*(-[0-9]+)?$",
        description="TPU type, e.g. v5litepod-8",
    )
    cluster: str | None = Field(
        default(typed.Resources, "cluster"),
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="kubernetes: the name of one of the deployment's clusters (JOBPLANE_K8S_CLUSTERS); else the first",
    )
    nodes: int = Field(
        default(typed.Resources, "nodes"),
        ge=1,
        le=MAX_NODES,
        description=(
            "machines the job runs on together (gpus, cpus and memory_gb are per node); each node sees "
            "JOBPLANE_NUM_NODES, JOBPLANE_NODE_RANK, JOBPLANE_MASTER_ADDR, JOBPLANE_MASTER_PORT, JOBPLANE_GPUS_PER_NODE"
        ),
    )

    @model_validator(mode="after")
    def _gpu_consistency(self) -> Resources:
        if self.gpus > 0 and self.gpu_type is None and self.instance_type is None:
            raise FieldError(
                "gpu_type",
                "gpu_type (one of " + ", ".join(GPU_TYPES) + ") or instance_type is required when gpus > 0",
            )
        if self.gpus == 0 and self.gpu_type is not None:
            raise FieldError("gpus", "gpu_type is set but gpus is 0; set gpus to 1 or more, or remove gpu_type")
        if self.tpu is not None and self.gpus > 0:
            raise FieldError("tpu", "a job asks for either tpu or gpus, not both")
        return self


class Retries(_Strict):
    max_attempts: int = Field(default(typed.Retries, "max_attempts"), ge=1, le=10)
    on: tuple[RetryOn, ...] = default(typed.Retries, "on")
    fatal_exit_codes: tuple[int, ...] = Field(
        default(typed.Retries, "fatal_exit_codes"),
        max_length=32,
        description="exit codes that end the job at once, with no retry (kubernetes: a podFailurePolicy FailJob rule)",
    )

    @model_validator(mode="after")
    def _codes(self) -> Retries:
        for code in self.fatal_exit_codes:
            if not 1 <= code <= 255:
                raise FieldError("fatal_exit_codes", f"{code} is not an exit code: 1..255 (0 is success)")
        return self


class Notify(_Strict):
    slack_channel: str | None = Field(
        default(typed.Notify, "slack_channel"), pattern=r"^[#@]?[a-z0-9][a-z0-9._-]{0,79}$"
    )


def _check_uri(value: str | None) -> str | None:
    if value is not None and not URI_RE.match(value):
        raise ValueError(f"{value!r} must be an s3:// or gs:// URI such as s3://bucket/prefix/")
    return value


class JobSpec(_Strict):
    """One training job, as a user writes it (YAML or JSON)."""

    # The schema of the API; parse_spec hands on what it validated as the typed spec (spec_types.JobSpec).

    name: str = Field(..., pattern=NAME_RE, description="[a-z0-9-], 1..63, starts and ends alphanumeric")
    image: str | None = Field(default(typed.JobSpec, "image"), min_length=1, max_length=512, pattern=r"^[^\s]+$")
    command: tuple[str, ...] = Field(
        ...,
        min_length=1,
        max_length=256,
        description=(
            "an argument list, run without a shell (the first item is the program), or a string: "
            "the job's own script, run by /bin/sh -c (stored as that argument list)"
        ),
        json_schema_extra={"prefixItems": [{"type": "string", "minLength": 1, "pattern": r"\S"}]},
    )
    setup: tuple[tuple[str, ...], ...] = Field(
        default(typed.JobSpec, "setup"),
        max_length=32,
        description="run before command in the same folder: a shell script (a string) or a list of argument lists",
    )
    code_uri: str | None = Field(
        default(typed.JobSpec, "code_uri"),
        description="where the CLI uploaded the packed workdir (a .tar.gz); the job runs in its unpacked copy",
    )
    code_sha256: str | None = Field(default(typed.JobSpec, "code_sha256"), pattern=r"^[0-9a-f]{64}$")
    env: dict[str, str] = Field(default_factory=dict, max_length=128)
    resources: Resources = Field(default_factory=Resources)
    # A registry name or auto, checked when validated so a backend registered at run time is accepted.
    backend: str = Field(default(typed.JobSpec, "backend"), description="auto, or a registered backend")
    max_runtime_minutes: int = Field(default(typed.JobSpec, "max_runtime_minutes"), ge=1, le=40320)
    inputs: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="URIs: a list (named 0, 1, ...) or a mapping name: URI; each is $JOBPLANE_INPUT_DIR/<name>",
    )
    outputs: str | None = default(typed.JobSpec, "outputs")
    checkpoint_uri: str | None = default(typed.JobSpec, "checkpoint_uri")
    retries: Retries = Field(default_factory=Retries)
    notify: Notify = Field(default_factory=Notify)
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    priority: int = Field(default(typed.JobSpec, "priority"), ge=-100, le=100)
    # Failover: other backends to try, in order, when a launch finds no capacity or no quota.
    fallback: tuple[str, ...] = Field(default(typed.JobSpec, "fallback"), max_length=8)
    # How long a job may wait in QUEUED for capacity once every candidate refused (0: fail at once).
    capacity_wait_minutes: int = Field(default(typed.JobSpec, "capacity_wait_minutes"), ge=0, le=10080)
    # More candidates: the regions and GPU types the job may run in, in order (the planner then orders by price).
    regions: tuple[str, ...] = Field(default(typed.JobSpec, "regions"), max_length=8)
    gpu_types: tuple[GpuType, ...] = Field(default(typed.JobSpec, "gpu_types"), max_length=8)
    metrics: tuple[str, ...] = Field(
        default(typed.JobSpec, "metrics"),
        max_length=40,
        description="metric names the job reports (JOBPLANE_METRICS keys), declared for SageMaker's console",
    )
    max_cost_usd: float | None = Field(
        default(typed.JobSpec, "max_cost_usd"),
        gt=0,
        le=1_000_000,
        description="USD: refused at submit if the cheapest candidate costs more at max_runtime_minutes; "
        "stopped (failure_kind budget) when its cost reaches it",
    )
    max_price_per_hour: float | None = Field(
        default(typed.JobSpec, "max_price_per_hour"),
        gt=0,
        le=10_000,
        description="USD per hour: only candidates the price catalog prices at or under it, cheapest first",
    )

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        valid = backend_choices()
        if value not in valid:
            raise ValueError(f"Input should be {_words([repr(v) for v in valid], 'or')}")
        return value

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        valid = backend_choices()
        for i, name in enumerate(value):
            if name not in valid:
                raise FieldError(i, f"Input should be {_words([repr(v) for v in valid], 'or')}")
        return value

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, name in enumerate(value):
            if not REGION_RE.match(name):
                raise FieldError(i, f"{name!r} is not a region name (like us-east-1 or us-central1)")
        if len(set(value)) != len(value):
            raise FieldError(len(value) - 1, "each region is listed once")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from chalicelib.jobs.metrics import KEY_RE

        for i, name in enumerate(value):
            if not KEY_RE.match(name):
                raise FieldError(i, f"metric name {name!r} must be 1..64 characters of A-Z, a-z, 0-9 and _ . : / -")
            if name in value[:i]:
                raise FieldError(i, f"metric name {name!r} is declared twice")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, arg in enumerate(value):
            if "\x00" in arg:
                raise FieldError(i, "arguments may not contain NUL bytes")
            if len(arg) > 4096:
                raise FieldError(i, "each argument is at most 4096 characters")
        if not value[0].strip():
            raise FieldError(0, "the first argument (the program) may not be empty")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not ENV_NAME_RE.match(key):
                raise FieldError(key, f"variable name {key!r} must match [A-Za-z_][A-Za-z0-9_]*")
            if key.startswith("JOBPLANE_") or key.startswith("AWS_"):
                raise FieldError(key, f"variable name {key!r} is reserved (JOBPLANE_* and AWS_* are set by jobplane)")
            if "\x00" in val or len(val) > 32768:
                raise FieldError(key, f"value of {key} must be under 32 KiB with no NUL bytes")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not LABEL_RE.match(key):
                raise FieldError(key, f"label key {key!r} must match [a-z][a-z0-9_-]{{0,62}}")
            if not re.match(r"^[a-z0-9_-]{0,63}$", val):
                raise FieldError(key, f"label value {val!r} must match [a-z0-9_-]{{0,63}}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _edge_forms(cls, data: Any) -> Any:
        """The forms a user may write, turned into the one form stored: a string command or setup is a
        /bin/sh -c argument list, a list of inputs is named by position."""
        if not isinstance(data, dict):
            return data
        if "workdir" in data:
            raise FieldError(
                "workdir",
                "workdir is a folder on your machine: `jobplane submit` packs and uploads it and sends code_uri; "
                "the API takes code_uri (an s3:// or gs:// URI of the packed .tar.gz)",
            )
        data = dict(data)
        command = data.get("command")
        if isinstance(command, str):
            if not command.strip():
                raise FieldError("command", "a command string is a shell script and may not be empty")
            data["command"] = [SHELL, "-c", command]
        setup = data.get("setup")
        if isinstance(setup, str):
            data["setup"] = [[SHELL, "-c", setup]] if setup.strip() else []
        elif setup is None and "setup" in data:
            data["setup"] = []
        inputs = data.get("inputs")
        if isinstance(inputs, list | tuple):
            data["inputs"] = {str(i): uri for i, uri in enumerate(inputs)}
        return data

    @field_validator("setup")
    @classmethod
    def _setup(cls, value: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        for i, step in enumerate(value):
            if not step or not step[0].strip():
                raise FieldError(i, "each setup step is a non-empty argument list whose first item is the program")
            for arg in step:
                if "\x00" in arg or len(arg) > 65536:
                    raise FieldError(i, "setup arguments are at most 64 KiB with no NUL bytes")
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, str]) -> dict[str, str]:
        for name, uri in value.items():
            if not INPUT_NAME_RE.match(name):
                raise FieldError(
                    name, f"input name {name!r} must be 1..64 characters of A-Z a-z 0-9 . _ -, starting alphanumeric"
                )
            if name.lower().startswith(RESERVED_INPUT_PREFIX):
                # jobplane's own channels and folders (SageMaker's code channel is jobplane-code) use these names.
                raise FieldError(name, f"input names starting with {RESERVED_INPUT_PREFIX!r} are reserved for jobplane")
            try:
                _check_uri(uri)
            except ValueError as exc:
                raise FieldError(name, str(exc)) from None
        return value

    @field_validator("code_uri")
    @classmethod
    def _code_uri(cls, value: str | None) -> str | None:
        _check_uri(value)
        if value is not None and not value.endswith(".tar.gz"):
            raise ValueError(f"{value!r} must name a .tar.gz object (what `jobplane submit` uploads)")
        return value

    @field_validator("outputs", "checkpoint_uri")
    @classmethod
    def _uris(cls, value: str | None) -> str | None:
        return _check_uri(value)

    @model_validator(mode="after")
    def _backend_needs(self) -> JobSpec:
        from chalicelib.backends import AUTO, descriptor, descriptors

        if self.image is None and (self.backend == AUTO or descriptor(self.backend).needs_image):
            bare = [d.name for d in descriptors() if not d.needs_image]
            raise FieldError(
                "image",
                f"image is required for backend {self.backend!r} (only {_words(bare)} can run a bare command)",
            )
        if (
            self.resources.tpu is not None
            and self.backend != AUTO
            and "tpu" in descriptor(self.backend).unsupported_features
        ):
            tpu = [d.name for d in descriptors() if "tpu" not in d.unsupported_features]
            raise FieldError(("resources", "tpu"), f"TPU jobs run only on backend {_words(tpu, 'or')} (or auto)")
        if self.resources.nodes > 1 and self.backend != AUTO:
            found = descriptor(self.backend)
            if self.resources.nodes > found.max_nodes:
                raise FieldError(("resources", "nodes"), nodes_refusal(found, self.resources.nodes))
        if (self.code_uri is None) != (self.code_sha256 is None):
            raise FieldError("code_sha256" if self.code_uri else "code_uri", "code_uri and code_sha256 come together")
        if "auto" in self.fallback:
            raise FieldError("fallback", "fallback names concrete backends (auto is what `backend` is for)")
        if self.gpu_types:
            if self.resources.gpus == 0 or self.resources.instance_type is not None:
                raise FieldError("gpu_types", "gpu_types needs resources.gpus of 1 or more and no instance_type")
            if len(set(self.gpu_types)) != len(self.gpu_types):
                raise FieldError("gpu_types", "each GPU type is listed once")
        return self

    def to_typed(self) -> typed.JobSpec:
        return typed.JobSpec.from_dict(self.model_dump(mode="python", exclude_none=False))


def nodes_refusal(found: Any, nodes: int) -> str:
    """Why backend `found` (a BackendDescriptor) cannot run `nodes` nodes, and where such a job can run."""
    from chalicelib.backends import descriptors

    why = found.unsupported_features.get("multi_node") if found.max_nodes == 1 else None
    limit = (
        why or f"backend {found.name!r} runs at most {found.max_nodes} node{'s' if found.max_nodes > 1 else ''} a job"
    )
    able = [d.name for d in descriptors() if d.max_nodes >= nodes]
    where = f"; {nodes} nodes run on backend {_words(able, 'or')}" if able else f"; no backend runs {nodes} nodes"
    return f"{limit}, asked for {nodes}{where}"


def backend_choices() -> tuple[str, ...]:
    """What a spec's `backend` may say: auto or a registered name (read now, not at import)."""
    from chalicelib.backends import AUTO, names

    return (AUTO, *names())


def _words(items: list[str], last: str = "and") -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def _location(loc: tuple[Any, ...]) -> str:
    """("resources", "gpus") -> "resources.gpus"; list positions as ("inputs", 1) -> "inputs[1]"."""
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        elif not str(part).startswith("function-after"):
            text += f".{part}" if text else str(part)
    return text or "(spec)"


def _details(exc: PydanticValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors(include_url=False):
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        loc = tuple(err["loc"])
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, FieldError):
            # A validator named the exact field below its own (an env variable, a list item, gpu_type).
            loc += error.path
        field = _location(loc)
        # A list of inputs is named by position: its items are reported as the list's positions.
        field = re.sub(r"^inputs\.([0-9]+)$", r"inputs[\1]", field)
        if err["type"] == "string_pattern_mismatch" and field in PATTERN_HINTS:
            message = PATTERN_HINTS[field]
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            model = JobSpec
            for part in parent:
                annotation = model.model_fields.get(str(part))
                model = getattr(annotation, "annotation", None) if annotation else None
                if not isinstance(model, type):
                    break
            valid = sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
            message = "unknown field" + (f"; valid fields here: {', '.join(valid)}" if valid else "")
        details.append({"field": field, "message": message, "type": err["type"]})
    return details


def parse_spec(data: Any) -> typed.JobSpec:
    """Validate a decoded JSON/YAML document as a JobSpec or raise ValidationError naming each field."""
    if not isinstance(data, dict):
        raise ValidationError(
            "the job spec must be a mapping (a JSON object or YAML mapping)",
            [{"field": "(spec)", "message": f"got {type(data).__name__}", "type": "model_type"}],
        )
    try:
        model = JobSpec.model_validate(data)
    except PydanticValidationError as exc:
        details = _details(exc)
        first = details[0]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise ValidationError(f"invalid job spec: {first['field']}: {first['message']}{more}", details) from None
    return model.to_typed()


_LOADER: Any = None


def _yaml_loader() -> Any:
    """PyYAML's SafeLoader with YAML 1.2 booleans: only true/false are booleans, so `retries: {on: [...]}`
    keeps its key and `DEBUG: on` in env stays the string "on" (YAML 1.1 reads on/off/yes/no as booleans)."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class SpecLoader(yaml.SafeLoader):
            def construct_mapping(self, node, deep=False):
                # A key written twice is refused (PyYAML keeps the last silently): one of them is a mistake.
                if isinstance(node, yaml.MappingNode):
                    seen: dict[Any, Any] = {}
                    for key_node, _ in node.value:
                        key = self.construct_object(key_node, deep=True)
                        try:
                            first = seen.setdefault(key, key_node)
                        except TypeError:
                            continue  # an unhashable key: construct_mapping's own error names it
                        if first is not key_node:
                            raise yaml.constructor.ConstructorError(
                                "while constructing a mapping",
                                node.start_mark,
                                f"found duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                                key_node.start_mark,
                            )
                return super().construct_mapping(node, deep=deep)

        bool_tag = "tag:yaml.org,2002:bool"
        SpecLoader.yaml_implicit_resolvers = {
            first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }
        SpecLoader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
        _LOADER = SpecLoader
    return _LOADER


def load_spec_text(text: str | bytes, content_type: str | None = None) -> typed.JobSpec:
    """Parse a JSON or YAML document (YAML is a superset; JSON is tried first)."""
    return parse_spec(load_document(text, content_type))


def load_document(text: str | bytes, content_type: str | None = None, what: str = "job spec") -> Any:
    """A request body as JSON or YAML (YAML is a superset; JSON is tried first); a 400 naming the body otherwise."""
    if isinstance(text, bytes):
        if len(text) > MAX_BODY_BYTES:
            raise ValidationError(
                f"the {what} is larger than {MAX_BODY_BYTES} bytes",
                [{"field": "(body)", "message": f"at most {MAX_BODY_BYTES} bytes", "type": "too_long"}],
            )
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError(
                f"the {what} must be UTF-8 text",
                [{"field": "(body)", "message": "not valid UTF-8", "type": "unicode_decode"}],
            ) from None
    if not text.strip():
        raise ValidationError(
            f"the request body is empty; send a {what} as JSON or YAML",
            [{"field": "(body)", "message": "empty", "type": "missing"}],
        )
    try:
        data = json.loads(text)
    except ValueError:
        if content_type and "json" in content_type:
            raise ValidationError(
                "the body is not valid JSON", [{"field": "(body)", "message": "not valid JSON", "type": "json_invalid"}]
            ) from None
        import yaml

        try:
            data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValidationError(
                "the body is neither valid JSON nor valid YAML",
                [{"field": "(body)", "message": f"{where}{problem}", "type": "yaml_invalid"}],
            ) from None
    return data
