"""GET /jobs?updated_since= (what the dashboard polls) and GET /whoami, through Chalice's test client on moto."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import jsonschema
import pytest

from chalicelib.jobs.model import JobStatus, iso, utcnow
from tests.factories import job_spec, make_history, make_job


def seed(api, owner, n, status=JobStatus.QUEUED) -> list[str]:
    """Jobs written straight to the store, oldest first (no processes)."""
    base = utcnow()
    ids = []
    for i in range(n):
        job = make_job(
            "local", job_spec(f"seed-{i}"), owner=owner, status=status, created_at=base + timedelta(seconds=i)
        )
        api.store.create_job(job, make_history(job, reason="seeded"))
        ids.append(job.job_id)
    return ids


def error_of(response, status) -> dict:
    assert response.status_code == status, response.body
    return response.json_body["error"]


def _doc(api):
    response = api.request("GET", "/openapi.json")
    assert response.status_code == 200
    return response.json_body


def _check(doc, response, path, method):
    """Validate one real response against the description of its status code."""
    described = doc["paths"][path][method]["responses"][str(response.status_code)]
    schema = described["content"]["application/json"]["schema"]
    jsonschema.validate(
        response.json_body, {"components": doc["components"], **schema}, cls=jsonschema.Draft202012Validator
    )


@pytest.fixture
def alice(api):
    return api.token("alice")


@pytest.fixture
def bob(api):
    return api.token("bob")


def _mark() -> str:
    time.sleep(0.002)
    mark = iso(utcnow())
    time.sleep(0.002)
    return mark


def _listed(api, token, query):
    response = api.request("GET", "/jobs?" + query, token=token)
    assert response.status_code == 200, response.body
    return response.json_body


def test_only_the_jobs_written_since_come_back_and_as_of_is_the_next_since(api, alice):
    ids = seed(api, "alice", 5)
    before = utcnow()
    body = _listed(api, alice, "limit=100")
    body_as_of = body["as_of"]
    as_of = datetime.fromisoformat(body_as_of)
    assert body["as_of"].endswith("Z") and as_of.tzinfo is not None
    assert before - timedelta(seconds=31) <= as_of <= before - timedelta(seconds=29)  # 30 s of overlap
    mark = _mark()
    assert _listed(api, alice, f"updated_since={mark}")["jobs"] == []
    cancelled = api.request("POST", f"/jobs/{ids[2]}/cancel", token=alice)
    assert cancelled.status_code == 202, cancelled.body
    body = _listed(api, alice, f"updated_since={mark}")
    assert [j["job_id"] for j in body["jobs"]] == [ids[2]]
    assert body["jobs"][0]["status"] == "CANCELLED" and body["next_token"] is None
    # The as_of of the first answer (30 s back) still holds every job written since.
    assert len(_listed(api, alice, "updated_since=" + body_as_of)["jobs"]) == 5


def test_a_user_sees_only_their_own_changes_and_an_admin_everyones(api, alice, bob):
    mark = _mark()
    seed(api, "alice", 2)
    (bobs,) = seed(api, "bob", 1)
    assert [j["job_id"] for j in _listed(api, bob, f"updated_since={mark}")["jobs"]] == [bobs]
    admin = api.token("root", admin=True)
    assert len(_listed(api, admin, f"updated_since={mark}")["jobs"]) == 3


def test_changes_page_with_a_token_of_their_own(api, alice, bob):
    mark = _mark()
    ids = seed(api, "alice", 5)
    seen, token = [], None
    for _ in range(10):
        body = _listed(api, alice, f"updated_since={mark}&limit=2" + (f"&next_token={token}" if token else ""))
        seen.extend(j["job_id"] for j in body["jobs"])
        token = body["next_token"]
        if token is None:
            break
    assert seen == ids  # least recently written first
    first = _listed(api, alice, f"updated_since={mark}&limit=2")["next_token"]
    for query, who in (
        (f"limit=2&next_token={first}", alice),  # a changes token is not a newest-first token
        (f"updated_since=2020-01-01T00:00:00Z&limit=2&next_token={first}", alice),  # nor another time's
        (f"updated_since={mark}&limit=2&next_token={first}", bob),  # nor another user's
    ):
        assert error_of(api.request("GET", "/jobs?" + query, token=who), 400)["details"][0]["field"] == "next_token"


def test_a_bad_updated_since_is_a_400_naming_it(api, alice):
    for value in (
        "yesterday",
        "2026-01-01",
        "2026-01-01T00:00:00",  # no zone: whose midnight?
        "2026-13-01T00:00:00Z",
        "1700000000",
        "",
        "2026-01-01T00:00:00 00:00",  # a + sent unencoded reads as a space
    ):
        error = error_of(api.request("GET", f"/jobs?updated_since={value}", token=alice), 400)
        assert error["code"] == "invalid_request"
        assert error["details"][0]["field"] == "updated_since", value
        assert "ISO 8601" in error["details"][0]["message"]
    spaced = error_of(api.request("GET", "/jobs?updated_since=2026-01-01T00:00:00 00:00", token=alice), 400)
    assert "%2B" in spaced["message"]
    both = error_of(api.request("GET", "/jobs?updated_since=2026-01-01T00:00:00Z&status=FAILED", token=alice), 400)
    assert both["details"][0]["field"] == "updated_since" and "status" in both["details"][0]["message"]
    offset = _listed(api, alice, "updated_since=2026-01-01T01:00:00%2B01:00")  # an offset is taken as given
    assert offset["jobs"] == []


def test_the_answers_match_their_description(api, alice):
    doc = _doc(api)
    seed(api, "alice", 2, JobStatus.RUNNING)
    _check(doc, api.request("GET", "/jobs?updated_since=2020-01-01T00:00:00Z&limit=1", token=alice), "/jobs", "get")
    _check(doc, api.request("GET", "/jobs?updated_since=soon", token=alice), "/jobs", "get")
    _check(doc, api.request("GET", "/whoami", token=alice), "/whoami", "get")
    _check(doc, api.request("GET", "/whoami"), "/whoami", "get")


def test_whoami_names_the_tokens_user(api, alice):
    assert api.request("GET", "/whoami", token=alice).json_body == {"user": "alice", "admin": False}
    admin = api.token("root", admin=True)
    assert api.request("GET", "/whoami", token=admin).json_body == {"user": "root", "admin": True}
    assert api.request("GET", "/whoami").status_code == 401
    assert api.request("GET", "/whoami", token="jp_forged").status_code == 401
