"""jobplane's Chalice app: routes and event handlers only; the core lives in chalicelib."""

from chalice import Chalice

from chalicelib import deps
from chalicelib.api import (
    api_view,
    contract_errors,
    json_body,
    list_query,
    parse_flag,
    parse_limit,
    parse_node,
    parse_offset,
    query,
    respond,
)
from chalicelib.backends.event_pattern import pattern_from_env
from chalicelib.config import deploy_constants
from chalicelib.deps import principal

app = Chalice(app_name="jobplane")
app.register_middleware(contract_errors, "http")
DEPLOY = deploy_constants()


@app.route("/health")
def health():
    return {"status": "ok"}


@app.route("/")
def dashboard():
    from chalice import Response

    from chalicelib.dashboard import page

    # A static page: it holds no data and reads everything through the API with the user's token.
    return Response(
        body=page(),
        status_code=200,
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline' 'self'; "
            "style-src 'unsafe-inline' 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
        },
    )


@app.route("/openapi.json")
def openapi():
    from chalicelib.openapi import build

    return build()


# A spec is JSON or YAML; clients that label it text/plain or form-encoded (curl -d) are accepted too.
SPEC_TYPES = [
    "application/json",
    "application/x-yaml",
    "application/yaml",
    "text/yaml",
    "text/x-yaml",
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
]


def _job(job):
    """A job's JSON, with artifacts_uri in this stage's bucket (of the job's cloud) when the spec names no outputs."""
    from chalicelib.jobs.contract import store_for

    return job.to_api(*store_for(job.backend, deps.get_settings(), job.spec))


@app.route("/code", methods=["POST"])
@api_view
def code_upload():
    request = app.current_request
    upload = deps.get_service().code_upload(principal(request), json_body(request))
    return respond(upload.to_api(), 200 if upload.exists else 201)


@app.route("/jobs", methods=["POST"], content_types=SPEC_TYPES)
@api_view
def submit_job():
    from chalicelib.jobs.spec import load_spec_text

    request = app.current_request
    user = principal(request)
    spec = load_spec_text(request.raw_body or b"", request.headers.get("content-type"))
    if parse_flag(query(request), "dry_run"):  # the plan and the provider request; nothing stored or launched
        return respond(deps.get_service().dry_run(user, spec), 200)
    job, created = deps.get_service().submit(user, spec, request.headers.get("idempotency-key"))
    return respond(_job(job), 201 if created else 200)


@app.route("/jobs", methods=["GET"])
@api_view
def list_jobs():
    from chalicelib.jobs.model import iso
    from chalicelib.jobs.service import changes_as_of

    params = list_query(query(app.current_request))
    user = principal(app.current_request)
    as_of = changes_as_of()  # taken before the read: the next poll's updated_since
    jobs, token = deps.get_service().list(user, params.status, params.limit, params.next_token, params.updated_since)
    return respond({"jobs": [_job(j) for j in jobs], "next_token": token, "as_of": iso(as_of)})


@app.route("/jobs/{job_id}", methods=["GET"])
@api_view
def get_job(job_id):
    return respond(_job(deps.get_service().get(principal(app.current_request), job_id)))


@app.route("/jobs/{job_id}/cancel", methods=["POST"])
@api_view
def cancel_job(job_id):
    return respond(_job(deps.get_service().cancel(principal(app.current_request), job_id)), 202)


@app.route("/jobs/{job_id}/events", methods=["GET"])
@api_view
def job_events(job_id):
    entries = deps.get_service().history(principal(app.current_request), job_id)
    return respond({"events": [e.to_api() for e in entries]})


@app.route("/jobs/{job_id}/logs", methods=["GET"])
@api_view
def job_logs(job_id):
    request = app.current_request
    params = query(request)
    chunk = deps.get_service().logs(
        principal(request), job_id, parse_offset(params.get("offset")), parse_node(params.get("node"))
    )
    return respond(
        {"text": chunk.text, "next_offset": chunk.next_offset, "complete": chunk.complete, "note": chunk.note}
    )


@app.route("/jobs/{job_id}/metrics", methods=["GET"])
@api_view
def job_metrics(job_id):
    return respond(deps.get_service().metrics(principal(app.current_request), job_id).to_api())


