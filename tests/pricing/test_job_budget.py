"""Cost over a job's life: per attempt and summed over retries and failovers, live in reconcile, max_cost_usd
stops it, and max_price_per_hour / max_cost_usd decide where it may run."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from chalicelib.auth import Principal
from chalicelib.errors import CapacityError, ValidationError
from chalicelib.jobs.model import EventSource, FailureKind, JobEvent, JobStatus, utcnow
from chalicelib.jobs.service import JobService
from chalicelib.pricing import Price, Unknown
from chalicelib.reaper import Action, reconcile
from tests.factories import ScriptedBackend, make_settings, noop_spec

ALICE = Principal("alice")
PRICES_OF = date(2026, 1, 21)


class PricedBackend(ScriptedBackend):
    """A scripted provider whose attempts the catalog prices at `rate` per hour (None: unknown)."""

    rate: float | None = 2.0

    def hourly_quote(self, spec, region, usage=None):
        if self.rate is None:
            return f"{self.name}", Unknown(f"{self.name} has no price here")
        return f"{self.name} box", Price(self.rate, PRICES_OF, "test table")


def setup(store, tmp_path, rates: dict[str, float | None], scripts: dict | None = None):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS=",".join(rates))
    backends = {}
    for name, rate in rates.items():
        backend = PricedBackend(settings, (scripts or {}).get(name, ()))
        backend.name, backend.rate = name, rate
        backends[name] = backend
    return JobService(store, settings, backend_factory=lambda name, _settings: backends[name]), backends


def event(job, status, at, **kw):
    return JobEvent(job.job_id, status, EventSource.BACKEND, at=at, attempt=kw.pop("attempt", job.attempt), **kw)


def test_each_attempt_is_priced_on_its_own_and_the_retries_are_summed(memory_store, tmp_path):
    service, _ = setup(memory_store, tmp_path, {"local": 2.0})
    spec = noop_spec(image="train:1", retries={"max_attempts": 2, "on": ["interruption"]})
    job, _ = service.submit(ALICE, spec)
    t0 = utcnow() - timedelta(hours=3)
    job = service.apply_event(event(job, JobStatus.RUNNING, t0))
    assert job.costs[0].usd == 0.0 and job.costs[0].usd_per_hour == 2.0 and not job.costs[0].final
    interrupted = event(job, JobStatus.FAILED, t0 + timedelta(minutes=30), failure_kind=FailureKind.INTERRUPTED)
    job = service.apply_event(interrupted)
    assert (job.status, job.attempt) == (JobStatus.LAUNCHING, 2)
    assert job.costs[0].final and job.costs[0].usd == pytest.approx(1.0)  # 30 minutes at $2/h
    job = service.apply_event(event(job, JobStatus.RUNNING, t0 + timedelta(minutes=40)))
    done = service.apply_event(event(job, JobStatus.SUCCEEDED, t0 + timedelta(minutes=100)))
    assert [(c.attempt, c.hours, c.usd, c.final) for c in done.costs] == [
        (1, 0.5, pytest.approx(1.0), True),
        (2, 1.0, pytest.approx(2.0), True),
    ]
    assert done.cost_estimate_usd == pytest.approx(3.0)
    shown = done.to_api()["cost"]
    assert (shown["usd"], shown["prices_of"], shown["final"]) == (3.0, "2026-01-21", True)
    assert shown["text"] == "$3.00 (prices of 2026-01-21)"
    # a late duplicate of attempt 1's end changes nothing
    assert service.apply_event(interrupted).costs == done.costs


def test_a_failover_to_a_pricier_backend_sums_each_attempt_at_its_own_rate(memory_store, tmp_path):
    service, _ = setup(memory_store, tmp_path, {"local": 1.0, "ec2": 4.0})
    job, _ = service.submit(ALICE, noop_spec(image="train:1", backend="local", fallback=["ec2"]))
    t0 = utcnow() - timedelta(hours=2)
    # SageMaker-style: the provider accepted the job, then had no capacity before it started
    job = service.apply_event(
        event(job, JobStatus.FAILED, t0, failure_kind=FailureKind.NO_CAPACITY, reason="CapacityError")
    )
    assert (job.backend, job.attempt) == ("ec2", 2)
    job = service.apply_event(event(job, JobStatus.RUNNING, t0 + timedelta(minutes=10)))
    done = service.apply_event(event(job, JobStatus.SUCCEEDED, t0 + timedelta(minutes=40)))
    assert [(c.backend, c.usd) for c in done.costs] == [("local", 0.0), ("ec2", pytest.approx(2.0))]
    assert done.cost_estimate_usd == pytest.approx(2.0)


def test_an_unknown_price_is_an_unknown_cost_with_its_reason_never_zero(memory_store, tmp_path):
    service, _ = setup(memory_store, tmp_path, {"local": None})
    job, _ = service.submit(ALICE, noop_spec(image="train:1"))
    t0 = utcnow() - timedelta(hours=1)
    job = service.apply_event(event(job, JobStatus.RUNNING, t0))
    done = service.apply_event(event(job, JobStatus.SUCCEEDED, t0 + timedelta(minutes=30)))
    assert done.cost_estimate_usd is None
    shown = done.to_api()["cost"]
    assert shown["usd"] is None and shown["text"] == "unknown (attempt 1: local has no price here)"


def test_reconcile_keeps_a_running_jobs_cost_live_and_writes_it_only_when_it_moved(memory_store, tmp_path):
    service, _ = setup(memory_store, tmp_path, {"local": 3.0})
    job, _ = service.submit(ALICE, noop_spec(image="train:1"))
    job = service.apply_event(event(job, JobStatus.RUNNING, utcnow() - timedelta(hours=2)))
    reconcile(service)
    live = memory_store.get_job(job.job_id)
    assert live.cost_estimate_usd == pytest.approx(6.0, abs=0.01) and not live.costs[0].final
    assert service.current_cost(live).usd == pytest.approx(6.0, abs=0.01)
    updated = live.updated_at
    reconcile(service)  # a second later the figure moved by far less than a cent: no write
    assert memory_store.get_job(job.job_id).updated_at == updated
    assert memory_store.get_job(job.job_id).costs == live.costs


def test_reconcile_stops_a_running_job_that_reached_max_cost_usd_with_the_figures(memory_store, tmp_path):
    service, backends = setup(memory_store, tmp_path, {"local": 3.0})
    spec = noop_spec(image="train:1", max_cost_usd=5.0, max_runtime_minutes=60)
    job, _ = service.submit(ALICE, spec)
    job = service.apply_event(event(job, JobStatus.RUNNING, utcnow() - timedelta(hours=2)))
    decisions = [d for d in reconcile(service) if d.job_id == job.job_id]
    assert [d.action for d in decisions] == [Action.STOP_BUDGET]
    assert decisions[0].reason.startswith("cost $6.0") and "reached max_cost_usd $5.0000" in decisions[0].reason
    stopped = memory_store.get_job(job.job_id)
    assert (stopped.status, stopped.failure_kind) == (JobStatus.FAILED, FailureKind.BUDGET)
    assert "reached max_cost_usd $5.0000 (prices of 2026-01-21)" in stopped.failure_reason
    assert stopped.costs[0].final and stopped.cost_estimate_usd == pytest.approx(6.0, abs=0.01)
    assert backends["local"].resources == {}  # the provider was told to stop it


def test_a_job_under_its_cap_runs_on(memory_store, tmp_path):
    service, _ = setup(memory_store, tmp_path, {"local": 3.0})
    job, _ = service.submit(ALICE, noop_spec(image="train:1", max_cost_usd=10.0, max_runtime_minutes=60))
    job = service.apply_event(event(job, JobStatus.RUNNING, utcnow() - timedelta(hours=1)))
    assert [d.action for d in reconcile(service) if d.job_id == job.job_id] == [Action.NONE]
    assert memory_store.get_job(job.job_id).status is JobStatus.RUNNING


# --- where a capped job may run -------------------------------------------------------------------------
def test_max_cost_usd_refuses_at_submit_a_job_whose_cheapest_candidate_costs_more_at_max_runtime(
    memory_store, tmp_path
):
    service, _ = setup(memory_store, tmp_path, {"local": 3.0, "ec2": 2.0})
    spec = noop_spec(image="train:1", backend="local", fallback=["ec2"], max_cost_usd=5.0, max_runtime_minutes=180)
    with pytest.raises(ValidationError) as err:
        service.submit(ALICE, spec)
    detail = err.value.details[0]
    assert detail["field"] == "max_cost_usd"
    assert detail["message"] == (
        "the cheapest candidate, ec2 at $2.00/h (prices of 2026-01-21), costs $6.00 over max_runtime_minutes 180, "
        "more than max_cost_usd $5.00; raise max_cost_usd or set max_runtime_minutes to at most 150"
    )
    assert memory_store.iter_active() is not None and list(memory_store.iter_active()) == []


def test_max_cost_usd_refuses_a_job_no_candidate_of_which_has_a_known_price(memory_store, tmp_path):
    service, _ = setup(memory_store, tmp_path, {"local": None})
    with pytest.raises(ValidationError) as err:
        service.submit(ALICE, noop_spec(image="train:1", max_cost_usd=5.0))
    assert err.value.details == [
        {"field": "max_cost_usd", "message": "local: no known price (local has no price here)"}
    ]


def test_max_price_per_hour_keeps_only_candidates_at_or_under_it_cheapest_first(memory_store, tmp_path):
    service, backends = setup(memory_store, tmp_path, {"local": 3.0, "ec2": 1.0, "aws-batch": 2.0})
    spec = noop_spec(image="train:1", backend="local", fallback=["ec2", "aws-batch"], max_price_per_hour=2.0)
    job, _ = service.submit(ALICE, spec)
    assert job.candidates == ("ec2", "aws-batch")  # local at $3/h is over the cap; the rest by price
    assert job.backend == "ec2"
    assert [b.launch_calls for b in backends.values()] == [0, 1, 0]
    with pytest.raises(ValidationError) as err:
        service.submit(ALICE, spec.with_changes(max_price_per_hour=0.5))
    assert err.value.details[0]["field"] == "max_price_per_hour"
    assert "ec2: $1.00/h (prices of 2026-01-21) is over max_price_per_hour $0.50/h" in err.value.details[0]["message"]


def test_failover_never_leaves_the_allowed_candidates(memory_store, tmp_path):
    service, backends = setup(
        memory_store, tmp_path, {"local": 1.0, "ec2": 9.0, "aws-batch": 1.5}, {"local": [CapacityError("none")]}
    )
    spec = noop_spec(image="train:1", backend="local", fallback=["ec2", "aws-batch"], max_price_per_hour=2.0)
    job, _ = service.submit(ALICE, spec)
    assert job.candidates == ("local", "aws-batch") and job.backend == "aws-batch"
    assert backends["ec2"].launch_calls == 0


def test_auto_with_a_price_cap_picks_the_cheapest_allowed_backend(tmp_path):
    from chalicelib.jobs.spec import parse_spec
    from chalicelib.planner import plan

    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="sagemaker,ec2")
    spec = parse_spec(
        {"name": "t", "image": "train:1", "command": ["t"], "resources": {"gpus": 1, "gpu_type": "A10G", "spot": True}}
    )
    assert plan(spec, settings)[0] == "sagemaker"  # by rank
    name, why = plan(spec.with_changes(max_price_per_hour=5.0), settings)
    # ec2 spot g5.xlarge is far under SageMaker's managed spot, which bills the on-demand rate
    assert name == "ec2" and "the cheapest allowed at $0.4591/h (prices of 2026-01-21)" in why
    with pytest.raises(ValidationError) as err:
        plan(spec.with_changes(max_price_per_hour=0.1), settings)
    assert err.value.details[0]["field"] == "backend"
    assert "is over max_price_per_hour $0.10/h" in err.value.details[0]["message"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_cost_usd", 0, "greater than 0"),
        ("max_cost_usd", "ten", "a number"),
        ("max_price_per_hour", -1, "greater than 0"),
    ],
)
def test_bad_caps_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValidationError) as err:
        noop_spec(image="train:1", **{field: value})
    assert err.value.details[0]["field"] == field and message in err.value.details[0]["message"]


# --- where the cost is shown and kept ----------------------------------------------------------------------
def test_every_message_that_ends_a_job_shows_its_cost_with_the_catalog_date():
    from chalicelib.notify.messages import Kind, build_message
    from chalicelib.pricing.jobs import AttemptCost
    from tests.factories import failed_job, finished_job

    priced = (AttemptCost(1, "sagemaker", None, "sagemaker ml.g5.xlarge", 1.408, "2026-09-24", 1.0, 1.408, final=True),)
    for job, kind in ((finished_job(costs=priced), Kind.SUCCEEDED), (failed_job(costs=priced), Kind.FAILED)):
        message = build_message(job, kind, "us-east-1")
        assert message["text"].endswith("est. $1.41 (prices of 2026-09-24)")
        fields = [f["text"] for f in message["blocks"][1]["fields"]]
        assert "*Estimated cost*\n$1.41 (prices of 2026-09-24)" in fields
    unknown = (AttemptCost(1, "vertex", None, "vertex", None, None, 1.0, None, "no <Vertex> price", final=True),)
    fields = [f["text"] for f in build_message(finished_job(costs=unknown), Kind.SUCCEEDED, "r")["blocks"][1]["fields"]]
    assert "*Estimated cost*\nunknown (attempt 1: no &lt;Vertex&gt; price)" in fields


def test_both_stores_keep_each_attempts_cost(store, tmp_path):
    service, _ = setup(store, tmp_path, {"local": 2.0})
    job, _ = service.submit(ALICE, noop_spec(image="train:1", retries={"max_attempts": 2, "on": ["interruption"]}))
    t0 = utcnow() - timedelta(hours=1)
    job = service.apply_event(event(job, JobStatus.RUNNING, t0))
    job = service.apply_event(event(job, JobStatus.FAILED, t0, failure_kind=FailureKind.INTERRUPTED))
    job = service.apply_event(event(job, JobStatus.RUNNING, t0 + timedelta(minutes=1)))
    reconcile(service)  # the live figure of attempt 2, through update_job
    stored = store.get_job(job.job_id)
    assert [(c.attempt, c.final) for c in stored.costs] == [(1, True), (2, False)]
    assert stored.costs[1].usd == pytest.approx(2.0 * 59 / 60, abs=0.01)
    assert stored.to_api()["cost"]["usd"] == pytest.approx(stored.cost_estimate_usd, abs=1e-4)


def test_a_long_running_jobs_live_cost_is_written_under_a_hundred_times_not_every_tick(memory_store, tmp_path):
    from chalicelib.pricing.jobs import merged, total

    service, backends = setup(memory_store, tmp_path, {"local": 4.0})
    job, _ = service.submit(ALICE, noop_spec(image="train:1"))
    start = utcnow() - timedelta(hours=10)
    job = service.apply_event(event(job, JobStatus.RUNNING, start))
    writes, shown_behind = 0, 0.0
    for minute in range(1, 601):  # a tick a minute for 10 hours at $4/h
        now = start + timedelta(minutes=minute)
        figure = backends["local"].attempt_cost(job, now)
        after = service.record_live_cost(job, figure)
        writes += after is not job
        job = after
        truth = total(merged(job.costs, figure)).usd
        shown_behind = max(shown_behind, (truth - job.cost_estimate_usd) / truth)
    assert job.cost_estimate_usd == pytest.approx(40.0, rel=0.05)
    assert writes <= 100 and shown_behind < 0.05  # 81 of 600 ticks; what GET shows stays within 5 %


class PlacedBackend(PricedBackend):
    """A provider whose price depends on the placement, which describe() reads and a batched list does not."""

    priced_by_placement = True

    def __init__(self, settings, script=()):
        super().__init__(settings, script)
        self.describes = 0

    def _describe_impl(self, handle):
        from dataclasses import replace

        from chalicelib.pricing.jobs import Usage

        self.describes += 1
        seen = super()._describe_impl(handle)
        return None if seen is None else replace(seen, usage=Usage("g5.xlarge", 1, None))

    def _describe_many_impl(self, handles):
        from dataclasses import replace

        found = {h.job_id: super(PlacedBackend, self)._describe_impl(h) for h in handles}
        return {k: v and replace(v, usage=None) for k, v in found.items()}

    def hourly_quote(self, spec, region, usage=None):
        if usage is None or not usage.instance_type:
            return self.name, Unknown("not placed yet")
        return f"{self.name} {usage.instance_type}", Price(2.0, PRICES_OF, "test table")


def test_a_job_whose_price_depends_on_its_placement_is_described_once_to_learn_it(memory_store, tmp_path):
    settings = make_settings(tmp_path, JOBPLANE_BACKENDS="local")
    backend = PlacedBackend(settings)
    service = JobService(memory_store, settings, backend_factory=lambda *_: backend)
    job, _ = service.submit(ALICE, noop_spec(image="train:1"))
    # its start reached us without the placement (as a reconcile of a batched read applies it)
    job = service.apply_event(event(job, JobStatus.RUNNING, utcnow() - timedelta(hours=1)))
    assert backend.describes == 1
    assert (job.costs[0].instance_type, job.costs[0].usd_per_hour) == ("g5.xlarge", 2.0)
    reconcile(service)
    reconcile(service)
    live = memory_store.get_job(job.job_id)
    assert backend.describes == 1  # in-sync ticks read the batch only: the record says where it runs
    assert live.costs[0].usd == pytest.approx(2.0, abs=0.01)
