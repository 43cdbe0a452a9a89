"""GET /openapi.json: the API description, generated from the models the code validates with."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.endpoints.backends.base import EndpointStatus
from chalicelib.jobs.model import EventSource, FailureKind, JobStatus
from chalicelib.jobs.spec import JobSpec

REF = "#/components/schemas/{model}"


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(_Out):
    status: Literal["ok"]


class AttemptCost(_Out):
    """One attempt's cost: what was priced, the catalog rate, the hours billed and the figure."""

    attempt: int = Field(ge=1)
    backend: str
    region: str | None
    priced: str = Field(description="what the rate is for, e.g. 'ec2 g5.xlarge spot in us-east-1'")
    usd_per_hour: float | None = Field(description="null when the catalog has no price (see reason)")
    prices_of: str | None = Field(description="the date the catalog read the price (YYYY-MM-DD)")
    hours: float = Field(ge=0, description="billed hours: BillableTimeInSeconds where reported, else run time")
    usd: float | None = Field(description="null: unknown, never $0 for a missing price")
    reason: str = Field(description="why the figure is unknown, or what it was computed from")
    final: bool = Field(description="the attempt ended: the figure no longer moves")
    instance_type: str | None
    count: int | None
    spot: bool | None
    billable_seconds: float | None


class JobCost(_Out):
    """The job's cost over every attempt, with the date of the prices it used."""

    usd: float | None = Field(description="null when any attempt's price is unknown (see reason)")
    prices_of: str | None = Field(description="the oldest price date among the attempts (YYYY-MM-DD)")
    reason: str | None
    text: str = Field(description="'$1.23 (prices of 2026-01-21)', or 'unknown (why)'")
    final: bool = Field(description="every attempt ended")
    attempts: list[AttemptCost]


class Job(_Out):
    """A job as the API returns it (times are ISO 8601 UTC)."""

    job_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    name: str
    owner: str
    status: JobStatus
    backend: str
    native_id: str | None = Field(description="the provider's id or ARN of the current attempt; null until it gave one")
    native_name: str | None = Field(
        pattern=r"^jp-[0-9a-f]{32}(-a[0-9]+)?$",
        description="jobplane's name for the current attempt at the provider; null until it is dispatched",
    )
    spec: JobSpec
    attempt: int = Field(ge=1)
    created_at: str
    started_at: str | None
    finished_at: str | None
    failure_kind: FailureKind | None
    failure_reason: str | None
    cost_estimate_usd: float | None
    planner_reason: str | None
    status_reason: str | None
    candidates: list[str] = Field(
        description="where the job may run, in failover order: backend[@region][+gpu_type] (the current one first)"
    )
    region: str | None = Field(description="the region the current attempt runs in; null: the deployment's own")
    first_refusal_at: str | None = Field(
        description="when a provider first refused the job capacity or quota; capacity_wait_minutes counts from it"
    )
    metrics: dict[str, float] = Field(description="the latest value of each key the job reported (JOBPLANE_METRICS)")
    artifacts_uri: str | None = Field(
        description="where $JOBPLANE_OUTPUT_DIR is uploaded: <outputs or the stage's bucket>/<job_id>/"
    )
    cost: JobCost = Field(description="live while it runs (reconcile updates it), final when it ends")


class JobMetrics(_Out):
    """GET /jobs/{id}/metrics: the latest values and each key's series of [seq, value] points."""

    job_id: str
    metrics: dict[str, float]
    series: dict[str, list[tuple[int, float]]] = Field(
        description="per key, at most 1000 [seq, value] points evenly spaced over the run; seq numbers the "
        "job's JOBPLANE_METRICS lines from 1"
    )
    lines: int = Field(ge=0, description="JOBPLANE_METRICS lines read so far")
    malformed_lines: int = Field(ge=0, description="lines with the marker but no JSON object of numbers (ignored)")
    caught_up: bool = Field(description="false when this request's read budget ran out before the output's end")


class Tail(_Out):
    lines: list[str] | None = Field(description="the last lines of the output; null when out of reach")
    note: str | None


class CodeRequest(BaseModel):
    """POST /code: the packed code (a .tar.gz) the caller is about to upload."""

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the .tar.gz, lowercase hex")
    size: int = Field(ge=1, description="its length in bytes (at most JOBPLANE_CODE_MAX_MB)")
    backend: str | None = Field(
        default=None,
        description="the backend the job will run on: vertex and gce upload to Cloud Storage, the others to S3",
    )