@app.route("/jobs/{job_id}/tail", methods=["GET"])
@api_view
def job_tail(job_id):
    from chalicelib.api import parse_lines

    request = app.current_request
    lines, note = deps.get_service().tail(principal(request), job_id, parse_lines(query(request).get("lines")))
    return respond({"lines": lines, "note": note})


@app.route("/jobs/{job_id}/artifacts", methods=["GET"])
@api_view
def job_artifacts(job_id):
    request = app.current_request
    params = query(request)
    limit = parse_limit(params["limit"]) if "limit" in params else 100
    uri, items, cursor = deps.get_service().artifacts(principal(request), job_id, params.get("cursor"), limit)
    return respond({"artifacts_uri": uri, "artifacts": [a.to_api() for a in items], "next_cursor": cursor})


@app.route("/instances", methods=["POST"])
@api_view
def create_instance():
    from chalicelib.devvms import parse_devvm_spec

    request = app.current_request
    user = principal(request)
    vm = deps.get_devvm_service().create(user, parse_devvm_spec(json_body(request)))
    return respond(vm.to_api(), 201)


@app.route("/instances", methods=["GET"])
@api_view
def list_instances():
    vms = deps.get_devvm_service().list(principal(app.current_request))
    return respond({"instances": [vm.to_api() for vm in vms]})


@app.route("/instances/{vm_id}", methods=["GET"])
@api_view
def get_instance(vm_id):
    return respond(deps.get_devvm_service().get(principal(app.current_request), vm_id).to_api())


@app.route("/instances/{vm_id}/start", methods=["POST"])
@api_view
def start_instance(vm_id):
    return respond(deps.get_devvm_service().start(principal(app.current_request), vm_id).to_api(), 202)


@app.route("/instances/{vm_id}/stop", methods=["POST"])
@api_view
def stop_instance(vm_id):
    return respond(deps.get_devvm_service().stop(principal(app.current_request), vm_id).to_api(), 202)


@app.route("/endpoints", methods=["POST"], content_types=SPEC_TYPES)
@api_view
def create_endpoint():
    from chalicelib.endpoints.spec import load_endpoint_text

    request = app.current_request
    user = principal(request)
    spec = load_endpoint_text(request.raw_body or b"", request.headers.get("content-type"))
    return respond(deps.get_endpoint_service().create(user, spec).to_api(), 201)


@app.route("/endpoints", methods=["GET"])
@api_view
def list_endpoints():
    endpoints = deps.get_endpoint_service().list(principal(app.current_request))
    return respond({"endpoints": [e.to_api() for e in endpoints]})


@app.route("/endpoints/{endpoint_id}", methods=["GET"])
@api_view
def get_endpoint(endpoint_id):
    return respond(deps.get_endpoint_service().get(principal(app.current_request), endpoint_id).to_api())


@app.route("/endpoints/{endpoint_id}/events", methods=["GET"])
@api_view
def endpoint_events(endpoint_id):
    entries = deps.get_endpoint_service().history(principal(app.current_request), endpoint_id)
    return respond({"events": [e.to_api() for e in entries]})


@app.route("/endpoints/{endpoint_id}/invocations", methods=["POST"], content_types=SPEC_TYPES)
@api_view
def invoke_endpoint(endpoint_id):
    request = app.current_request
    return respond(deps.get_endpoint_service().invoke(principal(request), endpoint_id, request.raw_body or b""))


@app.route("/endpoints/{endpoint_id}", methods=["PUT"], content_types=SPEC_TYPES)
@api_view
def update_endpoint(endpoint_id):
    from chalicelib.endpoints.spec import parse_endpoint_update
    from chalicelib.jobs.spec import load_document

    request = app.current_request
    user = principal(request)
    change = parse_endpoint_update(
        load_document(request.raw_body or b"", request.headers.get("content-type"), "update")
    )
    return respond(deps.get_endpoint_service().update(user, endpoint_id, change).to_api())


@app.route("/endpoints/{endpoint_id}", methods=["DELETE"])
@api_view
def delete_endpoint(endpoint_id):
    return respond(deps.get_endpoint_service().delete(principal(app.current_request), endpoint_id).to_api(), 202)


