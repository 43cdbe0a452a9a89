"""The pure state machine: decide(job, event) tables and properties over any order of events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.jobs.capacity import Claim
from chalicelib.jobs.machine import decide
from chalicelib.jobs.model import TERMINAL, EventSource, FailureKind, Job, JobEvent, JobStatus
from chalicelib.store.base import apply_changes
from tests import factories

Q, L, R, C, S, F, X = (
    JobStatus.QUEUED,
    JobStatus.LAUNCHING,
    JobStatus.RUNNING,
    JobStatus.CANCELLING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
JOB_ID = "0123456789abcdef0123456789abcdef"


def make_job(status=Q, attempt=1, retries=None, **changes) -> Job:
    """The factory's job with this module's fixed id and clock, so decide()'s tables can be read as data."""
    spec = {"command": ["true"]} if retries is None else {"command": ["true"], "retries": retries}
    return factories.make_job("local", spec, job_id=JOB_ID, attempt=attempt, status=status, created_at=T0, **changes)


def event(status, seconds=1, **kw) -> JobEvent:
    return JobEvent(JOB_ID, status, kw.pop("source", EventSource.BACKEND), at=T0 + timedelta(seconds=seconds), **kw)


def apply(job: Job, ev: JobEvent) -> Job:
    transition = decide(job, ev)
    return job if transition is None else apply_changes(job, transition)


# --- tables ---------------------------------------------------------------------------

FORWARD = [
    (Q, L, L),
    (Q, R, R),
    (Q, S, S),
    (Q, F, F),
    (Q, X, X),
    (L, R, R),
    (L, S, S),
    (L, F, F),
    (R, S, S),
    (R, F, F),
    (R, X, X),
    (C, S, S),
    (C, X, X),
    (L, C, C),
    (R, C, C),
]


@pytest.mark.parametrize(("current", "incoming", "expected"), FORWARD)
def test_a_forward_event_moves_the_job(current, incoming, expected):
    transition = decide(make_job(current), event(incoming, reason="because"))
    assert transition is not None
    assert transition.job_id == JOB_ID
    assert transition.from_status is current
    assert transition.to_status is expected
    assert transition.reason == "because"
    assert transition.source is EventSource.BACKEND
    assert transition.at == T0 + timedelta(seconds=1)


@pytest.mark.parametrize("status", [Q, L, R, C])
def test_a_duplicate_of_the_current_status_decides_nothing(status):
    assert decide(make_job(status), event(status)) is None


@pytest.mark.parametrize(
    ("current", "incoming"),
    [(L, Q), (R, Q), (R, L), (C, Q), (C, L), (C, R)],
)
def test_an_out_of_order_event_that_would_move_backwards_decides_nothing(current, incoming):
    assert decide(make_job(current), event(incoming)) is None


@pytest.mark.parametrize("terminal", sorted(TERMINAL, key=lambda s: s.value))
@pytest.mark.parametrize("incoming", list(JobStatus))
def test_a_terminal_job_is_sticky(terminal, incoming):
    job = make_job(terminal, finished_at=T0)
    assert decide(job, event(incoming, failure_kind=FailureKind.INTERRUPTED)) is None


def test_cancelling_a_queued_job_cancels_it_at_once():
    transition = decide(make_job(Q), event(C, source=EventSource.API, reason="cancel requested by alice"))
    assert transition.to_status is X
    assert transition.reason == "cancel requested by alice"
    assert transition.changes["finished_at"] == T0 + timedelta(seconds=1)
    assert "failure_kind" not in transition.changes


def test_cancelling_twice_decides_nothing_the_second_time():
    assert decide(make_job(C), event(C, source=EventSource.API)) is None


def test_a_failure_while_cancelling_is_the_cancel_taking_effect():
    transition = decide(make_job(C), event(F, reason="killed by signal SIGTERM", failure_kind=FailureKind.USER_ERROR))
    assert transition.to_status is X
    assert transition.reason == "cancelled (killed by signal SIGTERM)"
    assert "failure_kind" not in transition.changes
    assert transition.changes["finished_at"] == T0 + timedelta(seconds=1)


def test_a_failure_without_a_kind_is_a_backend_error():
    transition = decide(make_job(R), event(F, reason="instance lost"))
    assert transition.to_status is F
    assert transition.changes["failure_kind"] is FailureKind.BACKEND_ERROR
    assert transition.changes["failure_reason"] == "instance lost"


def test_a_failure_keeps_its_kind_and_falls_back_to_the_native_status_for_a_reason():
    transition = decide(make_job(R), event(F, failure_kind=FailureKind.USER_ERROR, native_status="Failed"))
    assert transition.changes["failure_kind"] is FailureKind.USER_ERROR
    assert transition.changes["failure_reason"] == "Failed"


def test_running_sets_started_at_once_and_terminal_sets_finished_at():
    running = decide(make_job(L), event(R, seconds=5))
    assert running.changes["started_at"] == T0 + timedelta(seconds=5)
    job = make_job(R, started_at=T0 + timedelta(seconds=5))
    done = decide(job, event(S, seconds=60))
    assert "started_at" not in done.changes
    assert done.changes["finished_at"] == T0 + timedelta(seconds=60)


def test_a_late_terminal_event_still_records_when_the_work_began():
    transition = decide(make_job(L), event(S, seconds=90, started_at=T0 + timedelta(seconds=30)))
    assert transition.changes["started_at"] == T0 + timedelta(seconds=30)


def test_an_event_carries_the_native_id_onto_the_job():
    transition = decide(make_job(L, native_id="jp-old"), event(R, native_id="jp-new"))
    assert transition.changes["native_id"] == "jp-new"


def test_a_default_reason_names_the_status_and_source():
    transition = decide(make_job(L), event(R, source=EventSource.RECONCILE))
    assert transition.reason == "running (reported by reconcile)"


