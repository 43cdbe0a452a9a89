"""Transient provider errors at launch, describe and cancel: the job stays where it was and is tried again, bounded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from botocore.stub import Stubber

from chalicelib.auth import Principal
from chalicelib.backends.base import ComputeBackend, Handle, LaunchResult, Observation
from chalicelib.errors import BackendError, BackendValidationError, ThrottledError
from chalicelib.jobs.dispatch import LAUNCH_ROUNDS, LAUNCH_TRIES_PER_ROUND, backoff_seconds, transient_round
from chalicelib.jobs.model import FailureKind, JobStatus, utcnow
from chalicelib.jobs.service import JobService
from chalicelib.jobs.spec import parse_spec
from chalicelib.reaper import reconcile
from tests.factories import make_history, make_job, make_settings, noop_spec

ALICE = Principal("alice")
THROTTLED = ThrottledError("sagemaker CreateTrainingJob: ThrottlingException: Rate exceeded")


class FlakyBackend(ComputeBackend):
    """A provider whose launch, describe and cancel calls raise the scripted errors first, then work."""

    name = "local"
    named_by_us = True

    def __init__(self, settings, launch=(), describe=(), cancel=()):
        super().__init__(settings)
        self.scripts = {"launch": list(launch), "describe": list(describe), "cancel": list(cancel)}
        self.calls = {"launch": 0, "describe": 0, "cancel": 0}
        self.resources: dict[str, str] = {}

    def _step(self, call):
        self.calls[call] += 1
        if self.scripts[call]:
            raise self.scripts[call].pop(0)

    def _launch_impl(self, job, handle):
        self._step("launch")
        self.resources.setdefault(handle.native_name, "Running")  # the same name twice is the same resource
        return LaunchResult(handle.native_name)

    def _describe_impl(self, handle):
        self._step("describe")
        status = self.resources.get(handle.native_name)
        if status is None:
            return None
        return Observation(JobStatus.RUNNING, status, handle.native_name, handle.job_id, handle.attempt)

    def _cancel_impl(self, handle):
        self._step("cancel")
        self.resources.pop(handle.native_name, None)


def _setup(store, tmp_path, **scripts):
    settings = make_settings(tmp_path)
    backend = FlakyBackend(settings, **scripts)
    service = JobService(store, settings, backend_factory=lambda *_: backend)
    pauses: list[float] = []
    service.dispatcher.sleep = pauses.append
    return service, backend, pauses


def _past_deadline(store, job, settings):
    """Pretend the job's last write was longer ago than the launch deadline (reconcile relaunches then)."""
    ago = timedelta(seconds=settings.launch_deadline_seconds + 1)
    return store.update_job(job, job.status, updated_at=utcnow() - ago)


# --- pure -----------------------------------------------------------------------------------
def test_backoff_is_full_jitter_under_a_growing_cap():
    for try_number in (1, 2, 3, 10):
        cap = min(2.0, 0.2 * 2 ** (try_number - 1))
        assert all(0 <= backoff_seconds(try_number) <= cap for _ in range(50))


def test_the_round_is_read_back_from_the_status_reason():
    assert transient_round(None) == 0
    assert transient_round("relaunched by reconcile: no resource") == 0
    assert transient_round("transient launch error, round 3 of 5 (3 tries): throttled") == 3


# --- launch -----------------------------------------------------------------------------------
def test_a_throttled_launch_is_tried_again_and_launches_once(memory_store, tmp_path):
    service, backend, pauses = _setup(memory_store, tmp_path, launch=[THROTTLED])
    job, _ = service.submit(ALICE, noop_spec())
    assert job.status is JobStatus.LAUNCHING and job.failure_kind is None
    assert backend.calls["launch"] == 2 and len(pauses) == 1
    assert list(backend.resources) == [f"jp-{job.job_id}"]