class Upload(_Out):
    method: Literal["PUT"]
    url: str
    headers: dict[str, str] = Field(
        description="send exactly these headers: S3 checks the length and the digest, Cloud Storage the length"
    )
    expires_at: str


class CodeUpload(_Out):
    code_uri: str = Field(description="put this in the spec's code_uri (with code_sha256)")
    exists: bool = Field(description="true: the same code is there already and nothing needs uploading")
    upload: Upload | None


class Artifact(_Out):
    key: str = Field(description="the file's path below artifacts_uri")
    size: int
    last_modified: str | None
    url: str = Field(description="a presigned download URL (valid JOBPLANE_PRESIGN_SECONDS)")


class ArtifactList(_Out):
    artifacts_uri: str
    artifacts: list[Artifact]
    next_cursor: str | None


class JobList(_Out):
    jobs: list[Job]
    next_token: str | None
    as_of: str = Field(
        description="pass it back as updated_since to read only the jobs written since (it is 30 s before this "
        "read, so a write in flight is not missed: a job may come twice)"
    )


class Event(_Out):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    at: str
    from_: JobStatus | None = Field(alias="from")
    to: JobStatus
    reason: str
    source: EventSource
    native_status: str | None
    attempt: int


class EventList(_Out):
    events: list[Event]


class Logs(_Out):
    text: str
    next_offset: int | str = Field(
        description="pass it back as offset: a byte count, or an opaque cursor where the provider pages by token"
    )
    complete: bool
    note: str | None = Field(None, description="why there is no output (yet): never started, not shipped yet")


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str
    type: str | None = None


class ErrorBody(_Out):
    code: str
    message: str
    details: list[ErrorDetail]


class Error(_Out):
    error: ErrorBody


class Instance(_Out):
    """A dev VM."""

    vm_id: str
    owner: str
    name: str
    status: Literal["PENDING", "RUNNING", "STOPPING", "STOPPED", "TERMINATED"]
    backend: str
    instance_type: str | None
    native_id: str | None
    gpu_type: str
    gpus: int
    spot: bool
    idle_minutes: int
    max_hours: float
    created_at: str
    started_at: str | None
    stopped_at: str | None
    stop_reason: str | None


class InstanceList(_Out):
    instances: list[Instance]


class Endpoint(_Out):
    endpoint_id: str
    name: str
    owner: str
    status: EndpointStatus
    backend: str
    native_id: str | None
    model_uri: str
    handler: str
    code_uri: str | None
    version: int
    url: str | None = Field(description="the model server's address (local) or the provider's invocation URL")
    created_at: str
    updated_at: str | None
    in_service_at: str | None
    deleted_at: str | None
    last_invoked_at: str | None
    invocations: int
    idle_minutes: int = Field(description="deleted after this long without an invocation; 0 never")
    resources: dict[str, Any]
    min_replicas: int
    max_replicas: int
    labels: dict[str, str]
    cost_per_hour_usd: float | None = Field(description="null when the catalog has no price for this backend")
    cost_estimate_usd: float | None
    cost_unknown_reason: str | None = Field(description="why there is no hourly price (never shown as $0)")
    failure_reason: str | None
    serving_error: str | None = Field(
        description="why attaching autoscaling to an endpoint in service failed; reconcile tries again"
    )
    plan_reason: str | None = Field(description="why this backend (backend: auto records its reasoning)")
    deleted_by: str | None
    deleted_reason: str | None


class EndpointList(_Out):
    endpoints: list[Endpoint]


class EndpointEvent(_Out):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    at: str
    from_: EndpointStatus | None = Field(alias="from")
    to: EndpointStatus
    reason: str
    source: EventSource
    native_status: str | None


class EndpointEventList(_Out):
    events: list[EndpointEvent]


class Prediction(BaseModel):
    """Whatever the handler's postprocess (or predict) returned, as JSON."""

    model_config = ConfigDict(extra="allow")


class Whoami(_Out):
    """The caller as its token names it."""

    user: str
    admin: bool


class Token(_Out):
    """An API token as listed: its id (the first characters of its stored hash), never the token."""

    token_id: str
    user: str
    admin: bool
    created_at: str


class TokenList(_Out):
    tokens: list[Token]


