"""Monthly budgets: refused at submit with the figures, held in QUEUED, Slack at 80 % and 100 % once a month,
hard budgets stopping running jobs; spend from the month's jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib.auth import Principal
from chalicelib.budgets.model import month_of
from chalicelib.budgets.service import ended_jobs, evaluate_safely
from chalicelib.errors import BudgetExceededError, ForbiddenError, NotFoundError, ValidationError
from chalicelib.jobs.model import JobStatus, utcnow
from chalicelib.jobs.spec import parse_spec
from chalicelib.reaper import reconcile_all

ALICE = Principal("alice")


def _no_price():
    from chalicelib.pricing import Unknown

    return Unknown("no price in this test")


def spec(minutes=60, **extra):
    return parse_spec(
        {
            "name": "train",
            "command": ["python", "train.py"],
            "backend": "local",
            "max_runtime_minutes": minutes,
            **extra,
        }
    )


def test_a_submission_that_would_pass_a_refusing_budget_gets_a_400_with_the_figures(world):
    world.set(owner="alice", limit_usd=10)
    world.spent("alice", 9.0)
    with pytest.raises(BudgetExceededError) as caught:
        world.service.submit(ALICE, spec(minutes=60))  # may cost 60 min x $2/h = $2: 9 + 2 > 10
    error = caught.value
    assert error.STATUS_CODE == 400 and error.CODE == "budget_exceeded"
    month = month_of(utcnow())
    assert error.details == [
        {
            "field": "budget",
            "message": f"budget owner:alice: $9.00 of $10.00 spent in {month} (90 %); "
            "this job may cost up to $2.00 (60 min at $2.00/h)",
        }
    ]
    assert len(list(world.jobs.iter_created(utcnow() - timedelta(days=40)))) == 1  # nothing was stored
    job, created = world.service.submit(ALICE, spec(minutes=30))  # $1: exactly the limit, allowed
    assert created and job.status is JobStatus.LAUNCHING
    bob, _ = world.service.submit(Principal("bob"), spec(minutes=600))  # not alice's budget
    assert bob.status is JobStatus.LAUNCHING


def test_a_spent_budget_refuses_even_a_job_without_a_price(world):
    world.set(owner="alice", limit_usd=5)
    world.spent("alice", 5.0)
    world.backend("local", world.settings).hourly_quote = lambda spec, region, usage=None: ("local", _no_price())
    with pytest.raises(BudgetExceededError, match=r"\$5.00 of \$5.00 .*price is unknown"):
        world.service.submit(ALICE, spec())


def test_last_months_jobs_do_not_count_and_running_jobs_count_their_time_so_far(world):
    world.set(owner="alice", limit_usd=10)
    world.spent("alice", 100.0, created=utcnow().replace(day=1) - timedelta(days=2))
    world.running("alice", hours=3.0)  # $6 so far at $2/h
    [spend] = world.budgets.list(Principal("root", True))
    assert (spend.jobs, round(spend.spent_usd, 2), round(spend.percent)) == (1, 6.0, 60)
    world.service.submit(ALICE, spec(minutes=60))  # 6 + 2 <= 10
    with pytest.raises(BudgetExceededError, match="owner:alice"):
        world.service.submit(ALICE, spec(minutes=180))  # 6 + 2 + 6 > 10 (the first submission is running)


def test_a_holding_label_budget_keeps_the_job_queued_until_the_budget_has_room(world):
    world.set(label="team=vision", limit_usd=5, on_exceed="hold")
    world.spent("carol", 4.5, labels={"team": "vision"})
    job, created = world.service.submit(ALICE, spec(labels={"team": "vision"}))
    assert created and job.status is JobStatus.QUEUED
    assert job.status_reason.startswith("held by budget label:team=vision: $4.50 of $5.00 spent")
    other, _ = world.service.submit(ALICE, spec(labels={"team": "nlp"}))
    assert other.status is JobStatus.LAUNCHING
    reconcile_all(world.service)  # the queue is served: still no room
    assert world.jobs.get_job(job.job_id).status is JobStatus.QUEUED
    world.set(label="team=vision", limit_usd=50, on_exceed="hold")
    reconcile_all(world.service)
    assert world.jobs.get_job(job.job_id).status is JobStatus.LAUNCHING


def test_a_hard_budget_at_100_percent_stops_the_running_jobs_it_covers(world):
    world.set(owner="alice", limit_usd=3, hard=True)
    mine = world.running("alice", hours=2.0)  # $4 so far
    theirs = world.running("bob", hours=2.0)
    results = evaluate_safely(world.service, enqueue=lambda *_: None)
    assert results == [{"budgets": [{"job_id": mine.job_id, "budget": "owner:alice", "action": "stopped"}]}]
    stopped = world.jobs.get_job(mine.job_id)
    assert stopped.status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
    assert "stopped by hard budget owner:alice: $4.00 of $3.00" in world.jobs.history(mine.job_id)[-1].reason
    assert world.jobs.get_job(theirs.job_id).status is JobStatus.RUNNING


def test_a_soft_budget_at_100_percent_stops_nothing_and_reconcile_evaluates_only_with_active_jobs(world):
    world.set(owner="alice", limit_usd=3)
    mine = world.running("alice", hours=2.0)
    assert reconcile_all(world.service) is not None
    assert world.jobs.get_job(mine.job_id).status is JobStatus.RUNNING
    world.set(owner="alice", limit_usd=3, hard=True)
    results = reconcile_all(world.service)
    assert {"budgets": [{"job_id": mine.job_id, "budget": "owner:alice", "action": "stopped"}]} in results
    assert world.jobs.get_job(mine.job_id).status in (JobStatus.CANCELLING, JobStatus.CANCELLED)


def test_budgets_are_an_admins_and_are_validated(world):
    with pytest.raises(ForbiddenError):
        world.budgets.set(ALICE, {"owner": "alice", "limit_usd": 5})
    with pytest.raises(ForbiddenError):
        world.budgets.list(ALICE)
    bad = [
        ({"limit_usd": 5}, "owner"),
        ({"owner": "a", "label": "team=x", "limit_usd": 5}, "owner"),
        ({"owner": "a", "limit_usd": -1}, "limit_usd"),
        ({"owner": "a", "limit_usd": True}, "limit_usd"),
        ({"owner": "a", "limit_usd": "5"}, "limit_usd"),
        ({"label": "Team=x", "limit_usd": 5}, "label"),
        ({"label": "team", "limit_usd": 5}, "label"),
        ({"owner": "a b", "limit_usd": 5}, "owner"),
        ({"owner": "a", "limit_usd": 5, "on_exceed": "warn"}, "on_exceed"),
        ({"owner": "a", "limit_usd": 5, "hard": "yes"}, "hard"),
        ({"owner": "a", "limit_usd": 5, "monthly": True}, "monthly"),
    ]
    for body, field in bad:
        with pytest.raises(ValidationError) as caught:
            world.set(**body)
        assert caught.value.details[0]["field"] == field, body
    with pytest.raises(NotFoundError):
        world.budgets.delete(Principal("root", True), "owner:nobody")
    with pytest.raises(ValidationError):
        world.budgets.delete(Principal("root", True), "team=vision")


def test_a_stream_batch_asks_the_budgets_only_when_a_job_ended():
    def record(old, new):
        images = {"NewImage": {"status": {"S": new}}}
        if old:
            images["OldImage"] = {"status": {"S": old}}
        return {"eventName": "MODIFY", "dynamodb": images}

    assert ended_jobs([record("RUNNING", "SUCCEEDED")])
    assert ended_jobs([record("QUEUED", "LAUNCHING"), record("CANCELLING", "CANCELLED")])
    assert not ended_jobs([record("QUEUED", "LAUNCHING"), record(None, "QUEUED")])
    assert not ended_jobs([record("FAILED", "FAILED")])  # a later write to an ended job