def test_a_launch_still_throttled_stays_launching_and_reconcile_relaunches_it(memory_store, tmp_path):
    errors = [THROTTLED] * LAUNCH_TRIES_PER_ROUND
    service, backend, _ = _setup(memory_store, tmp_path, launch=errors)
    job, _ = service.submit(ALICE, noop_spec())
    assert job.status is JobStatus.LAUNCHING
    assert job.status_reason.startswith(f"transient launch error, round 1 of {LAUNCH_ROUNDS}")
    assert "ThrottlingException" in job.status_reason
    # Inside the deadline reconcile leaves it alone; past it, the same attempt is launched again.
    assert reconcile(service)[0].action == "none"
    _past_deadline(memory_store, memory_store.get_job(job.job_id), service.settings)
    assert reconcile(service)[0].action == "relaunch"
    after = memory_store.get_job(job.job_id)
    assert after.status is JobStatus.LAUNCHING and after.attempt == 1
    assert "launch round 2" in after.status_reason
    assert backend.calls["launch"] == LAUNCH_TRIES_PER_ROUND + 1
    assert list(backend.resources) == [f"jp-{job.job_id}"]


def test_transient_errors_past_the_last_round_fail_the_job_as_a_backend_error(memory_store, tmp_path):
    errors = [THROTTLED] * (LAUNCH_TRIES_PER_ROUND * LAUNCH_ROUNDS)
    service, backend, _ = _setup(memory_store, tmp_path, launch=errors)
    job, _ = service.submit(ALICE, noop_spec())
    for _ in range(LAUNCH_ROUNDS - 1):
        assert memory_store.get_job(job.job_id).status is JobStatus.LAUNCHING
        _past_deadline(memory_store, memory_store.get_job(job.job_id), service.settings)
        reconcile(service)
    failed = memory_store.get_job(job.job_id)
    assert failed.status is JobStatus.FAILED and failed.failure_kind is FailureKind.BACKEND_ERROR
    assert f"after {LAUNCH_ROUNDS} rounds" in failed.failure_reason
    assert backend.calls["launch"] == LAUNCH_TRIES_PER_ROUND * LAUNCH_ROUNDS
    assert backend.resources == {}


@pytest.mark.parametrize(
    "error",
    [
        BackendError("sagemaker CreateTrainingJob: InternalFailure", retryable=True),  # a 5xx
        BackendError("sagemaker CreateTrainingJob: cannot reach the endpoint", retryable=True),
    ],
)
def test_server_and_connection_errors_are_retried_too(memory_store, tmp_path, error):
    service, backend, _ = _setup(memory_store, tmp_path, launch=[error])
    job, _ = service.submit(ALICE, noop_spec())
    assert job.status is JobStatus.LAUNCHING and backend.calls["launch"] == 2


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (BackendValidationError("sagemaker CreateTrainingJob: ValidationException: bad image"), FailureKind.USER_ERROR),
        (BackendError("sagemaker CreateTrainingJob: UnknownError"), FailureKind.BACKEND_ERROR),
    ],
)
def test_a_final_error_fails_the_job_at_once(memory_store, tmp_path, error, kind):
    service, backend, pauses = _setup(memory_store, tmp_path, launch=[error])
    job, _ = service.submit(ALICE, noop_spec())
    assert job.status is JobStatus.FAILED and job.failure_kind is kind
    assert backend.calls["launch"] == 1 and pauses == []


