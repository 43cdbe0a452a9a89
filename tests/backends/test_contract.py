"""The backend contract: every registered backend, on its emulator or fake, meets the same expectations."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from chalicelib.backends import REGISTRY
from chalicelib.backends.base import Handle, Observation
from tests.backends.harnesses import (
    HARNESSES,
    KNOWN_GAPS,
    Harness,
    cases,
    declared,
    harness_for,
)


@pytest.fixture
def harness(request, tmp_path) -> Harness:
    return harness_for(request.node.callspec.params["name"], request, tmp_path)


def test_every_registered_backend_has_a_harness():
    assert sorted(set(REGISTRY) - set(HARNESSES)) == []
    assert sorted(set(HARNESSES) - set(REGISTRY)) == []  # a harness for a backend that is gone is dead code


def test_a_registered_backend_without_a_harness_fails_the_suite(monkeypatch, request, tmp_path):
    monkeypatch.setitem(REGISTRY, "toy", "tests.factories:ScriptedBackend")
    with pytest.raises(pytest.fail.Exception, match="'toy' is registered but has no harness"):
        harness_for("toy", request, tmp_path)
    assert any(p.values[0] == "toy" for p in cases("launch"))  # and the cases are drawn from the registry


@pytest.mark.parametrize("name", cases("launch"))
def test_a_retried_launch_starts_nothing(name, harness):
    job = harness.job()
    first = harness.backend.launch(job)
    started = harness.starts() if harness.starts else None
    again = harness.backend.launch(job)
    assert again.native_id == first.native_id
    assert harness.count(job) == 1, harness.explain(job) if harness.explain else ""
    if harness.starts:
        assert harness.starts() == started


@pytest.mark.parametrize("name", cases("describe"))
def test_describing_an_unknown_resource_returns_none(name, harness):
    assert harness.backend.describe(Handle.of(harness.job())) is None


def _seen(obs: Observation | None) -> tuple[Any, ...] | None:
    return None if obs is None else (obs.status, obs.native_status, obs.native_id, obs.failure_kind, obs.exit_code)


@pytest.mark.parametrize("name", cases("cancel"))
def test_cancelling_a_finished_resource_is_harmless(name, harness):
    job = harness.job()
    launched = harness.backend.launch(job)
    harness.finish(job, launched)
    handle = replace(Handle.of(job), native_id=launched.native_id)
    before = harness.backend.describe(handle)
    assert before is not None and before.status.terminal
    harness.backend.cancel(handle)
    harness.backend.cancel(handle)
    assert _seen(harness.backend.describe(handle)) == _seen(before)
    assert harness.count(job) <= 1


@pytest.mark.parametrize("case", ["another service", "not ours"])
@pytest.mark.parametrize("name", cases("foreign"))
def test_a_foreign_event_parses_to_none(name, case, harness, request):
    if (name, f"foreign:{case}") in KNOWN_GAPS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[(name, f"foreign:{case}")]))
    assert harness.backend.parse_event(copy.deepcopy(harness.foreign[case]())) is None


@pytest.mark.parametrize("name", cases("iam"))
def test_the_declared_iam_actions_cover_the_calls_made(name, harness):
    if harness.no_iam:
        pytest.skip(f"{name}: {harness.no_iam}")
    job = harness.job()
    launched = harness.backend.launch(job)
    handle = replace(Handle.of(job), native_id=launched.native_id)
    harness.backend.describe(handle)
    harness.backend.cancel(handle)
    harness.backend.list_managed()
    harness.backend.describe(Handle.of(harness.job()))
    made = set(harness.calls) - set(harness.free_actions)
    assert made, "the backend made no AWS call: the recorder is not on its clients"
    assert sorted(made - set(declared(name, "iam_actions"))) == []


def _known(backend, obs: Observation | None) -> Observation | None:
    """An observation with the fields its backend's describe_many may not know (read from a list page, or where
    it was placed: priced_by_placement) unset."""
    unknown = set(backend.listed_fields_unknown) | ({"usage"} if backend.priced_by_placement else set())
    if obs is None or not unknown:
        return obs
    return replace(obs, **dict.fromkeys(unknown))


@pytest.mark.parametrize("name", cases("describe_many"))
def test_describe_many_answers_what_describe_answers(name, harness):
    backend = harness.backend
    running, finished, named, unknown = (harness.job() for _ in range(4))
    launched = {job.job_id: backend.launch(job) for job in (running, finished, named)}
    harness.finish(finished, launched[finished.job_id])
    handles = [
        replace(Handle.of(running), native_id=launched[running.job_id].native_id),
        replace(Handle.of(finished), native_id=launched[finished.job_id].native_id),
        Handle.of(named),  # its launch response was lost: found by its name, as describe finds it
        Handle.of(unknown),  # never launched
    ]
    with harness.hold():
        before = {h.job_id: _known(backend, backend.describe(h)) for h in handles}
        many = backend.describe_many(handles)
        after = {h.job_id: _known(backend, backend.describe(h)) for h in handles}
    assert sorted(many) == sorted(h.job_id for h in handles)
    assert many[unknown.job_id] is None
    assert many[finished.job_id] is not None and many[finished.job_id].status.terminal
    for h in handles:
        # A resource may move on while it is read (moto runs Batch jobs to the end by itself): what
        # describe_many says is what describe said just before or just after.
        assert _known(backend, many[h.job_id]) in (before[h.job_id], after[h.job_id]), h
    assert backend.describe_many([]) == {}
