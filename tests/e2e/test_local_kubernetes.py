"""End to end: `jobplane local up --backends local,kubernetes` drives KUBECONFIG's cluster (the loopback API server)."""

from __future__ import annotations

import pytest

from tests.factories import stack_api, start_stack, stop_stack, wait_long

pytestmark = pytest.mark.e2e
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from tests.fakek8s import FakeKubernetes

    fake = FakeKubernetes()
    fake.kubeconfig(tmp_path_factory.mktemp("kube"))
    directory = tmp_path_factory.mktemp("k8s") / "state"
    stack = start_stack(directory, args=("--backends", "local,kubernetes"), KUBECONFIG=str(fake.config))
    yield stack, fake
    stop_stack(stack)
    fake.close()


def _submit(stack, fake, name: str) -> tuple[str, str]:
    spec = {"name": name, "image": "busybox:1.36", "command": ["echo", "hi"], "backend": "kubernetes"}
    response = stack_api(stack, "POST", "/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    native = f"jp-{job_id}"
    wait_long(lambda: ("default", native) in fake.jobs, timeout=60, what="the Job to be created")
    return job_id, native


def _read(stack, job_id: str) -> dict:
    return stack_api(stack, "GET", f"/jobs/{job_id}").json()


def _reaches(stack, job_id: str, status: str) -> dict:
    return wait_long(
        lambda: (j := _read(stack, job_id))["status"] in (status, *TERMINAL) and j,
        timeout=60,
        interval=0.25,
        what=f"job {job_id} to be {status}",
    )


def test_a_job_runs_to_succeeded_with_its_pods_log(cluster):
    stack, fake = cluster
    job_id, native = _submit(stack, fake, "k8s-ok")
    fake.start(native, log="hi\n")
    assert _reaches(stack, job_id, "RUNNING")["status"] == "RUNNING"
    fake.succeed(native)
    assert _reaches(stack, job_id, "SUCCEEDED")["status"] == "SUCCEEDED"
    assert "hi" in stack_api(stack, "GET", f"/jobs/{job_id}/logs").text


def test_an_oom_killed_pod_fails_the_job_with_its_reason(cluster):
    stack, fake = cluster
    job_id, native = _submit(stack, fake, "k8s-oom")
    fake.start(native)
    fake.fail(native, code=137, reason="OOMKilled")
    job = _reaches(stack, job_id, "FAILED")
    assert (job["status"], job["failure_kind"]) == ("FAILED", "user_error")
    assert "OOMKilled" in job["status_reason"]


def test_a_preemption_does_not_use_up_a_retry(cluster):
    stack, fake = cluster
    job_id, native = _submit(stack, fake, "k8s-spot")
    fake.start(native)
    assert _reaches(stack, job_id, "RUNNING")["status"] == "RUNNING"
    fake.preempt(native)
    fake.start(native)
    fake.succeed(native)
    job = _reaches(stack, job_id, "SUCCEEDED")
    assert (job["status"], job["attempt"]) == ("SUCCEEDED", 1)
    assert fake.jobs[("default", native)]["status"].get("failed") is None


def test_cancel_deletes_the_job_in_the_background(cluster):
    stack, fake = cluster
    job_id, native = _submit(stack, fake, "k8s-cancel")
    fake.start(native)
    assert _reaches(stack, job_id, "RUNNING")["status"] == "RUNNING"
    assert stack_api(stack, "POST", f"/jobs/{job_id}/cancel").status_code in (200, 202)
    assert _reaches(stack, job_id, "CANCELLED")["status"] == "CANCELLED"
    assert ("default", native) not in fake.jobs
    assert fake.bodies("DELETE", f"/jobs/{native}") == [{"propagationPolicy": "Background"}]