def test_sagemaker_create_training_job_throttled_then_accepted(memory_store, tmp_path):
    """The real error shape through botocore's Stubber: HTTP 400 ThrottlingException, then success."""
    from chalicelib.backends.aws.sagemaker import SageMakerBackend

    settings = make_settings(
        tmp_path,
        JOBPLANE_BACKENDS="sagemaker,local",
        JOBPLANE_SAGEMAKER_ROLE="arn:aws:iam::123456789012:role/jobplane-test-sagemaker",
    )
    backend = SageMakerBackend(settings)
    import boto3

    client = boto3.client("sagemaker", region_name=settings.region)
    backend.set_client("sagemaker", client)
    service = JobService(memory_store, settings, backend_factory=lambda *_: backend)
    service.dispatcher.sleep = lambda _s: None
    spec = parse_spec(
        {
            "name": "train",
            "backend": "sagemaker",
            "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1",
            "command": ["python", "train.py"],
            "resources": {"gpus": 1, "gpu_type": "A10G"},
            "outputs": "s3://bucket/outputs/",
        }
    )
    job = make_job("sagemaker", spec, status=JobStatus.QUEUED)
    memory_store.create_job(job, make_history(job, reason="s"))
    name = f"jp-{job.job_id}"
    missing = {
        "service_error_code": "ValidationException",
        "service_message": "Requested resource not found.",
        "http_status_code": 400,
        "expected_params": {"TrainingJobName": name},
    }
    arn = f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}"
    with Stubber(client) as stub:
        stub.add_client_error("describe_training_job", **missing)
        stub.add_client_error(
            "create_training_job",
            service_error_code="ThrottlingException",
            service_message="Rate exceeded",
            http_status_code=400,
        )
        stub.add_client_error("describe_training_job", **missing)
        stub.add_response("create_training_job", {"TrainingJobArn": arn})
        launched = service.dispatcher.dispatch(job)
        assert launched.failure_reason is None
        stub.assert_no_pending_responses()
    assert launched.status is JobStatus.LAUNCHING and launched.failure_kind is None
    assert launched.native_name == name


# --- cancel and describe ---------------------------------------------------------------------
def test_a_throttled_cancel_is_tried_again_in_the_same_call(memory_store, tmp_path):
    service, backend, pauses = _setup(memory_store, tmp_path, cancel=[THROTTLED, THROTTLED])
    job, _ = service.submit(ALICE, noop_spec())
    cancelled = service.cancel(ALICE, job.job_id)
    assert backend.calls["cancel"] == 3 and len(pauses) == 2
    assert cancelled.status is JobStatus.CANCELLING and backend.resources == {}


def test_a_cancel_still_failing_stays_cancelling_with_the_reason_and_reconcile_asks_again(memory_store, tmp_path):
    service, backend, _ = _setup(memory_store, tmp_path, cancel=[THROTTLED] * LAUNCH_TRIES_PER_ROUND)
    job, _ = service.submit(ALICE, noop_spec())
    cancelled = service.cancel(ALICE, job.job_id)
    assert cancelled.status is JobStatus.CANCELLING
    assert cancelled.status_reason.startswith(f"cancel request failed after {LAUNCH_TRIES_PER_ROUND} tries")
    assert reconcile(service)[0].action == "recancel"
    assert backend.calls["cancel"] == LAUNCH_TRIES_PER_ROUND + 1 and backend.resources == {}


def test_a_final_cancel_error_is_not_retried(memory_store, tmp_path):
    service, backend, pauses = _setup(memory_store, tmp_path, cancel=[BackendError("AccessDenied")])
    job, _ = service.submit(ALICE, noop_spec())
    assert service.cancel(ALICE, job.job_id).status is JobStatus.CANCELLING
    assert backend.calls["cancel"] == 1 and pauses == []


def test_a_throttled_describe_leaves_the_job_as_it_was_for_the_next_tick(memory_store, tmp_path):
    service, backend, _ = _setup(memory_store, tmp_path, describe=[THROTTLED])
    job, _ = service.submit(ALICE, noop_spec())
    [first] = reconcile(service)
    assert first.action == "error" and "ThrottlingException" in first.reason
    assert memory_store.get_job(job.job_id).status is JobStatus.LAUNCHING
    [second] = reconcile(service)
    assert second.action == "apply"
    assert memory_store.get_job(job.job_id).status is JobStatus.RUNNING
    assert Handle.of(memory_store.get_job(job.job_id)).native_name == f"jp-{job.job_id}"
