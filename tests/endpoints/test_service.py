"""The endpoint service over the local backend: real model-server processes, in-memory stores."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest

from chalicelib.auth import Principal
from chalicelib.endpoints.model import EndpointStatus
from chalicelib.endpoints.service import EndpointService, PayloadTooLargeError
from chalicelib.endpoints.spec import parse_endpoint_spec, parse_endpoint_update
from chalicelib.errors import ConflictError, NotFoundError, ValidationError
from chalicelib.store.endpoints import InMemoryEndpointStore
from chalicelib.store.memory import InMemoryJobStore
from tests.factories import ROOT, endpoint_body, finished_job, make_settings, running_job, wait_for

S = EndpointStatus
ALICE, BOB, ADMIN = Principal("alice"), Principal("bob"), Principal("root", admin=True)


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"label_counts": {"cat": 3, "dog": 1}, "epochs": 3}))
    shutil.copy(ROOT / "examples" / "workdir-demo" / "serve.py", folder / "serve.py")
    return folder


@pytest.fixture
def service(tmp_path):
    sent = []
    svc = EndpointService(
        InMemoryEndpointStore(),
        make_settings(tmp_path, JOBPLANE_BACKENDS="local"),
        InMemoryJobStore(),
        notify=lambda endpoint, kind: sent.append((kind, endpoint.endpoint_id)),
    )
    svc.sent = sent
    yield svc
    for endpoint in svc.store.list_endpoints(None):  # no model server outlives its test
        if endpoint.native_id and endpoint.status is not S.DELETED:
            svc.backend("local").delete(endpoint.native_id)


def deploy(service, model_dir, principal=ALICE, **overrides):
    body = endpoint_body(model={"uri": f"file://{model_dir}"}, **overrides)
    endpoint = service.create(principal, parse_endpoint_spec(body))
    return wait_for(
        lambda: (e := service.get(principal, endpoint.endpoint_id)).status is not S.CREATING and e,
        what="the endpoint to leave CREATING",
    )


def invoke(service, endpoint, body, principal=ALICE):
    return service.invoke(principal, endpoint.endpoint_id, json.dumps(body).encode())


def test_a_local_endpoint_serves_its_handler_with_pre_and_postprocessing_over_http(service, model_dir):
    endpoint = deploy(service, model_dir)
    assert endpoint.status is S.IN_SERVICE and endpoint.url.startswith("http://127.0.0.1:")
    assert endpoint.plan_reason == "asked for local" and endpoint.cost_per_hour_usd == 0.0
    answer = invoke(service, endpoint, {"text": "  CAT!! "})
    assert answer == {"label": "cat", "share": 0.75, "answer": "cat: seen 3 of 4 times in training"}
    got = service.get(ALICE, endpoint.endpoint_id)
    assert got.invocations == 1 and got.last_invoked_at is not None
    assert [h.to_status for h in service.history(ALICE, endpoint.endpoint_id)] == [S.CREATING, S.IN_SERVICE]
    assert service.sent == [("in_service", endpoint.endpoint_id)]


def test_a_handler_that_raises_is_a_clear_error_and_the_server_goes_on(service, model_dir):
    endpoint = deploy(service, model_dir)
    from chalicelib.endpoints.backends.local import ModelError

    with pytest.raises(ModelError) as info:
        invoke(service, endpoint, {"text": "zebra"})
    assert "predict raised KeyError" in info.value.message and "the model knows ['cat', 'dog']" in info.value.message
    assert invoke(service, endpoint, {"text": "dog"})["label"] == "dog"  # the same server answers still


def test_a_handler_whose_load_fails_leaves_the_endpoint_failed_with_the_reason(service, model_dir):
    (model_dir / "broken.py").write_text(
        "def load(model_dir):\n    raise OSError('no weights')\n\ndef predict(m, i):\n    return i\n"
    )
    endpoint = deploy(service, model_dir, handler="broken.py")
    assert endpoint.status is S.FAILED
    assert "load(" in endpoint.failure_reason and "OSError: no weights" in endpoint.failure_reason
    assert service.sent[-1] == ("failed", endpoint.endpoint_id)


def test_a_missing_handler_fails_naming_where_it_was_looked_for(service, model_dir):
    endpoint = service.create(
        ALICE, parse_endpoint_spec(endpoint_body(model={"uri": f"file://{model_dir}"}, handler="nope.py"))
    )
    assert endpoint.status is S.FAILED
    assert "handler nope.py is in none of" in endpoint.failure_reason and str(model_dir) in endpoint.failure_reason


def test_invocations_are_refused_unless_in_service_and_above_the_payload_limit(service, model_dir):
    endpoint = deploy(service, model_dir)
    backend = service.backend("local")
    with pytest.raises(PayloadTooLargeError) as info:
        service.invoke(ALICE, endpoint.endpoint_id, b'"' + b"x" * backend.max_payload_bytes + b'"')
    assert info.value.STATUS_CODE == 413 and str(backend.max_payload_bytes) in info.value.message
    service.delete(ALICE, endpoint.endpoint_id)
    with pytest.raises(ConflictError) as info:
        invoke(service, endpoint, {"text": "cat"})
    assert "DELETED" in info.value.message


def test_endpoints_are_owner_scoped_like_jobs(service, model_dir):
    endpoint = deploy(service, model_dir)
    for call in (
        lambda: service.get(BOB, endpoint.endpoint_id),
        lambda: invoke(service, endpoint, {"text": "cat"}, BOB),
        lambda: service.delete(BOB, endpoint.endpoint_id),
        lambda: service.history(BOB, endpoint.endpoint_id),
        lambda: service.get(ALICE, "0" * 32),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert service.list(BOB) == [] and [e.endpoint_id for e in service.list(ADMIN)] == [endpoint.endpoint_id]
    assert service.get(ADMIN, endpoint.endpoint_id).owner == "alice"


def test_delete_stops_the_server_and_records_who(service, model_dir):
    endpoint = deploy(service, model_dir)
    gone = service.delete(ALICE, endpoint.endpoint_id)
    assert gone.status is S.DELETED and gone.deleted_by == "alice" and gone.url is None
    assert [h.to_status for h in service.history(ALICE, endpoint.endpoint_id)][-2:] == [S.DELETING, S.DELETED]
    assert service.delete(ALICE, endpoint.endpoint_id).status is S.DELETED  # again: harmless


def test_update_rolls_out_a_new_version_and_the_old_one_serves_until_then(service, model_dir):
    endpoint = deploy(service, model_dir)
    # v2 takes a second to load: meanwhile the endpoint is UPDATING and v1 answers
    (model_dir / "v2.py").write_text(
        "import time\n\ndef load(d):\n    time.sleep(1)\n    return 'v2'\n\n"
        "def predict(model, inputs):\n    return {'model': model}\n"
    )
    updated = service.update(ALICE, endpoint.endpoint_id, parse_endpoint_update({"handler": "v2.py"}))
    assert updated.version == 2 and updated.status is S.UPDATING
    assert invoke(service, updated, {"text": "dog"})["label"] == "dog"  # v1, still serving
    live = wait_for(
        lambda: (e := service.get(ALICE, endpoint.endpoint_id)).status is S.IN_SERVICE and e, what="v2 in service"
    )
    assert invoke(service, live, {}) == {"model": "v2"} and live.handler == "v2.py"
    assert [h.to_status for h in service.history(ALICE, endpoint.endpoint_id)] == [
        S.CREATING,
        S.IN_SERVICE,
        S.UPDATING,
        S.IN_SERVICE,
    ]


def test_reconcile_deletes_an_idle_endpoint_and_says_why_but_spares_a_busy_one(service, model_dir):
    idle = deploy(service, model_dir, idle_minutes=5)
    busy = deploy(service, model_dir, name="busy", idle_minutes=5)
    never = deploy(service, model_dir, name="forever", idle_minutes=0)
    invoke(service, busy, {"text": "cat"})  # counted by its server: the stored last_invoked_at is cleared below
    ten_ago = service.clock() - timedelta(minutes=10)
    for endpoint in (idle, busy, never):  # as if they had served for ten minutes
        current = service.store.get_endpoint(endpoint.endpoint_id)
        service.store.update_endpoint(current, S.IN_SERVICE, in_service_at=ten_ago, last_invoked_at=None)
    later = service.clock()
    results = {r.endpoint_id: r for r in service.reconcile(later)}
    assert results[idle.endpoint_id].action == "deleted_idle"
    assert results[idle.endpoint_id].reason == "no invocation for 5 min"
    assert results[busy.endpoint_id].action == "refreshed" and results[never.endpoint_id].action == "refreshed"
    gone = service.store.get_endpoint(idle.endpoint_id)
    assert gone.status is S.DELETED and gone.deleted_by == "jobplane reconcile"
    assert gone.deleted_reason == "deleted for idleness: no invocation for 5 min"
    assert ("deleted_idle", idle.endpoint_id) in service.sent
    assert service.store.get_endpoint(busy.endpoint_id).status is S.IN_SERVICE


def test_from_job_takes_a_succeeded_jobs_artifacts_and_code_and_refuses_others(service):
    from chalicelib.jobs.model import EventSource, HistoryEntry

    done = finished_job(
        owner="alice", job_id="a" * 32, spec={"code_uri": "s3://code/x.tar.gz", "code_sha256": "0" * 64}
    )
    running = running_job(owner="alice", job_id="b" * 32)
    for job in (done, running):
        service.job_store.create_job(
            job, HistoryEntry(job.job_id, job.created_at, None, job.status, "", EventSource.API)
        )
    uri, code = service._model(ALICE, {"from_job": done.job_id})
    assert uri == done.artifacts_uri(service.settings.artifacts_bucket) and code == "s3://code/x.tar.gz"
    for principal, job, message in ((ALICE, running, "is RUNNING"), (BOB, done, "no job"), (ALICE, None, "no job")):
        body = endpoint_body(model={"from_job": job.job_id if job else "c" * 32})
        with pytest.raises(ValidationError) as info:
            service.create(principal, parse_endpoint_spec(body))
        assert info.value.details[0]["field"] == "model.from_job" and message in info.value.message


def test_auto_records_why_it_picked_a_backend(service, model_dir):
    endpoint = deploy(service, model_dir, backend="auto")
    assert endpoint.backend == "local"
    assert endpoint.plan_reason.startswith("auto: local: CPU model")
    assert "sagemaker-serverless, sagemaker, vertex not enabled" in endpoint.plan_reason
    with pytest.raises(ValidationError) as info:
        service.create(ALICE, parse_endpoint_spec(endpoint_body(backend="auto", resources={"gpus": 1})))
    assert info.value.details[0]["field"] == "backend"


@pytest.mark.parametrize(
    ("enabled", "body", "backend", "why"),
    [
        (("sagemaker", "local"), {}, "sagemaker-serverless", "CPU model: serverless bills per request"),
        (("sagemaker",), {"resources": {"memory_gb": 16}}, "sagemaker", "16 GB is above sagemaker-serverless's 6 GB"),
        (("sagemaker", "vertex"), {"resources": {"gpus": 1}}, "sagemaker", "1 GPU(s): a real-time endpoint"),
        (("sagemaker", "vertex"), {"resources": {"gpus": 1}, "model": {"uri": "gs://m/"}}, "vertex", "on GCP"),
        (("vertex", "local"), {}, "vertex", "(sagemaker-serverless, sagemaker not enabled)"),
    ],
)
def test_auto_follows_the_planners_reasoning(service, enabled, body, backend, why):
    import types

    service.settings = types.SimpleNamespace(enabled_backends=enabled)  # plan() reads only this
    spec = parse_endpoint_spec(endpoint_body(backend="auto", **body))
    chosen, reason = service.plan(spec, spec.model.uri)
    assert chosen == backend and reason.startswith(f"auto: {backend}: ") and why in reason
