"""The budget and cost routes through Chalice's test client on moto: admin-only, validated, documented; the cost
report's totals against the jobs that made them, read with one Query and no Scan."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import pytest

from chalicelib.jobs.model import JobStatus, utcnow
from tests.factories import ApiClient, BudgetWorld, count_dynamodb, make_settings, make_stores, use_stores


@pytest.fixture
def api(tmp_path, moto_endpoint):
    from chalice.test import Client

    from chalicelib import deps

    settings = make_settings(tmp_path, moto_endpoint)
    stores = make_stores(settings)
    world = BudgetWorld(settings, jobs=stores["jobs"], budget_store=stores["budgets"])
    use_stores(settings, stores, service=world.service, budget_store=stores["budgets"], budget_service=world.budgets)
    import app as app_module

    with Client(app_module.app) as client:
        api = ApiClient(client, stores)
        api.world = world
        yield api
    deps.reset()


def body(response):
    import json

    return json.loads(response.body)


def test_an_admin_sets_lists_and_deletes_budgets_and_no_one_else_can(api):
    root, alice = api.token("root", admin=True), api.token("alice")
    made = api.request("POST", "/budgets", root, {"label": "team=vision", "limit_usd": 500, "on_exceed": "hold"})
    assert made.status_code == 200
    assert body(made)["budget_id"] == "label:team=vision" and body(made)["on_exceed"] == "hold"
    api.world.spent("carol", 125.0, labels={"team": "vision"})
    [listed] = body(api.request("GET", "/budgets", root))["budgets"]
    assert (listed["spent_usd"], listed["percent"], listed["jobs"]) == (125.0, 25.0, 1)
    for method, path, payload in (
        ("GET", "/budgets", None),
        ("POST", "/budgets", {"owner": "alice", "limit_usd": 1e6}),
        ("DELETE", "/budgets/label:team=vision", None),
    ):
        refused = api.request(method, path, alice, payload)
        assert refused.status_code == 403 and body(refused)["error"]["code"] == "forbidden"
        assert api.request(method, path, None, payload).status_code == 401
    gone = api.request("DELETE", "/budgets/" + quote("label:team=vision", safe=""), root)
    assert gone.status_code == 200 and body(gone)["budget_id"] == "label:team=vision"
    assert api.request("DELETE", "/budgets/label:team=vision", root).status_code == 404
    assert body(api.request("GET", "/budgets", root))["budgets"] == []


def test_a_bad_budget_is_a_400_naming_the_field(api):
    root = api.token("root", admin=True)
    for payload, field in (
        ({"owner": "alice", "limit_usd": 0}, "limit_usd"),
        ({"label": "team", "limit_usd": 5}, "label"),
        ([1, 2], "(body)"),
    ):
        answer = api.request("POST", "/budgets", root, payload)
        assert answer.status_code == 400, payload
        assert body(answer)["error"]["details"][0]["field"] == field
    answer = api.request("POST", "/budgets", root, "{not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert api.request("DELETE", "/budgets/nonsense", root).status_code == 400


def test_a_submission_past_a_budget_is_a_400_naming_the_budget(api):
    root, alice = api.token("root", admin=True), api.token("alice")
    api.request("POST", "/budgets", root, {"owner": "alice", "limit_usd": 10})
    api.world.spent("alice", 9.5)
    spec = {"name": "train", "command": ["python", "train.py"], "backend": "local", "max_runtime_minutes": 60}
    refused = api.request("POST", "/jobs", alice, spec)
    assert refused.status_code == 400
    error = body(refused)["error"]
    assert error["code"] == "budget_exceeded" and error["details"][0]["field"] == "budget"
    assert "owner:alice: $9.50 of $10.00" in error["message"] and "$2.00" in error["message"]


def test_the_cost_report_totals_are_the_jobs_that_made_them_read_with_one_query(api):
    root, alice = api.token("root", admin=True), api.token("alice")
    world = api.world
    now = utcnow()
    made = [
        world.spent("alice", 1.25, labels={"team": "vision"}),
        world.spent("alice", 2.5, labels={"team": "vision", "project": "resnet"}),
        world.spent("bob", 4.0, labels={"team": "nlp"}),
        world.spent("bob", 0.75, status=JobStatus.FAILED),
    ]
    running = world.running("carol", hours=0.5)  # $1 so far, live
    world.spent("alice", 99.0, created=now - timedelta(days=70))  # before --since: not in the report
    since = (now - timedelta(days=35)).strftime("%Y-%m-%d")
    counts = count_dynamodb(api.store)
    report = body(api.request("GET", f"/cost?since={since}&by=label", root))
    assert dict(counts) == {"Query": 1}  # one range Query of the all-jobs index; no Scan
    rows = report["rows"]
    # newest first: the running job was submitted half an hour before the others
    assert [r["job_id"] for r in rows] == [j.job_id for j in reversed(made)] + [running.job_id]
    expected = sum(j.cost_estimate_usd for j in made) + 1.0
    assert report["total"]["jobs"] == 5
    assert report["total"]["cost_usd"] == pytest.approx(expected, abs=0.01)
    assert report["total"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert all(r["hourly_price_usd"] == 2.0 for r in rows)
    groups = {g["key"]: (g["jobs"], g["cost_usd"]) for g in report["groups"]}
    assert groups["team=vision"] == (2, 3.75)
    assert groups["project=resnet"] == (1, 2.5)
    assert groups["team=nlp"] == (1, 4.0)
    assert groups["(no labels)"][0] == 2
    first = next(r for r in rows if r["job_id"] == made[0].job_id)
    assert first["name"] == made[0].name and first["status"] == "SUCCEEDED" and first["resources"]
    assert first["duration_seconds"] == pytest.approx(1.25 / 2.0 * 3600)
    by_owner = body(api.request("GET", f"/cost?since={since}&by=owner", root))
    owners = {g["key"]: g["cost_usd"] for g in by_owner["groups"]}
    assert owners == {"alice": 3.75, "bob": 4.75, "carol": pytest.approx(1.0, abs=0.01)}
    assert sum(owners.values()) == pytest.approx(by_owner["total"]["cost_usd"])
    mine = body(api.request("GET", f"/cost?since={since}", alice))
    assert mine["scope"] == "owner alice" and mine["total"] == {
        "jobs": 2,
        "cost_usd": 3.75,
        "unpriced_jobs": 0,
        "hours": pytest.approx(3.75 / 2.0),
    }


def test_a_bad_report_query_is_a_400_naming_the_parameter(api):
    alice = api.token("alice")
    for query, field in (("by=team", "by"), ("since=yesterday", "since"), ("since=2999-01-01", "since")):
        answer = api.request("GET", f"/cost?{query}", alice)
        assert answer.status_code == 400 and body(answer)["error"]["details"][0]["field"] == field
    assert api.request("GET", "/cost").status_code == 401


def test_the_notify_stream_batch_where_a_job_ends_applies_a_hard_budget(api):
    from chalicelib.jobs.model import JobStatus as S

    root = api.token("root", admin=True)
    api.request("POST", "/budgets", root, {"owner": "alice", "limit_usd": 3, "hard": True})
    running = api.world.running("alice", hours=2.0)  # $4 so far: past the limit
    ended = api.world.spent("alice", 0.5)
    before = api.store._item(ended.with_changes(status=S.RUNNING)).serialize()
    after = api.store._item(ended).serialize()
    record = {
        "eventID": "1",
        "eventName": "MODIFY",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {"OldImage": before, "NewImage": after, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:000000000000:table/jobs/stream/latest",
    }
    quiet = {**record, "dynamodb": {**record["dynamodb"], "OldImage": after}}  # no job ended: budgets not read
    api.lambda_.invoke("notify", {"Records": [quiet]})
    assert api.store.get_job(running.job_id).status is S.RUNNING
    api.lambda_.invoke("notify", {"Records": [record]})
    assert api.store.get_job(running.job_id).status in (S.CANCELLING, S.CANCELLED)