def test_terminal_transitions_release_the_capacity_the_job_held():
    claim = Claim("local:cpu", 1)
    transition = decide(make_job(R, claims=(claim,)), event(S))
    assert transition.release == (claim,)
    assert transition.changes["claims"] == ()
    assert decide(make_job(L, claims=(claim,)), event(R)).release == ()


# --- retries --------------------------------------------------------------------------

RETRY_ON_INTERRUPTION = {"max_attempts": 3, "on": ["interruption"]}


def test_an_interruption_covered_by_the_retry_policy_requeues_the_next_attempt():
    job = make_job(R, retries=RETRY_ON_INTERRUPTION, native_id="jp-x", started_at=T0)
    transition = decide(job, event(F, failure_kind=FailureKind.INTERRUPTED, reason="spot reclaimed", attempt=1))
    assert transition.to_status is Q
    assert transition.changes == {
        "attempt": 2,
        "native_id": None,
        "native_name": None,
        "launch_operation": None,  # the next attempt makes its own resource (GCE: its own insert operation)
        "started_at": None,
        "claims": (),
    }
    assert transition.reason == "attempt 1 interrupted: spot reclaimed; retrying as attempt 2 of 3"


def test_the_last_attempt_fails_for_good():
    job = make_job(R, attempt=3, retries=RETRY_ON_INTERRUPTION)
    transition = decide(job, event(F, failure_kind=FailureKind.INTERRUPTED, attempt=3))
    assert transition.to_status is F
    assert transition.changes["failure_kind"] is FailureKind.INTERRUPTED


def test_a_failure_kind_the_policy_does_not_name_is_not_retried():
    job = make_job(R, retries=RETRY_ON_INTERRUPTION)
    assert decide(job, event(F, failure_kind=FailureKind.NO_CAPACITY)).to_status is F
    assert decide(job, event(F, failure_kind=FailureKind.USER_ERROR)).to_status is F


def test_capacity_failures_retry_when_the_policy_names_capacity():
    job = make_job(L, retries={"max_attempts": 2, "on": ["capacity"]})
    transition = decide(job, event(F, failure_kind=FailureKind.NO_CAPACITY))
    assert transition.to_status is Q
    assert transition.changes["attempt"] == 2


def test_without_a_retry_policy_an_interruption_fails_the_job():
    transition = decide(make_job(R), event(F, failure_kind=FailureKind.INTERRUPTED))
    assert transition.to_status is F
    assert transition.changes["failure_kind"] is FailureKind.INTERRUPTED


def test_an_interruption_while_cancelling_is_not_retried():
    job = make_job(C, retries=RETRY_ON_INTERRUPTION)
    assert decide(job, event(F, failure_kind=FailureKind.INTERRUPTED)).to_status is X


@pytest.mark.parametrize("incoming", list(JobStatus))
def test_an_event_from_an_earlier_attempt_is_ignored(incoming):
    job = make_job(R, attempt=2, retries=RETRY_ON_INTERRUPTION)
    assert decide(job, event(incoming, attempt=1, failure_kind=FailureKind.INTERRUPTED)) is None


def test_an_event_of_the_current_attempt_applies():
    job = make_job(L, attempt=2)
    assert decide(job, event(R, attempt=2)).to_status is R


# --- properties -----------------------------------------------------------------------

KINDS = st.sampled_from([None, *FailureKind])
EVENTS = st.builds(
    lambda status, kind, attempt, seconds: event(status, seconds=seconds, failure_kind=kind, attempt=attempt),
    st.sampled_from(list(JobStatus)),
    KINDS,
    st.sampled_from([None, 1, 2, 3]),
    st.integers(0, 3600),
)
POLICIES = st.sampled_from([None, {"max_attempts": 3, "on": ["interruption", "capacity"]}])


@settings(max_examples=300, deadline=None)
@given(events=st.lists(EVENTS, max_size=25), policy=POLICIES, start=st.sampled_from([Q, L, R]))
def test_any_sequence_reaches_at_most_one_terminal_state_and_never_leaves_it(events, policy, start):
    job = make_job(start, retries=policy)
    terminal_seen = None
    for ev in [*events, *events]:  # every event delivered twice, the second round after the first
        before = job
        job = apply(job, ev)
        if before.terminal:
            assert job == before  # not one field changes once terminal
        if job.terminal:
            if terminal_seen is None:
                terminal_seen = job.status
            assert job.status is terminal_seen
        assert job.attempt <= 3
    if terminal_seen is not None:
        assert job.status is terminal_seen
        assert job.finished_at is not None


TERMINAL_EVENTS = st.sampled_from(
    [
        (S, None),
        (F, FailureKind.USER_ERROR),
        (F, FailureKind.TIMEOUT),
        (F, FailureKind.BACKEND_ERROR),
        (F, None),
        (X, None),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    terminal=TERMINAL_EVENTS,
    progress=st.lists(st.sampled_from([L, R]), max_size=6),
    data=st.data(),
)
def test_any_order_of_events_with_one_terminal_event_ends_in_that_terminal_state(terminal, progress, data):
    status, kind = terminal
    final = event(status, seconds=100, failure_kind=kind, attempt=1, reason="the end")
    events = [event(s, seconds=i, attempt=1) for i, s in enumerate(progress)] + [final]
    order = data.draw(st.permutations(events))
    job = make_job(Q, retries={"max_attempts": 3, "on": ["interruption"]})
    for ev in order:
        job = apply(job, ev)
    assert job.status is status
    assert job.finished_at == final.at
    if status is F:
        assert job.failure_kind is (kind or FailureKind.BACKEND_ERROR)
        assert job.failure_reason == "the end"
    else:
        assert job.failure_kind is None
