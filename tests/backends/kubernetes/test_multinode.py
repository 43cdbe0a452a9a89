"""A 4-node Kubernetes job: an Indexed Job and its headless Service (the client's models), state per group."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from chalicelib.backends import rendezvous
from chalicelib.backends.base import Handle
from chalicelib.jobs.model import JobStatus
from tests.factories import k8s_env, make_job, make_settings

IMAGE = "ghcr.io/acme/train:1"
COMMAND = ["torchrun", "--nnodes", "4", "train.py"]


@pytest.fixture
def backend(tmp_path, fake_k8s):
    from chalicelib.backends.kubernetes.backend import KubernetesBackend

    return KubernetesBackend(make_settings(tmp_path, **k8s_env(fake_k8s)))


def launch(backend, **spec):
    job = make_job(
        "kubernetes",
        {"image": IMAGE, "command": COMMAND, "resources": {"nodes": 4, "gpus": 8, "gpu_type": "H100"}, **spec},
    )
    launched = backend.launch(job)
    return job, replace(Handle.of(job), native_id=launched.native_id), Handle.of(job).native_name


def test_a_4_node_job_is_an_indexed_job_with_a_headless_service(backend, fake_k8s):
    from kubernetes import client

    job, _, name = launch(backend)
    (body,) = fake_k8s.bodies("POST", "/namespaces/default/jobs")  # accepted as the client's V1Job
    spec = body["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed",
        4,
        4,
        0,
    )
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == name
    (container,) = pod["containers"]
    assert container["command"][:2] == ["/bin/sh", "-c"] and container["args"] == COMMAND
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"  # per node
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["JOBPLANE_NUM_NODES"] == "4" and env["JOBPLANE_GPUS_PER_NODE"] == "8"
    assert env["JOBPLANE_MASTER_ADDR"] == f"{name}-0.{name}" and env["JOBPLANE_MASTER_PORT"] == "29500"
    (service,) = fake_k8s.bodies("POST", "/namespaces/default/services")  # accepted as the client's V1Service
    model = client.ApiClient()._ApiClient__deserialize(service, "V1Service")
    assert model.metadata.name == name and model.spec.cluster_ip == "None"
    assert model.spec.selector == {"batch.kubernetes.io/job-name": name}
    assert model.spec.publish_not_ready_addresses is True
    (owner,) = model.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("Job", name, fake_k8s.job_of(name)["metadata"]["uid"])


def test_the_pods_command_ranks_itself_by_its_completion_index(backend, fake_k8s):
    _, _, name = launch(
        backend, command=["sh", "-c", 'echo "$JOBPLANE_NODE_RANK of $JOBPLANE_NUM_NODES via $JOBPLANE_MASTER_ADDR"']
    )
    (container,) = fake_k8s.job_of(name)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    # What the kubelet runs in pod 2: the container's command and args, JOB_COMPLETION_INDEX set by the controller.
    done = subprocess.run(
        container["command"] + container["args"],
        env={**env, "PATH": "/usr/bin:/bin", "JOB_COMPLETION_INDEX": "2"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"2 of 4 via {name}-0.{name}\n"


def test_staged_multi_node_jobs_run_the_prelude_before_the_wrapper(backend, fake_k8s):
    from chalicelib.backends.aws import staging

    _, _, name = launch(backend, outputs="s3://bucket/out/")
    containers = fake_k8s.job_of(name)["spec"]["template"]["spec"]["containers"]
    script = containers[0]["command"][2]
    assert script == rendezvous.prelude(rendezvous.KUBERNETES) + staging.WRAPPER


def test_the_job_runs_only_when_every_node_pod_runs(backend, fake_k8s):
    _, handle, name = launch(backend)
    for index in range(3):
        fake_k8s.start(name, index=index)
    seen = backend.describe(handle)
    assert seen.status is JobStatus.LAUNCHING and seen.reason == "Kubernetes: 3 of 4 node pods running"
    fake_k8s.start(name, index=3)
    seen = backend.describe(handle)
    assert seen.status is JobStatus.RUNNING and seen.reason == "Kubernetes: all 4 node pods running"


def test_a_failed_node_fails_the_job_naming_the_node(backend, fake_k8s):
    _, handle, name = launch(backend)
    pods = [fake_k8s.start(name, index=index, log=f"node {index}\n") for index in range(4)]
    fake_k8s._terminate(pods[2], "default", "Failed", 3, "Error")
    fake_k8s._conditions(
        fake_k8s.job_of(name), ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    )
    seen = backend.describe(handle)
    assert seen.status is JobStatus.FAILED and seen.exit_code == 3
    assert seen.reason.startswith("node 2 of 4 failed: BackoffLimitExceeded: the job exited 3")
    assert backend.logs(handle, node=2).text == "node 2\n"
    assert backend.logs(handle, node=0).text == "node 0\n"


def test_cancel_deletes_the_job_its_pods_and_its_service(backend, fake_k8s):
    _, handle, name = launch(backend)
    for index in range(4):
        fake_k8s.start(name, index=index)
    assert fake_k8s.services
    backend.cancel(handle)
    (body,) = fake_k8s.bodies("DELETE", f"/jobs/{name}")
    assert body["propagationPolicy"] == "Background"
    assert not fake_k8s.pods and not fake_k8s.services


def test_a_retried_launch_creates_neither_a_second_job_nor_a_second_service(backend, fake_k8s):
    job, _, _ = launch(backend)
    backend.launch(job)
    assert len(fake_k8s.bodies("POST", "/namespaces/default/services")) == 1
    assert len(fake_k8s.jobs) == 1 and len(fake_k8s.services) == 1


def test_a_preempted_node_fails_the_group_as_an_interruption_so_it_is_retried_whole(backend, fake_k8s):
    from chalicelib.jobs.model import FailureKind

    _, handle, name = launch(backend)
    rules = fake_k8s.job_of(name)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    for index in range(4):
        fake_k8s.start(name, index=index)
    fake_k8s.preempt(name)  # the fake's newest pod is reclaimed (within a second, any of the four)
    (index,) = [
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        for p in fake_k8s.pods.values()
        if any(c["type"] == "DisruptionTarget" for c in p["status"].get("conditions") or [])
    ]
    fake_k8s._conditions(
        fake_k8s.job_of(name),
        ("Failed", "PodFailurePolicy", "Pod default/x has condition DisruptionTarget matching FailJob rule at index 0"),
    )
    seen = backend.describe(handle)
    assert seen.status is JobStatus.FAILED and seen.failure_kind is FailureKind.INTERRUPTED
    assert seen.reason.startswith(f"node {index} of 4 failed: DisruptionTarget: TerminationByKubelet")
    assert seen.reason.endswith("the group stops and is retried whole")


def test_a_single_node_job_still_ignores_a_disruption(backend, fake_k8s):
    _, _, name = launch(backend, resources={})
    rules = fake_k8s.job_of(name)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "Ignore"