class BudgetRequest(BaseModel):
    """POST /budgets: a monthly budget for one owner or one label (admin only); the same id again replaces it."""

    model_config = ConfigDict(extra="forbid")

    owner: str | None = Field(None, description="the user whose jobs it covers (give owner or label)")
    label: str | None = Field(None, description="key=value of a job label it covers, e.g. team=vision")
    limit_usd: float = Field(gt=0, le=10_000_000, description="the monthly limit in USD")
    on_exceed: Literal["refuse", "hold"] = Field(
        "refuse", description="a submission that would pass the limit: refused (400) or held in QUEUED"
    )
    hard: bool = Field(False, description="at 100 %, reconcile stops the running jobs it covers")


class Budget(_Out):
    budget_id: str = Field(description="owner:<user> or label:<key>=<value>")
    scope: Literal["owner", "label"]
    subject: str
    limit_usd: float
    on_exceed: Literal["refuse", "hold"]
    hard: bool
    updated_at: str
    updated_by: str


class BudgetSpend(Budget):
    month: str = Field(description="YYYY-MM (UTC); a job counts in the month it was submitted")
    spent_usd: float
    percent: float
    jobs: int
    unpriced_jobs: int = Field(description="jobs with no price, counted as $0")


class BudgetList(_Out):
    budgets: list[BudgetSpend]


class CostRow(_Out):
    job_id: str
    name: str
    owner: str
    backend: str
    labels: dict[str, str]
    launched: str
    duration_seconds: float
    resources: str
    status: JobStatus
    hourly_price_usd: float | None
    cost_usd: float | None = Field(description="null: no price for what it ran on")


class CostTotal(_Out):
    jobs: int
    cost_usd: float
    unpriced_jobs: int
    hours: float


class CostGroup(CostTotal):
    key: str


class CostReport(_Out):
    since: str
    until: str
    scope: str
    total: CostTotal
    rows: list[CostRow] = Field(description="newest first, at most 1,000 (the totals cover every job)")
    rows_truncated: bool
    by: Literal["owner", "backend", "label", "month"] | None = None
    groups: list[CostGroup] | None = None


def _devvm_spec():
    from chalicelib.devvms import DevVmSpec

    return DevVmSpec


MODELS: list[type[BaseModel]] = [
    Health,
    Job,
    JobList,
    EventList,
    Logs,
    JobMetrics,
    Tail,
    Error,
    JobSpec,
    Instance,
    InstanceList,
    Token,
    TokenList,
    Whoami,
    CodeRequest,
    CodeUpload,
    ArtifactList,
    Endpoint,
    EndpointList,
    EndpointEventList,
    Prediction,
    BudgetRequest,
    BudgetList,
    Budget,
    CostReport,
]


def _json(model: type[BaseModel] | str) -> dict[str, Any]:
    name = model if isinstance(model, str) else model.__name__
    return {"application/json": {"schema": {"$ref": REF.format(model=name)}}}