@app.route("/whoami", methods=["GET"])
@api_view
def whoami():
    who = principal(app.current_request)
    return respond({"user": who.user, "admin": who.admin})


@app.route("/tokens", methods=["GET"])
@api_view
def list_tokens():
    from chalicelib.auth import list_tokens as listed

    request = app.current_request
    records = listed(deps.get_token_store(), principal(request), query(request).get("user"))
    return respond({"tokens": [r.to_api() for r in records]})


@app.route("/tokens/{token_id}", methods=["DELETE"])
@api_view
def revoke_token(token_id):
    from chalicelib.auth import revoke_token as revoke

    return respond(revoke(deps.get_token_store(), principal(app.current_request), token_id).to_api())


@app.route("/budgets", methods=["GET"])
@api_view
def list_budgets():
    spends = deps.get_budget_service().list(principal(app.current_request))
    return respond({"budgets": [s.to_api() for s in spends]})


@app.route("/budgets", methods=["POST"])
@api_view
def set_budget():
    request = app.current_request
    return respond(deps.get_budget_service().set(principal(request), json_body(request)).to_api(), 200)


@app.route("/budgets/{budget_id}", methods=["DELETE"])
@api_view
def delete_budget(budget_id):
    from urllib.parse import unquote

    budget = deps.get_budget_service().delete(principal(app.current_request), unquote(budget_id))
    return respond(budget.to_api())


@app.route("/cost", methods=["GET"])
@api_view
def cost_report():
    from chalicelib.budgets.report import cost_report as report
    from chalicelib.budgets.report import parse_report_query
    from chalicelib.jobs.model import utcnow

    request = app.current_request
    user = principal(request)
    now = utcnow()
    by, since = parse_report_query(query(request), now)
    return respond(report(deps.get_budget_service(), user, by, since, now))


# EventBridge delivers only the detail-types jobplane handles, of its own resources where the event says whose
# (chalicelib/backends/event_pattern.py; no backend is imported here); the local stack's runner posts the local
# backend's events to the same function.
@app.on_cw_event(pattern_from_env(), name="on_job_state_change")
def on_job_state_change(event):
    from chalicelib.events import handle_state_change

    return handle_state_change(event.to_dict(), deps.get_service(), deps.get_endpoint_service).to_dict()


@app.on_s3_event(bucket=DEPLOY["upload_bucket"], events=["s3:ObjectCreated:*"], name="on_upload")
def on_upload(event):
    from chalicelib.triggers import handle_s3_event

    return handle_s3_event(event.to_dict(), deps.get_service())


@app.schedule("rate(1 minute)", name="reconcile")
def reconcile(event):  # noqa: ARG001 - a schedule carries nothing we need
    from chalicelib.reaper import reconcile_all

    fan_out = deps.get_reconcile_fan_out(run_reconcile_shard)
    return reconcile_all(deps.get_service(), deps.get_devvm_service_if_enabled(), fan_out, deps.get_endpoint_service())


# A shard of a tick with more active jobs than one invocation reads (the schedule hands it on).
@app.lambda_function(name="reconcile_shard")
def reconcile_shard(event, context):  # noqa: ARG001 - the payload is all it needs
    return run_reconcile_shard(event)


def run_reconcile_shard(payload):
    from chalicelib.reaper import run_shard

    return run_shard(deps.get_service(), payload)


@app.on_dynamodb_record(stream_arn=DEPLOY["jobs_stream_arn"], name="notify")
def notify(event):
    from chalicelib.budgets.service import on_stream
    from chalicelib.notify.slack import notify_records

    raw = event.to_dict()
    on_stream(raw.get("Records") or [], deps.get_service())  # first: its alerts go out with this batch's messages
    return notify_records(raw, event.context)


# Slack sends form-encoded bodies; JSON (what a request without Content-Type is taken for) gets a 401, not a 415.
@app.route("/slack/commands", methods=["POST"], content_types=["application/x-www-form-urlencoded", "application/json"])
def slack_command():
    request = app.current_request
    status, body = deps.handle_slack_command(request.raw_body or b"", dict(request.headers or {}))
    return respond(body, status)


@app.lambda_function(name="slack_worker")
def slack_worker(event, context):  # noqa: ARG001 - the payload is all it needs
    return deps.run_slack_worker(event)
