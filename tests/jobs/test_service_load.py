"""Load against a moto server: 200 concurrent submissions (some sharing idempotency keys), 2,000 events.

Every job exists exactly once, ends in exactly one terminal state, and the capacity counters
return to zero.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

from chalicelib.auth import Principal
from chalicelib.backends.base import ComputeBackend, LaunchResult
from chalicelib.jobs.model import TERMINAL, EventSource, FailureKind, JobEvent, JobStatus
from chalicelib.jobs.service import JobService
from chalicelib.jobs.spec import parse_spec
from tests.factories import make_settings

SUBMISSIONS = 200
KEYS = 150  # 50 submissions replay a key another submission uses
EVENTS = 2_000


class CountingBackend(ComputeBackend):
    name = "local"
    named_by_us = True  # keyed by the name it is given, as the local backend is

    def __init__(self, settings):
        super().__init__(settings)
        self.launches: list[str] = []

    def _launch_impl(self, job, handle):
        self.launches.append(handle.native_name)  # list.append is atomic under the GIL
        return LaunchResult(handle.native_name)

    def _describe_impl(self, handle):
        return None

    def _cancel_impl(self, handle):
        return None


def test_200_concurrent_submissions_and_2000_events_end_consistently(dynamo_store, tmp_path, moto_endpoint):
    settings = make_settings(tmp_path, moto_endpoint, JOBPLANE_CAPACITY_LIMITS="local:cpu=1000")
    backend = CountingBackend(settings)
    service = JobService(dynamo_store, settings, backend_factory=lambda *_: backend)
    rng = random.Random(20261126)
    users = [Principal(f"user{i}") for i in range(5)]
    requests = []
    for i in range(SUBMISSIONS):
        key = i if i < KEYS else rng.randrange(KEYS)
        requests.append(
            (users[key % 5], f"key-{key}", parse_spec({"name": f"job-{key}", "backend": "local", "command": ["true"]}))
        )
    rng.shuffle(requests)
    with ThreadPoolExecutor(max_workers=16) as pool:
        submitted = list(pool.map(lambda r: service.submit(r[0], r[2], r[1])[0], requests))

    by_key = {}
    for (user, key, _), job in zip(requests, submitted, strict=True):
        by_key.setdefault((user.user, key), set()).add(job.job_id)
    assert len(by_key) == KEYS
    assert all(len(ids) == 1 for ids in by_key.values())  # one key, one job
    job_ids = sorted({next(iter(ids)) for ids in by_key.values()})
    assert len(backend.launches) == len(set(backend.launches)) == KEYS  # no launch twice

    # 2,000 events: every job gets RUNNING, then a terminal; the rest are duplicates and stale replays,
    # all shuffled so that terminals often arrive before RUNNING.
    finals = {jid: rng.choice([JobStatus.SUCCEEDED, JobStatus.FAILED]) for jid in job_ids}
    events = []
    for jid in job_ids:
        events.append(JobEvent(jid, JobStatus.RUNNING, EventSource.BACKEND))
        events.append(JobEvent(jid, finals[jid], EventSource.BACKEND, failure_kind=FailureKind.USER_ERROR))
    while len(events) < EVENTS:
        jid = rng.choice(job_ids)
        events.append(
            rng.choice(
                [
                    JobEvent(jid, JobStatus.RUNNING, EventSource.BACKEND),
                    JobEvent(jid, JobStatus.LAUNCHING, EventSource.RECONCILE),
                    JobEvent(jid, finals[jid], EventSource.BACKEND, failure_kind=FailureKind.USER_ERROR),
                ]
            )
        )
    rng.shuffle(events)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(service.apply_event, events))

    for jid in job_ids:
        job = dynamo_store.get_job(jid)
        assert job.status is finals[jid]
        history = dynamo_store.history(jid)
        assert [e.to_status for e in history if e.to_status in TERMINAL] == [finals[jid]]
        assert job.claims == ()
    assert list(dynamo_store.iter_active()) == []
    assert dynamo_store.capacity_usage(["local:cpu"]) == {"local:cpu": 0}