def _responses(ok: dict[int, tuple[str, type[BaseModel]]], errors: dict[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, (description, model) in ok.items():
        out[str(status)] = {"description": description, "content": _json(model)}
    for status, description in errors.items():
        out[str(status)] = {"description": description, "content": _json(Error)}
    return out


JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the job's id (32 hex characters)",
}
AUTH_ERRORS = {401: "no token, or a token that matches no user"}


def _backend_enums(components: dict[str, Any]) -> None:
    """The spec's backend names come from the registry (validators check them), so the document's enums do too."""
    from chalicelib.jobs.spec import backend_choices

    choices = list(backend_choices())
    properties = components["JobSpec"]["properties"]
    properties["backend"]["enum"] = choices
    properties["fallback"]["items"]["enum"] = [c for c in choices if c != choices[0]]
    from chalicelib.devvms import devvm_backends

    for name, schema in components.items():
        if name.startswith("DevVm") and "backend" in schema.get("properties", {}):
            # null (the default) is the deployment's first enabled dev VM backend
            schema["properties"]["backend"]["enum"] = [*devvm_backends(), None]


def build() -> dict[str, Any]:
    from pydantic.json_schema import models_json_schema

    from chalicelib.endpoints.spec import EndpointSpec, EndpointUpdate

    models = [*MODELS, _devvm_spec(), EndpointSpec, EndpointUpdate]
    _, schemas = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    components = schemas.get("$defs", {})
    _backend_enums(components)
    spec_body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": REF.format(model="JobSpec")}},
            "application/x-yaml": {"schema": {"type": "string", "description": "the same JobSpec as YAML"}},
        },
    }
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "operationId": "health",
                "security": [],
                "summary": "liveness",
                "responses": _responses({200: ("up", Health)}, {}),
            }
        },
        "/": {
            "get": {
                "operationId": "dashboard",
                "security": [],
                "summary": "the web dashboard (static page)",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "security": [],
                "summary": "this description",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
            }
        },
        "/jobs": {
            "post": {
                "operationId": "submit_job",
                "summary": "submit a job (JSON or YAML JobSpec)",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "the same key again returns the same job (200)",
                    },
                    {
                        "name": "dry_run",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "boolean"},
                        "description": "true: nothing stored or launched; 200 with the backend, planner_reason, "
                        "candidates and the provider request launch would send",
                    },
                ],
                "requestBody": spec_body,
                "responses": _responses(
                    {201: ("created and dispatched", Job), 200: ("replay of an Idempotency-Key", Job)},
                    {
                        400: "invalid spec: details name each field",
                        **AUTH_ERRORS,
                        409: "Idempotency-Key reused with a different spec",
                    },
                ),
            },
            "get": {
                "operationId": "list_jobs",
                "summary": "the caller's jobs (an admin's: everyone's), newest first",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": [s.value for s in JobStatus]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                    {"name": "next_token", "in": "query", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "updated_since",
                        "in": "query",
                        "required": False,
                        "description": "only the jobs written after this time (ISO 8601 with a zone: the as_of of a "
                        "previous answer), least recently written first, from an index by the time of each "
                        "job's last write (no Scan); not with status",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                ],
                "responses": _responses({200: ("a page", JobList)}, {400: "bad filter, time or token", **AUTH_ERRORS}),
            },
        },
        "/jobs/{job_id}": {
            "get": {
                "operationId": "get_job",
                "parameters": [JOB_ID],
                "responses": _responses({200: ("the job", Job)}, {**AUTH_ERRORS, 404: "no such job for this caller"}),
            }
        },
        "/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancel_job",
                "parameters": [JOB_ID],
                "responses": _responses(
                    {202: ("cancel under way (or done)", Job)},
                    {**AUTH_ERRORS, 404: "no such job for this caller", 409: "already terminal"},
                ),
            }
        },
        "/jobs/{job_id}/events": {
            "get": {
                "operationId": "job_events",
                "parameters": [JOB_ID],
                "responses": _responses(
                    {200: ("the job's transitions, oldest first", EventList)},
                    {**AUTH_ERRORS, 404: "no such job for this caller"},
                ),
            }
        },
        "/code": {
            "post": {
                "operationId": "code_upload",
                "summary": "an upload URL for packed code (content-addressed: unchanged code needs no upload)",
                "requestBody": {"required": True, "content": _json(CodeRequest)},
                "responses": _responses(
                    {201: ("upload it with this URL", CodeUpload), 200: ("already uploaded", CodeUpload)},
                    {400: "bad sha256 or size (over JOBPLANE_CODE_MAX_MB)", **AUTH_ERRORS},
                ),
            }
        },
        "/jobs/{job_id}/artifacts": {
            "get": {
                "operationId": "job_artifacts",
                "summary": "the files the job wrote to $JOBPLANE_OUTPUT_DIR, with download URLs",
                "parameters": [
                    JOB_ID,
                    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 100},
                    },
                ],
                "responses": _responses(
                    {200: ("a page of files", ArtifactList)},
                    {400: "bad cursor or limit", **AUTH_ERRORS, 404: "no such job for this caller"},
                ),
            }
        },
        "/jobs/{job_id}/logs": {
            "get": {
                "operationId": "job_logs",
                "parameters": [
                    JOB_ID,
                    {
                        "name": "offset",
                        "in": "query",
                        "required": False,
                        "description": "0, or the next_offset of the previous call, unchanged",
                        "schema": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^t~"}]},
                    },
                    {
                        "name": "node",
                        "in": "query",
                        "required": False,
                        "description": "a multi-node job: that node's output alone (0..resources.nodes - 1); "
                        "without it every node's, merged",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "responses": _responses(
                    {200: ("output from offset", Logs)},
                    {
                        400: "bad offset, or a backend that serves no logs",
                        **AUTH_ERRORS,
                        404: "no such job for this caller",
                    },
                ),
            }
        },
        "/jobs/{job_id}/metrics": {
            "get": {
                "operationId": "job_metrics",
                "summary": "the job's metrics: latest values and series (reads the output on first)",
                "parameters": [JOB_ID],
                "responses": _responses(
                    {200: ("the job's metrics", JobMetrics)},
                    {**AUTH_ERRORS, 404: "no such job for this caller"},
                ),
            }
        },
        "/jobs/{job_id}/tail": {
            "get": {
                "operationId": "job_tail",
                "summary": "the last lines of the job's output",
                "parameters": [
                    JOB_ID,
                    {
                        "name": "lines",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 15},
                    },
                ],
                "responses": _responses(
                    {200: ("the last lines", Tail)},
                    {400: "bad lines", **AUTH_ERRORS, 404: "no such job for this caller"},
                ),
            }
        },
    }
    vm_id = {"name": "vm_id", "in": "path", "required": True, "schema": {"type": "string"}}
    vm_errors = {**AUTH_ERRORS, 404: "no such instance for this caller"}
    paths["/instances"] = {
        "post": {
            "operationId": "create_instance",
            "summary": "start a dev VM that stops itself",
            "requestBody": {"required": True, "content": _json("DevVmSpec")},
            "responses": _responses({201: ("created", Instance)}, {400: "invalid request", **AUTH_ERRORS}),
        },
        "get": {
            "operationId": "list_instances",
            "responses": _responses({200: ("the caller's dev VMs", InstanceList)}, AUTH_ERRORS),
        },
    }
    paths["/instances/{vm_id}"] = {
        "get": {
            "operationId": "get_instance",
            "parameters": [vm_id],
            "responses": _responses({200: ("the dev VM", Instance)}, vm_errors),
        }
    }
    paths["/instances/{vm_id}/start"] = {
        "post": {
            "operationId": "start_instance",
            "parameters": [vm_id],
            "responses": _responses(
                {202: ("starting", Instance)}, {**vm_errors, 409: "not STOPPED", 502: "the provider refused"}
            ),
        }
    }
    paths["/instances/{vm_id}/stop"] = {
        "post": {
            "operationId": "stop_instance",
            "parameters": [vm_id],
            "responses": _responses({202: ("stopping", Instance)}, {**vm_errors, 502: "the provider refused"}),
        }
    }
    endpoint_id = {"name": "endpoint_id", "in": "path", "required": True, "schema": {"type": "string"}}
    endpoint_errors = {**AUTH_ERRORS, 404: "no such endpoint for this caller"}
    paths["/endpoints"] = {
        "post": {
            "operationId": "create_endpoint",
            "summary": "deploy a model (by URI or from a finished job) behind a handler file",
            "requestBody": {
                "required": True,
                "content": {
                    **_json("EndpointSpec"),
                    "application/x-yaml": {
                        "schema": {"type": "string", "description": "the same EndpointSpec as YAML"}
                    },
                },
            },
            "responses": _responses({201: ("created", Endpoint)}, {400: "invalid endpoint spec", **AUTH_ERRORS}),
        },
        "get": {
            "operationId": "list_endpoints",
            "responses": _responses({200: ("the caller's endpoints, newest first", EndpointList)}, AUTH_ERRORS),
        },
    }
    paths["/endpoints/{endpoint_id}"] = {
        "get": {
            "operationId": "get_endpoint",
            "parameters": [endpoint_id],
            "responses": _responses({200: ("the endpoint", Endpoint)}, endpoint_errors),
        },
        "put": {
            "operationId": "update_endpoint",
            "summary": "roll out a new model or handler (a new version; the old one serves until it is ready)",
            "parameters": [endpoint_id],
            "requestBody": {"required": True, "content": _json("EndpointUpdate")},
            "responses": _responses(
                {200: ("updating", Endpoint)}, {400: "invalid update", **endpoint_errors, 409: "not IN_SERVICE"}
            ),
        },
        "delete": {
            "operationId": "delete_endpoint",
            "parameters": [endpoint_id],
            "responses": _responses({202: ("deleting or deleted", Endpoint)}, endpoint_errors),
        },
    }
    paths["/endpoints/{endpoint_id}/events"] = {
        "get": {
            "operationId": "endpoint_events",
            "parameters": [endpoint_id],
            "responses": _responses(
                {200: ("the endpoint's transitions, oldest first", EndpointEventList)}, endpoint_errors
            ),
        }
    }
    paths["/endpoints/{endpoint_id}/invocations"] = {
        "post": {
            "operationId": "invoke_endpoint",
            "summary": "one prediction: a JSON body in, the handler's JSON out",
            "parameters": [endpoint_id],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}},
            "responses": _responses(
                {200: ("the handler's answer", Prediction)},
                {
                    400: "the body is not JSON",
                    **endpoint_errors,
                    409: "not IN_SERVICE",
                    413: "above the backend's payload limit",
                    502: "the model answered an error (the handler raised)",
                },
            ),
        }
    }
    paths["/whoami"] = {
        "get": {
            "operationId": "whoami",
            "summary": "the signed-in user: who the token belongs to and whether it is an admin's",
            "responses": _responses({200: ("the caller", Whoami)}, AUTH_ERRORS),
        }
    }
    paths["/tokens"] = {
        "get": {
            "operationId": "list_tokens",
            "summary": "the caller's API tokens; an admin's: every user's, or `user`'s",
            "parameters": [{"name": "user", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": _responses(
                {200: ("tokens, oldest first", TokenList)}, {**AUTH_ERRORS, 404: "another user's, to a non-admin"}
            ),
        }
    }
    paths["/tokens/{token_id}"] = {
        "delete": {
            "operationId": "revoke_token",
            "summary": "revoke a token by its id or a unique prefix (4+ hex): the next request with it is 401",
            "parameters": [{"name": "token_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _responses(
                {200: ("revoked", Token)},
                {
                    400: "not a token id",
                    **AUTH_ERRORS,
                    404: "no such token for this caller",
                    409: "prefix names several",
                },
            ),
        }
    }
    admin_errors = {**AUTH_ERRORS, 403: "not an admin"}
    paths["/budgets"] = {
        "get": {
            "operationId": "list_budgets",
            "summary": "every monthly budget with this month's spend (admin only)",
            "responses": _responses({200: ("the budgets", BudgetList)}, admin_errors),
        },
        "post": {
            "operationId": "set_budget",
            "summary": "set (or replace) a monthly budget for an owner or a label (admin only)",
            "requestBody": {"required": True, "content": _json(BudgetRequest)},
            "responses": _responses({200: ("stored", Budget)}, {400: "invalid budget", **admin_errors}),
        },
    }
    paths["/budgets/{budget_id}"] = {
        "delete": {
            "operationId": "delete_budget",
            "parameters": [
                {
                    "name": "budget_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "owner:<user> or label:<key>=<value>",
                }
            ],
            "responses": _responses(
                {200: ("deleted", Budget)}, {400: "not a budget id", **admin_errors, 404: "no such budget"}
            ),
        }
    }
    paths["/cost"] = {
        "get": {
            "operationId": "cost_report",
            "summary": "what jobs cost since a date (an admin's: everyone's), with totals and optional groups",
            "parameters": [
                {
                    "name": "by",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["owner", "backend", "label", "month"]},
                },
                {
                    "name": "since",
                    "in": "query",
                    "required": False,
                    "description": "YYYY-MM-DD (UTC); default the first day of this month",
                    "schema": {"type": "string", "format": "date"},
                },
            ],
            "responses": _responses({200: ("the report", CostReport)}, {400: "bad by or since", **AUTH_ERRORS}),
        }
    }
    paths["/slack/commands"] = {
        "post": {
            "operationId": "slack_command",
            "summary": "Slack slash command (/jobplane ...), verified by Slack's request signature",
            "security": [],
            "parameters": [
                {"name": "X-Slack-Signature", "in": "header", "required": True, "schema": {"type": "string"}},
                {"name": "X-Slack-Request-Timestamp", "in": "header", "required": True, "schema": {"type": "string"}},
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                k: {"type": "string"}
                                for k in (
                                    "command",
                                    "text",
                                    "user_id",
                                    "team_id",
                                    "channel_id",
                                    "response_url",
                                    "trigger_id",
                                )
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "a Slack message (Block Kit)",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "401": {
                    "description": "bad or stale signature, or no signing secret here: nothing was done",
                    "content": _json(Error),
                },
            },
        }
    }
    # Links let clients (and schemathesis' stateful phase) follow a created job to its other routes.
    links = {
        op: {"operationId": op, "parameters": {"job_id": "$response.body#/job_id"}}
        for op in ("get_job", "job_events", "job_logs", "job_metrics", "job_tail", "job_artifacts", "cancel_job")
    }
    for status in ("201", "200"):
        paths["/jobs"]["post"]["responses"][status]["links"] = links
    return {
        "openapi": "3.1.0",
        "info": {"title": "jobplane", "version": "1", "description": "Serverless control plane for ML training jobs"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
