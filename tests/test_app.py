"""The REST API and event handlers through Chalice's test client, over DynamoDB on moto and real local jobs."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

from chalicelib import deps
from chalicelib.backends import get_backend
from chalicelib.backends.local.backend import EVENT_DETAIL_TYPE, EVENT_SOURCE, pid_alive
from chalicelib.backends.local.runner import sign_detail
from chalicelib.jobs.model import JobStatus, new_job_id, utcnow
from tests.factories import job_spec, make_history, make_job
from tests.factories import wait_for as _wait_for

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def wait_for(predicate, timeout=20.0, **kw):
    return _wait_for(predicate, timeout=timeout, **kw)


def run_reconcile(api):
    event = api.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=["arn:aws:events:rule/reconcile"]
    )
    return api.lambda_.invoke("reconcile", event).payload


def get_job(api, token, job_id) -> dict:
    response = api.request("GET", f"/jobs/{job_id}", token=token)
    assert response.status_code == 200, response.body
    return response.json_body


def reconcile_until(api, token, job_id, statuses=frozenset(TERMINAL), timeout=20.0) -> dict:
    """Poll GET /jobs/{id}, running the scheduled reconcile function between polls."""

    def check():
        run_reconcile(api)
        job = get_job(api, token, job_id)
        return job if job["status"] in statuses else None

    return wait_for(check, timeout, what=f"job {job_id} to reach {sorted(statuses)}")


def submit(api, token, spec=None, headers=None, expected=201) -> dict:
    response = api.request("POST", "/jobs", token=token, body=spec or job_spec(), headers=headers)
    assert response.status_code == expected, response.body
    return response.json_body


def error_of(response, status) -> dict:
    assert response.status_code == status, response.body
    body = response.json_body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    return body["error"]


def state_dir() -> Path:
    return Path(deps.get_settings().local_state_dir).resolve()


def seed(api, owner, n, status=JobStatus.QUEUED) -> list[str]:
    """Jobs written straight to the store (no processes): listing tests are about the API and the store."""
    from datetime import timedelta

    base = utcnow()
    ids = []
    for i in range(n):
        job = make_job(
            "local", job_spec(f"seed-{i}"), owner=owner, status=status, created_at=base + timedelta(seconds=i)
        )
        api.store.create_job(job, make_history(job, reason="seeded"))
        ids.append(job.job_id)
    return ids


@pytest.fixture
def alice(api):
    return api.token("alice")


@pytest.fixture
def bob(api):
    return api.token("bob")


@pytest.fixture
def admin(api):
    return api.token("root", admin=True)


# --- health and authentication -------------------------------------------------------------


def test_health_needs_no_token(api):
    response = api.request("GET", "/health")
    assert response.status_code == 200
    assert response.json_body == {"status": "ok"}


def test_every_route_but_health_is_401_without_a_token_with_the_error_shape(api):
    for method, path in (
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", "/jobs/0123456789abcdef0123456789abcdef"),
        ("POST", "/jobs/0123456789abcdef0123456789abcdef/cancel"),
        ("GET", "/jobs/0123456789abcdef0123456789abcdef/events"),
    ):
        response = api.request(method, path, body=job_spec() if method == "POST" else None)
        error = error_of(response, 401)
        assert error == {
            "code": "unauthenticated",
            "message": "missing Authorization header; send 'Authorization: Bearer <token>'",
            "details": [],
        }, (method, path)
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="jobplane"'


BAD_HEADERS = [
    ("Bearer jp_not-a-real-token", "invalid token"),
    ("Bearer not-even-our-prefix", "invalid token"),
    ("Basic YWxpY2U6cGFzc3dvcmQ=", "the Authorization header must be 'Bearer <token>'"),
    ("Bearer", "the Authorization header must be 'Bearer <token>'"),
    ("Bearer    ", "the Authorization header must be 'Bearer <token>'"),
    ("jp_token-without-scheme", "the Authorization header must be 'Bearer <token>'"),
]


def test_a_bad_or_malformed_token_is_401(api, alice):
    for header, message in BAD_HEADERS:
        error = error_of(api.request("GET", "/jobs", headers={"Authorization": header}), 401)
        assert (error["code"], error["message"]) == ("unauthenticated", message), header
    token_of_someone_else = alice[:-4] + ("aaaa" if not alice.endswith("aaaa") else "bbbb")
    error = error_of(api.request("GET", "/jobs", token=token_of_someone_else), 401)
    assert error["message"] == "invalid token"


def test_the_token_scheme_is_case_insensitive(api, alice):
    response = api.request("GET", "/jobs", headers={"Authorization": f"bearer {alice}"})
    assert response.status_code == 200


# --- submit and run ---------------------------------------------------------------------


def test_a_job_names_our_name_and_the_providers_id_apart(api, alice):
    job = submit(api, alice, job_spec("named"))
    got = api.request("GET", f"/jobs/{job['job_id']}", alice).json_body
    # The local backend's "provider id" is the folder named after the job: both fields hold it.
    assert (got["native_name"], got["native_id"]) == (f"jp-{job['job_id']}", f"jp-{job['job_id']}")
    assert got["spec"]["max_runtime_minutes"] == 1440
    assert got["spec"]["resources"] == {
        "gpus": 0,
        "gpu_type": None,
        "cpus": 1,
        "memory_gb": 2,
        "spot": False,
        "instance_type": None,
        "tpu": None,
        "cluster": None,
        "nodes": 1,
    }


def test_can_submit_a_job_and_it_runs_to_succeeded(api, alice):
    job = submit(api, alice, job_spec("hello"))
    assert job["status"] == "LAUNCHING"
    assert job["owner"] == "alice"
    assert job["name"] == "hello"
    assert job["backend"] == "local"
    assert job["native_id"] == f"jp-{job['job_id']}"
    assert job["attempt"] == 1
    assert job["spec"]["command"] == job_spec()["command"]
    assert job["created_at"].endswith("Z")
    done = reconcile_until(api, alice, job["job_id"])
    assert done["status"] == "SUCCEEDED"
    assert done["failure_kind"] is None
    assert done["started_at"] is not None and done["finished_at"] >= done["started_at"]
    assert (state_dir() / job["native_id"] / "output.log").read_text() == "hello\n"


def test_a_job_that_exits_non_zero_is_failed_with_the_reason(api, alice):
    spec = job_spec("boom", command=[sys.executable, "-c", "raise SystemExit(3)"])
    done = reconcile_until(api, alice, submit(api, alice, spec)["job_id"])
    assert done["status"] == "FAILED"
    assert done["failure_kind"] == "user_error"
    assert done["failure_reason"] == "exit code 3"


def test_a_replayed_idempotency_key_is_200_with_the_same_job(api, alice):
    first = submit(api, alice, headers={"Idempotency-Key": "abc-123"})
    again = submit(api, alice, headers={"Idempotency-Key": "abc-123"}, expected=200)
    assert again["job_id"] == first["job_id"]
    listed = api.request("GET", "/jobs", token=alice).json_body
    assert [j["job_id"] for j in listed["jobs"]] == [first["job_id"]]


def test_the_same_idempotency_key_with_another_spec_is_409(api, alice):
    submit(api, alice, headers={"Idempotency-Key": "k"})
    response = api.request("POST", "/jobs", token=alice, body=job_spec("other"), headers={"Idempotency-Key": "k"})
    error = error_of(response, 409)
    assert error["code"] == "idempotency_key_reused"


def test_ten_concurrent_posts_with_one_key_make_one_job(api, alice):
    # Chalice's test client swaps os.environ per request; put the real one back whatever happens.
    environ = os.environ
    barrier = threading.Barrier(10)
    responses, lock = [], threading.Lock()

    def post():
        barrier.wait()
        response = api.request("POST", "/jobs", token=alice, body=job_spec(), headers={"Idempotency-Key": "once"})
        with lock:
            responses.append((response.status_code, response.json_body))

    threads = [threading.Thread(target=post) for _ in range(10)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        os.environ = environ
    assert len(responses) == 10
    assert sorted(code for code, _ in responses) == [200] * 9 + [201], responses
    (job_id,) = {body["job_id"] for _, body in responses}
    listed = api.request("GET", "/jobs", token=alice).json_body
    assert [j["job_id"] for j in listed["jobs"]] == [job_id]
    assert [p.name for p in state_dir().glob("jp-*")] == [f"jp-{job_id}"]


def test_a_yaml_body_is_accepted(api, alice):
    text = (
        "name: from-yaml\n"
        "backend: local\n"
        f"command: [{json.dumps(sys.executable)}, -c, \"print('yaml')\"]\n"
        "env: {LR: '0.1', DEBUG: on}\n"
        "retries: {max_attempts: 2, on: [interruption]}\n"
    )
    response = api.request(
        "POST", "/jobs", token=alice, body=text.encode(), headers={"Content-Type": "application/x-yaml"}
    )
    assert response.status_code == 201, response.body
    job = response.json_body
    assert job["name"] == "from-yaml"
    assert job["spec"]["env"] == {"LR": "0.1", "DEBUG": "on"}
    assert job["spec"]["retries"] == {"max_attempts": 2, "on": ["interruption"], "fatal_exit_codes": []}
    assert reconcile_until(api, alice, job["job_id"])["status"] == "SUCCEEDED"


INVALID_SPECS = [
    ({"resources": {"gpus": 17, "gpu_type": "T4"}}, "resources.gpus", "less than or equal to 16"),
    ({"name": "Not_Valid"}, "name", "a-z, 0-9 and '-'"),
    ({"backend": "azure"}, "backend", "'sagemaker'"),
    ({"colour": "blue"}, "colour", "unknown field"),
    ({"resources": {"gpu": 1}}, "resources.gpu", "valid fields here: cluster, cpus, gpu_type, gpus"),
    ({"env": {"AWS_REGION": "x"}}, "env.AWS_REGION", "reserved"),
    ({"outputs": "ftp://x"}, "outputs", "s3:// or gs://"),
]


def test_an_invalid_spec_is_400_naming_the_field(api, alice):
    for overrides, field, message_part in INVALID_SPECS:
        response = api.request("POST", "/jobs", token=alice, body=job_spec(**overrides))
        error = error_of(response, 400)
        assert error["code"] == "invalid_request"
        assert error["details"][0]["field"] == field
        assert message_part in error["details"][0]["message"], error
        assert error["message"].startswith(f"invalid job spec: {field}: ")
    assert api.request("GET", "/jobs", token=alice).json_body["jobs"] == []


MALFORMED = [
    (b'{"name": "x", "command": [', "application/json"),
    (b"{not json", "application/json"),
    (b"", "application/json"),
    (b"\xff\xfe\x00", "application/json"),
    (b"[1, 2, 3]", "application/json"),
    (b"name: [unclosed", "application/x-yaml"),
]


def test_a_malformed_body_is_400_not_500(api, alice):
    for body, content_type in MALFORMED:
        response = api.request("POST", "/jobs", token=alice, body=body, headers={"Content-Type": content_type})
        error = error_of(response, 400)
        assert error["code"] == "invalid_request"
        assert error["details"][0]["field"] in ("(body)", "(spec)"), body


# --- who sees what ------------------------------------------------------------------------


def test_another_users_job_is_404_for_get_cancel_and_events(api, alice, bob):
    job = submit(api, alice, job_spec(command=SLEEP))
    for method, path in (
        ("GET", f"/jobs/{job['job_id']}"),
        ("POST", f"/jobs/{job['job_id']}/cancel"),
        ("GET", f"/jobs/{job['job_id']}/events"),
    ):
        error = error_of(api.request(method, path, token=bob), 404)
        assert error["code"] == "not_found"
    assert api.request("GET", "/jobs", token=bob).json_body.items() >= {"jobs": [], "next_token": None}.items()
    assert get_job(api, alice, job["job_id"])["status"] == "LAUNCHING"  # bob's cancel did nothing
    api.request("POST", f"/jobs/{job['job_id']}/cancel", token=alice)


def test_an_unknown_job_is_404(api, alice):
    error = error_of(api.request("GET", f"/jobs/{new_job_id()}", token=alice), 404)
    assert error["code"] == "not_found"
    error_of(api.request("GET", "/jobs/not-an-id", token=alice), 404)


def test_an_admin_sees_every_users_jobs(api, alice, bob, admin):
    mine = seed(api, "alice", 1)[0]
    theirs = seed(api, "bob", 1)[0]
    assert get_job(api, admin, mine)["owner"] == "alice"
    assert api.request("GET", f"/jobs/{theirs}/events", token=admin).status_code == 200
    listed = api.request("GET", "/jobs", token=admin).json_body
    assert [j["job_id"] for j in listed["jobs"]] == [theirs, mine]
    assert [j["job_id"] for j in api.request("GET", "/jobs", token=alice).json_body["jobs"]] == [mine]


# --- cancel ---------------------------------------------------------------------------------


def test_cancelling_a_running_job_is_202_then_cancelled_and_the_process_is_gone(api, alice):
    job = submit(api, alice, job_spec("sleeper", command=SLEEP))
    runner_json = state_dir() / job["native_id"] / "runner.json"
    pid = wait_for(lambda: runner_json.exists() and json.loads(runner_json.read_text())["pid"], what="runner.json")
    assert pid_alive(pid)
    response = api.request("POST", f"/jobs/{job['job_id']}/cancel", token=alice)
    assert response.status_code == 202
    assert response.json_body["status"] == "CANCELLING"
    done = reconcile_until(api, alice, job["job_id"])
    assert done["status"] == "CANCELLED"
    assert done["failure_kind"] is None
    wait_for(lambda: not pid_alive(pid), timeout=5, what="the job's process to be gone")


def test_cancelling_a_finished_job_is_409(api, alice):
    job = submit(api, alice)
    reconcile_until(api, alice, job["job_id"])
    error = error_of(api.request("POST", f"/jobs/{job['job_id']}/cancel", token=alice), 409)
    assert error["code"] == "conflict"
    assert error["message"] == f"job {job['job_id']} is already SUCCEEDED"


# --- listing --------------------------------------------------------------------------------


def test_paging_through_25_jobs_7_at_a_time_returns_each_once_newest_first(api, alice):
    ids = seed(api, "alice", 25)
    seed(api, "bob", 3)
    seen, token, pages = [], None, 0
    while True:
        path = "/jobs?limit=7" + (f"&next_token={token}" if token else "")
        response = api.request("GET", path, token=alice)
        assert response.status_code == 200, response.body
        body = response.json_body
        assert len(body["jobs"]) <= 7
        seen.extend(j["job_id"] for j in body["jobs"])
        pages += 1
        token = body["next_token"]
        if token is None:
            break
        assert pages < 10
    assert seen == list(reversed(ids))
    assert pages in (4, 5)  # 7 + 7 + 7 + 4, perhaps followed by an empty page


def test_the_status_filter_returns_only_jobs_in_that_status(api, alice):
    queued = seed(api, "alice", 2, JobStatus.QUEUED)
    failed = seed(api, "alice", 3, JobStatus.FAILED)
    running = seed(api, "alice", 1, JobStatus.RUNNING)

    def listed(status):
        response = api.request("GET", f"/jobs?status={status}", token=alice)
        assert response.status_code == 200, response.body
        return [j["job_id"] for j in response.json_body["jobs"]]

    assert listed("QUEUED") == list(reversed(queued))
    assert listed("FAILED") == list(reversed(failed))
    assert listed("RUNNING") == running
    assert listed("SUCCEEDED") == []


def test_bad_list_parameters_are_400_naming_the_field(api, alice):
    for query, field in (
        ("status=DONE", "status"),
        ("limit=0", "limit"),
        ("limit=1000", "limit"),
        ("limit=seven", "limit"),
        ("next_token=garbage!", "next_token"),
    ):
        error = error_of(api.request("GET", f"/jobs?{query}", token=alice), 400)
        assert error["details"][0]["field"] == field, query


def test_a_bad_logs_offset_is_400_naming_the_offset(api, alice):
    (job_id,) = seed(api, "alice", 1)
    for offset in ("-1", "ten", "1.5"):
        error = error_of(api.request("GET", f"/jobs/{job_id}/logs?offset={offset}", token=alice), 400)
        assert error["details"] == [{"field": "offset", "message": "the next_offset of the previous call, or 0"}]
    assert api.request("GET", f"/jobs/{job_id}/logs?offset=0", token=alice).status_code == 200


def test_a_next_token_cannot_be_used_by_another_user(api, alice, bob):
    seed(api, "alice", 3)
    token = api.request("GET", "/jobs?limit=1", token=alice).json_body["next_token"]
    assert token
    error = error_of(api.request("GET", f"/jobs?limit=1&next_token={token}", token=bob), 400)
    assert error["details"][0]["field"] == "next_token"


# --- history -------------------------------------------------------------------------------


def test_events_list_every_transition_in_order(api, alice):
    job = submit(api, alice)
    reconcile_until(api, alice, job["job_id"])
    response = api.request("GET", f"/jobs/{job['job_id']}/events", token=alice)
    assert response.status_code == 200
    events = response.json_body["events"]
    assert {"at", "from", "to", "reason", "source"} <= set(events[0])
    assert events[0] == {**events[0], "from": None, "to": "QUEUED", "reason": "submitted by alice", "source": "api"}
    assert events[1] == {
        **events[1],
        "from": "QUEUED",
        "to": "LAUNCHING",
        "reason": "launching attempt 1 on local",
        "source": "dispatch",
    }
    assert events[-1]["to"] == "SUCCEEDED"
    assert events[-1]["source"] == "reconcile"
    assert events[-1]["reason"] == "exit code 0"
    for before, after in zip(events, events[1:], strict=False):
        assert after["from"] == before["to"]  # a chain: each entry starts where the last one ended


# --- state events --------------------------------------------------------------------------


def _runner_event(api, status: dict) -> dict:
    # Signed as the job's runner signs it: with the key the stack derives for that job.
    key = get_backend("local", deps.get_settings()).event_key(status.get("native_name") or status["native_id"])
    status = {**status, "signature": sign_detail(key, status)}
    return api.events.generate_cw_event(
        source=EVENT_SOURCE, detail_type=EVENT_DETAIL_TYPE, detail=status, resources=[], region="us-east-1"
    )


def test_local_runner_events_twice_and_out_of_order_are_harmless(api, alice):
    job = submit(api, alice)
    folder = state_dir() / job["native_id"]
    ended = wait_for(
        lambda: (folder / "status.json").exists() and json.loads((folder / "status.json").read_text()),
        what="the job to end",
    )
    running = json.loads((folder / "runner.json").read_text())
    assert (running["state"], ended["state"]) == ("RUNNING", "SUCCEEDED")

    outcomes = [
        api.lambda_.invoke("on_job_state_change", _runner_event(api, status)).payload
        for status in (ended, running, ended, running)
    ]
    assert [(o["outcome"], o["status"]) for o in outcomes] == [
        ("applied", "SUCCEEDED"),
        ("unchanged", "SUCCEEDED"),
        ("unchanged", "SUCCEEDED"),
        ("unchanged", "SUCCEEDED"),
    ]
    assert all(o["job_id"] == job["job_id"] for o in outcomes)
    done = get_job(api, alice, job["job_id"])
    assert done["status"] == "SUCCEEDED"
    assert done["started_at"] == ended["started_at"]
    assert done["finished_at"] == ended["at"]
    events = api.request("GET", f"/jobs/{job['job_id']}/events", token=alice).json_body["events"]
    assert [(e["from"], e["to"], e["source"]) for e in events] == [
        (None, "QUEUED", "api"),
        ("QUEUED", "LAUNCHING", "dispatch"),
        ("LAUNCHING", "SUCCEEDED", "backend"),
    ]
    assert run_reconcile(api) == []  # nothing left to heal


def test_a_state_event_for_an_unknown_job_or_a_foreign_source_changes_nothing(api):
    stranger = {"native_id": f"jp-{new_job_id()}", "state": "SUCCEEDED", "at": "2024-05-01T12:00:00.000000Z"}
    result = api.lambda_.invoke("on_job_state_change", _runner_event(api, stranger)).payload
    assert result["outcome"] == "unknown_job"
    foreign = api.events.generate_cw_event(source="aws.sagemaker", detail_type="X", detail={}, resources=[])
    assert api.lambda_.invoke("on_job_state_change", foreign).payload["outcome"] == "ignored"
