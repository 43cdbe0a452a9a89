"""POST /endpoints and PUT /endpoints/{id} bodies: validated at the edge like a job spec (unknown fields refused)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from chalicelib.endpoints import backends as registry
from chalicelib.errors import ValidationError
from chalicelib.jobs.spec import GpuType, load_document

URI_SCHEMES = ("s3://", "gs://", "file://")
HANDLER_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,200}\.py$"


def _no_climb(handler: str) -> str:
    if ".." in handler.split("/"):
        raise ValueError("a relative path to a .py file inside the model or code folder (no ..)")
    return handler


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(_Strict):
    """Exactly one of: the artifacts of a finished training job, or a URI of model files."""

    from_job: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="a SUCCEEDED job's id")
    uri: str | None = Field(None, description="s3://, gs:// or file:// folder of model files")

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith(URI_SCHEMES) or len(value) <= len("s3://")):
            raise ValueError(f"must start with one of {', '.join(URI_SCHEMES)} and name a location")
        return value

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        if (self.from_job is None) == (self.uri is None):
            raise ValueError("give exactly one of from_job (a training job's id) or uri (the model's files)")
        return self


class ResourcesSpec(_Strict):
    instance_type: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.\-]{1,62}$")
    gpus: int = Field(0, ge=0, le=8)
    gpu_type: GpuType | None = None
    memory_gb: float | None = Field(None, gt=0, le=2048)


class NotifySpec(_Strict):
    slack_channel: str | None = Field(None, pattern=r"^#?[a-z0-9_\-]{1,80}$")


class EndpointSpec(_Strict):
    """What an endpoint serves and where; the same file validates JSON and YAML bodies."""

    name: str = Field(..., pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    model: ModelSource
    handler: str = Field(
        "serve.py",
        pattern=HANDLER_PATTERN,
        description="a Python file (relative path) with load(model_dir), predict(model, inputs), "
        "optional preprocess(request) and postprocess(outputs)",
    )
    code_uri: str | None = Field(
        None, description="the packed workdir holding the handler (the CLI packs `workdir` and sends this)"
    )
    image: str | None = Field(None, max_length=512, description="the serving image (Vertex custom container)")
    backend: str = Field(
        registry.AUTO,
        description="an endpoint backend (chalicelib/endpoints/backends ENDPOINT_REGISTRY) or auto",
        json_schema_extra={"enum": [*registry.names(), registry.AUTO]},
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    min_replicas: int = Field(1, ge=0, le=100)
    max_replicas: int = Field(1, ge=1, le=100)
    idle_minutes: int = Field(60, ge=0, le=10080, description="delete after this long without an invocation; 0 never")
    notify: NotifySpec = Field(default_factory=NotifySpec)
    labels: dict[str, str] = Field(default_factory=dict, max_length=50)

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str) -> str:
        return _no_climb(value)

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        choices = [*registry.names(), registry.AUTO]
        if value not in choices:
            quoted = [repr(c) for c in choices]
            raise ValueError(f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}")
        return value

    @field_validator("code_uri")
    @classmethod
    def _code_uri(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(URI_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(URI_SCHEMES)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _workdir(cls, data: Any) -> Any:
        if isinstance(data, dict) and "workdir" in data:
            raise ValueError(
                "workdir is a folder on your machine: `jobplane endpoint deploy` packs and uploads it and sends "
                "code_uri; the API takes code_uri"
            )
        return data

    @model_validator(mode="after")
    def _replicas(self) -> EndpointSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be at least min_replicas ({self.min_replicas})")
        return self


class EndpointUpdate(_Strict):
    """PUT /endpoints/{id}: a new model and/or handler (and code); what is not given stays."""

    model: ModelSource | None = None
    handler: str | None = Field(None, pattern=HANDLER_PATTERN)
    code_uri: str | None = None
    idle_minutes: int | None = Field(None, ge=0, le=10080)

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str | None) -> str | None:
        return None if value is None else _no_climb(value)

    @model_validator(mode="after")
    def _something(self) -> EndpointUpdate:
        if self.model is None and self.handler is None and self.code_uri is None and self.idle_minutes is None:
            raise ValueError("give at least one of model, handler, code_uri, idle_minutes")
        return self


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(body)"


def _details(exc: PydanticValidationError, model: type[BaseModel]) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors(include_url=False):
        message = err["msg"].removeprefix("Value error, ")
        loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
        if err["type"] == "extra_forbidden":
            parent: Any = model
            for part in loc[:-1]:
                info = parent.model_fields.get(str(part)) if isinstance(parent, type) else None
                parent = getattr(info, "annotation", None)
            valid = sorted(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
            message = "unknown field" + (f"; valid fields here: {', '.join(valid)}" if valid else "")
        if err["type"] == "string_pattern_mismatch" and loc and loc[-1] == "handler":
            message = "a relative path to a .py file (letters, digits, _ . / -; no ..)"
        field = _field(loc)
        if field == "(body)" and "workdir" in message:
            field = "workdir"
        details.append({"field": field, "message": message, "type": err["type"]})
    return details


def _validate(model: type[BaseModel], data: Any, what: str):
    if not isinstance(data, dict):
        raise ValidationError(f"the {what} must be a mapping", [{"field": "(body)", "message": "an object"}])
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        details = _details(exc, model)
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise ValidationError(
            f"invalid {what}: {details[0]['field']}: {details[0]['message']}{more}", details
        ) from None


def parse_endpoint_spec(data: Any) -> EndpointSpec:
    return _validate(EndpointSpec, data, "endpoint spec")


def load_endpoint_text(text: str | bytes, content_type: str | None = None) -> EndpointSpec:
    """POST /endpoints: a JSON or YAML body."""
    return parse_endpoint_spec(load_document(text, content_type, "endpoint spec"))


def parse_endpoint_update(data: Any) -> EndpointUpdate:
    return _validate(EndpointUpdate, data, "endpoint update")
