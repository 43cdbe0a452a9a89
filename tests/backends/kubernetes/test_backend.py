"""batch/v1 Jobs through the official client on the loopback API server: the body, the state table, cancel, logs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chalicelib.backends.base import Handle
from chalicelib.backends.kubernetes.backend import ATTEMPT, JOB_ID, KUEUE_QUEUE, MANAGED, OWNER, STAGE
from chalicelib.errors import UnsupportedError, ValidationError
from chalicelib.jobs.model import FailureKind, JobStatus
from tests.factories import k8s_env, make_job, make_settings

IMAGE = "ghcr.io/acme/train:1"


@pytest.fixture
def k8s(tmp_path, fake_k8s):
    from chalicelib.backends.kubernetes.backend import KubernetesBackend

    def build(*clusters, **env):
        return KubernetesBackend(make_settings(tmp_path, **k8s_env(fake_k8s, *clusters), **env))

    return build


def _launch(backend, fake, **spec):
    job = make_job("kubernetes", {"image": IMAGE, **spec})
    launched = backend.launch(job)
    return job, replace(Handle.of(job), native_id=launched.native_id), Handle.of(job).native_name


def test_can_create_a_gpu_spot_job_with_labels_limits_deadline_and_failure_policy(k8s, fake_k8s):
    backend = k8s({"name": "gpus", "flavour": "gke"})
    job, handle, name = _launch(
        backend,
        fake_k8s,
        command=["python", "train.py"],
        env={"LR": "0.1"},
        resources={"gpus": 2, "gpu_type": "L4", "spot": True},
        max_runtime_minutes=90,
        retries={"max_attempts": 3, "fatal_exit_codes": [3, 42]},
    )
    assert handle.native_id == f"gpus/default/{name}"
    (body,) = fake_k8s.bodies("POST", "/namespaces/default/jobs")
    meta, spec = body["metadata"], body["spec"]
    assert meta["name"] == name == f"jp-{job.job_id}"
    assert meta["labels"] == {MANAGED: "true", STAGE: "test", JOB_ID: job.job_id, ATTEMPT: "1"}
    assert meta["annotations"][OWNER] == "alice" and meta["annotations"][JOB_ID] == job.job_id
    assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 90 * 60
    assert spec["ttlSecondsAfterFinished"] == 86400 and "suspend" not in spec
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "job", "operator": "In", "values": [3, 42]}},
    ]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4", "cloud.google.com/gke-spot": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE and container["command"] == ["python", "train.py"]
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "2048Mi", "nvidia.com/gpu": "2"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LR"] == "0.1" and env["JOBPLANE_JOB_ID"] == job.job_id and env["JOBPLANE_ATTEMPT"] == "1"
    assert spec["template"]["metadata"]["labels"][JOB_ID] == job.job_id  # pods carry the labels too


@pytest.mark.parametrize(
    ("flavour", "expected"),
    [
        ("eks", {"k8s.amazonaws.com/accelerator": "a10g", "eks.amazonaws.com/capacityType": "SPOT"}),
        ("karpenter", {"karpenter.k8s.aws/instance-gpu-name": "a10g", "karpenter.sh/capacity-type": "spot"}),
    ],
)
def test_gpu_type_and_spot_use_the_cluster_flavours_node_labels(flavour, expected, k8s, fake_k8s):
    backend = k8s({"name": "c", "flavour": flavour})
    _launch(backend, fake_k8s, resources={"gpus": 1, "gpu_type": "A10G", "spot": True})
    (body,) = fake_k8s.bodies("POST", "/jobs")
    assert body["spec"]["template"]["spec"]["nodeSelector"] == expected


def test_a_kubeconfig_cluster_defaults_to_karpenters_labels(k8s, fake_k8s):
    _launch(k8s(), fake_k8s, resources={"spot": True})
    (body,) = fake_k8s.bodies("POST", "/jobs")
    assert body["spec"]["template"]["spec"]["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"}


def test_the_fake_server_refuses_a_body_with_a_field_the_client_model_does_not_know(fake_k8s):
    from kubernetes import client, config

    api = client.BatchV1Api(config.new_client_from_config(config_file=str(fake_k8s.config)))
    body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": {"backofLimit": 1,
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}}}  # fmt: skip
    with pytest.raises(client.exceptions.ApiException) as info:
        api.create_namespaced_job("default", body)
    assert info.value.status == 422 and "spec.backofLimit" in info.value.body


def test_staged_jobs_run_the_ecs_wrapper_between_the_stage_in_and_stage_out_containers(k8s, fake_k8s):
    from chalicelib.backends.aws import staging

    job, _, _ = _launch(k8s(), fake_k8s, inputs={"data": "s3://datasets/cifar/"}, outputs="s3://results/run/")
    (body,) = fake_k8s.bodies("POST", "/jobs")
    pod = body["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["stage-in"]
    assert [c["name"] for c in pod["containers"]] == ["job", "stage-out"]
    main = pod["containers"][0]
    assert main["command"][:3] == ["/bin/sh", "-c", staging.WRAPPER]
    assert main["args"][-2:] == ["python", "train.py"]
    assert pod["initContainers"][0]["args"][-2:] == ["data", "s3://datasets/cifar/"]
    assert pod["containers"][1]["args"][1] == f"s3://results/run/{job.job_id}/"
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env["JOBPLANE_INPUT_DIR"] == staging.INPUT_ROOT and env["JOBPLANE_OUTPUT_DIR"] == "/jobplane/output"


def test_a_gs_cluster_mounts_each_bucket_with_cloud_storage_fuse_and_runs_vertexs_wrapper(k8s, fake_k8s):
    from chalicelib.backends.gcp import vertex
    from chalicelib.backends.kubernetes.backend import GCS_FUSE_ANNOTATION, GCS_FUSE_DRIVER
    from chalicelib.jobs.contract import store_for

    backend = k8s({"name": "gke", "flavour": "gke", "store": "gs"})
    sha = "c" * 64
    job, _, _ = _launch(
        backend,
        fake_k8s,
        code_uri=f"gs://team-code/code/{sha}.tar.gz",
        code_sha256=sha,
        inputs={"data": "gs://datasets/cifar/", "labels": "gs://datasets/labels.csv"},
        checkpoint_uri="gs://ckpt/run1/",
        setup=[["pip", "install", "-r", "requirements.txt"]],
    )
    (body,) = fake_k8s.bodies("POST", "/jobs")  # the fake kept it through the client's V1Job: every field is real
    template = body["spec"]["template"]
    assert template["metadata"]["annotations"][GCS_FUSE_ANNOTATION] == "true"
    pod = template["spec"]
    assert "initContainers" not in pod and [c["name"] for c in pod["containers"]] == ["job"]
    artifacts = backend.settings.gcp_artifacts_bucket
    buckets = sorted([artifacts, "ckpt", "datasets", "team-code"])
    assert pod["volumes"] == [
        {
            "name": f"gcs-{i}",
            "csi": {"driver": GCS_FUSE_DRIVER, "volumeAttributes": {"bucketName": b, "mountOptions": "implicit-dirs"}},
        }
        for i, b in enumerate(buckets)
    ]
    (main,) = pod["containers"]
    assert main["volumeMounts"] == [{"name": f"gcs-{i}", "mountPath": f"/gcs/{b}"} for i, b in enumerate(buckets)]
    assert main["command"] == ["/bin/sh", "-c", vertex.WRAPPER, "jobplane"]
    assert main["args"] == vertex.wrapper_args(job.spec)
    assert main["args"][:4] == [f"/gcs/team-code/code/{sha}.tar.gz", sha, vertex.CODE_DIR, "2"]
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env["JOBPLANE_INPUT_DIR"] == vertex.INPUT_DIR
    assert env["JOBPLANE_OUTPUT_DIR"] == f"/gcs/{artifacts}/outputs/{job.job_id}"
    assert env["JOBPLANE_CHECKPOINT_DIR"] == "/gcs/ckpt/run1"
    # Its artifacts are listed from Cloud Storage, and an s3:// location is refused naming its field.
    assert store_for("kubernetes", backend.settings, job.spec) == (artifacts, "gs")
    from tests.factories import make_spec

    with pytest.raises(UnsupportedError) as info:
        backend.validate(make_spec(backend="kubernetes", image=IMAGE, inputs={"data": "s3://datasets/cifar/"}))
    assert info.value.details[0]["field"] == "inputs.data"


def test_a_cluster_store_other_than_s3_or_gs_is_refused_naming_it(tmp_path, fake_k8s):
    from chalicelib.errors import ConfigError

    with pytest.raises(ConfigError, match=r"JOBPLANE_K8S_CLUSTERS\[0\]\.store must be one of s3, gs"):
        make_settings(tmp_path, **k8s_env(fake_k8s, {"name": "x", "store": "azure"}))


def test_validation_names_the_field(k8s, fake_k8s):
    backend = k8s({"name": "gke", "flavour": "gke"})
    from tests.factories import make_spec

    with pytest.raises(ValidationError) as info:
        backend.validate(make_spec(backend="kubernetes", image=IMAGE, resources={"cluster": "nope"}))
    assert info.value.details[0] == {"field": "resources.cluster", "message": "one of gke"}
    with pytest.raises(UnsupportedError) as info:
        backend.validate(make_spec(backend="kubernetes", image=IMAGE, resources={"gpus": 1, "gpu_type": "A10G"}))
    assert info.value.details[0]["field"] == "resources.gpu_type"
    with pytest.raises(UnsupportedError) as info:
        backend.validate(make_spec(backend="kubernetes", image=IMAGE, outputs="gs://results/out/"))
    assert info.value.details[0]["field"] == "outputs"


def test_the_spec_picks_its_cluster_and_its_namespace(k8s, fake_k8s):
    backend = k8s({"name": "a"}, {"name": "b", "namespace": "ml"})
    _, handle, name = _launch(backend, fake_k8s, resources={"cluster": "b"})
    assert handle.native_id == f"b/ml/{name}" and ("ml", name) in fake_k8s.jobs
    assert backend.describe(handle).status is JobStatus.LAUNCHING


# --- the state table -------------------------------------------------------------------------------------
def test_a_job_runs_to_success(k8s, fake_k8s):
    backend = k8s()
    _, handle, name = _launch(backend, fake_k8s)
    assert backend.describe(handle).native_status == "Created"
    fake_k8s.start(name, log="epoch 1\n")
    running = backend.describe(handle)
    assert running.status is JobStatus.RUNNING and running.started_at is not None
    fake_k8s.succeed(name)
    done = backend.describe(handle)
    assert (done.status, done.native_status, done.exit_code) == (JobStatus.SUCCEEDED, "Complete", 0)


@pytest.mark.parametrize(
    ("code", "reason", "job_reason", "kind", "text"),
    [
        (137, "OOMKilled", "BackoffLimitExceeded", FailureKind.USER_ERROR, "OOMKilled"),
        (3, "Error", "PodFailurePolicy", FailureKind.USER_ERROR, "matching FailJob rule"),
        (1, "Error", "BackoffLimitExceeded", FailureKind.USER_ERROR, "the job exited 1"),
        (143, "Error", "DeadlineExceeded", FailureKind.TIMEOUT, "active longer than specified deadline"),
    ],
)
def test_failed_conditions_and_pods_become_reasons_and_kinds(code, reason, job_reason, kind, text, k8s, fake_k8s):
    backend = k8s()
    _, handle, name = _launch(backend, fake_k8s)
    fake_k8s.start(name)
    fake_k8s.fail(name, code=code, reason=reason, job_reason=job_reason)
    seen = backend.describe(handle)
    assert (seen.status, seen.native_status, seen.failure_kind) == (JobStatus.FAILED, f"Failed/{job_reason}", kind)
    assert text in seen.reason and seen.exit_code == code


def test_failure_target_alone_is_not_terminal(k8s, fake_k8s):
    backend = k8s()
    _, handle, name = _launch(backend, fake_k8s)
    fake_k8s.start(name)
    fake_k8s.fail(name, job_reason="BackoffLimitExceeded", terminal=False)
    seen = backend.describe(handle)
    assert (seen.status, seen.native_status) == (JobStatus.RUNNING, "FailureTarget")


def test_an_image_that_cannot_be_pulled_fails_the_job_as_a_user_error(k8s, fake_k8s):
    backend = k8s()
    _, handle, name = _launch(backend, fake_k8s)
    fake_k8s.image_pull_backoff(name)
    seen = backend.describe(handle)
    assert (seen.status, seen.failure_kind, seen.native_status) == (
        JobStatus.FAILED,
        FailureKind.USER_ERROR,
        "Pod/ImagePullBackOff",
    )
    assert "registry.example/nope:1" in seen.reason


def test_an_unschedulable_pod_keeps_the_job_launching_with_the_schedulers_message(k8s, fake_k8s):
    backend = k8s()
    _, handle, name = _launch(backend, fake_k8s)
    fake_k8s.unschedulable(name)
    seen = backend.describe(handle)
    assert seen.status is JobStatus.LAUNCHING and "Insufficient nvidia.com/gpu" in seen.reason


def test_a_preempted_pod_is_replaced_without_failing_the_job(k8s, fake_k8s):
    backend = k8s()
    _, handle, name = _launch(backend, fake_k8s)
    fake_k8s.start(name)
    fake_k8s.preempt(name)
    seen = backend.describe(handle)
    assert seen.status is JobStatus.LAUNCHING and not seen.status.terminal
    fake_k8s.start(name)
    assert backend.describe(handle).status is JobStatus.RUNNING
    fake_k8s.succeed(name)
    assert backend.describe(handle).status is JobStatus.SUCCEEDED
    assert fake_k8s.jobs[("default", name)]["status"].get("failed") is None  # no retry was used up


def test_a_kueue_cluster_creates_the_job_suspended_and_reports_kueues_reason(k8s, fake_k8s):
    backend = k8s({"name": "q", "local_queue": "team-a"})
    launched_job, handle, name = _launch(backend, fake_k8s)
    (body,) = fake_k8s.bodies("POST", "/jobs")
    assert body["metadata"]["labels"][KUEUE_QUEUE] == "team-a" and body["spec"]["suspend"] is True
    fake_k8s.pending_workload(name, message="couldn't assign flavors to pod set main: insufficient quota")
    seen = backend.describe(handle)
    assert (seen.status, seen.native_status) == (JobStatus.QUEUED, "Suspended")
    assert seen.reason == "Kueue (team-a): Pending: couldn't assign flavors to pod set main: insufficient quota"
    fake_k8s.admit(name)
    fake_k8s.start(name)
    assert backend.describe(handle).status is JobStatus.RUNNING


def test_describe_many_reads_two_lists_per_cluster(k8s, fake_k8s):
    backend = k8s()
    jobs = [_launch(backend, fake_k8s) for _ in range(5)]
    fake_k8s.start(jobs[0][2])
    fake_k8s.succeed(jobs[1][2])
    fake_k8s.requests.clear()
    many = backend.describe_many([h for _, h, _ in jobs] + [Handle.of(make_job("kubernetes", {"image": IMAGE}))])
    assert [m for m, _, _ in fake_k8s.requests] == ["GET", "GET"]
    assert many[jobs[0][0].job_id].status is JobStatus.RUNNING
    assert many[jobs[1][0].job_id].status is JobStatus.SUCCEEDED
    assert sum(v is None for v in many.values()) == 1


# --- cancel, logs, the sweep ---------------------------------------------------------------------------
def test_cancel_deletes_the_job_with_background_propagation(k8s, fake_k8s):
    backend = k8s()
    _, handle, name = _launch(backend, fake_k8s)
    fake_k8s.start(name)
    backend.cancel(handle)
    (body,) = fake_k8s.bodies("DELETE", f"/jobs/{name}")
    assert body["propagationPolicy"] == "Background"
    assert backend.describe(handle) is None and not fake_k8s.pods
    backend.cancel(handle)  # gone already: harmless


def test_logs_come_from_the_jobs_pod_and_follow_by_offset(k8s, fake_k8s):
    backend = k8s()
    _, handle, name = _launch(backend, fake_k8s)
    assert backend.logs(handle).note == "no pod has started yet"
    pod = fake_k8s.start(name, log="epoch 1\n")
    first = backend.logs(handle)
    assert (first.text, first.complete) == ("epoch 1\n", False)
    fake_k8s.logs[("default", pod)] += "epoch 2\n"
    fake_k8s.succeed(name)
    second = backend.logs(handle, first.next_offset)
    assert (second.text, second.complete) == ("epoch 2\n", True)
    assert backend.tail(handle) == ["epoch 1", "epoch 2"]


def test_logs_follow_a_preempted_pod_into_its_replacement_and_read_both_from_the_start(k8s, fake_k8s):
    backend = k8s()
    _, handle, name = _launch(backend, fake_k8s)
    first_pod = fake_k8s.start(name, log="epoch 1\n")
    first = backend.logs(handle)
    assert (first.text, first.next_offset) == ("epoch 1\n", 8)
    replacement = fake_k8s.preempt(name)  # the pod is reclaimed; the controller's replacement is Pending
    waiting = backend.logs(handle, first.next_offset)
    assert (waiting.text, waiting.next_offset, waiting.complete) == ("", 8, False)
    second_pod = fake_k8s.start(name, log="resumed from step-1\nepoch 2\n", pod=replacement)
    switch = backend.logs(handle, waiting.next_offset)
    assert switch.text == (
        f"--- jobplane: pod {first_pod} ended (preempted: TerminationByKubelet: Pod was terminated in response to "
        f"imminent node shutdown.); pod {second_pod} replaces it ---\n"
    )
    current = backend.logs(handle, switch.next_offset)
    assert current.text == "resumed from step-1\nepoch 2\n" and not current.complete
    fake_k8s.logs[("default", second_pod)] += "done\n"
    fake_k8s.succeed(name)
    last = backend.logs(handle, current.next_offset)
    assert (last.text, last.complete) == ("done\n", True)
    # From the start: the previous pod's output first, then the current one's, each once.
    text, offset, pages = "", 0, 0
    while True:
        chunk = backend.logs(handle, offset, limit=7)
        text, offset, pages = text + chunk.text, chunk.next_offset, pages + 1
        if chunk.complete:
            break
    assert text == "epoch 1\n" + switch.text + "resumed from step-1\nepoch 2\ndone\n" and pages > 3
    assert backend.tail(handle)[-2:] == ["epoch 2", "done"]
    with pytest.raises(ValidationError):
        backend.logs(handle, "t~bm90LWpzb24")  # a cursor this backend never gave


def test_a_replaced_pod_whose_node_is_gone_reads_as_empty_and_the_replacement_still_reads(k8s, fake_k8s):
    backend = k8s()
    _, handle, name = _launch(backend, fake_k8s)
    gone = fake_k8s.start(name, log="epoch 1\n")
    replacement = fake_k8s.preempt(name)
    fake_k8s.start(name, log="epoch 2\n", pod=replacement)
    fake_k8s.unreachable_logs.add(("default", gone))
    first = backend.logs(handle)
    assert first.text.startswith(f"--- jobplane: pod {gone} ended (preempted: ") and first.next_offset != 0
    assert "its log is no longer readable" in first.text and f"pod {replacement} replaces it" in first.text
    assert backend.logs(handle, first.next_offset).text == "epoch 2\n"


def test_the_sweep_lists_and_stops_only_this_stages_jobs(k8s, fake_k8s, tmp_path):
    from chalicelib.backends.kubernetes.backend import KubernetesBackend

    ours = k8s()
    theirs = KubernetesBackend(make_settings(tmp_path, **k8s_env(fake_k8s), JOBPLANE_STAGE="prod"))
    _, mine, mine_name = _launch(ours, fake_k8s)
    _, _, other_name = _launch(theirs, fake_k8s)
    fake_k8s.jobs[("default", "nightly-etl")] = {"metadata": {"name": "nightly-etl", "labels": {}}, "status": {}}
    (listed,) = ours.list_managed()
    assert (listed.native_name, listed.stage, listed.running) == (mine_name, "test", True)
    ours.stop_resource(listed, "orphan")
    assert ("default", mine_name) not in fake_k8s.jobs and ("default", other_name) in fake_k8s.jobs
    with pytest.raises(UnsupportedError):
        ours.stop_resource(theirs.list_managed()[0], "not ours")
    assert ("default", other_name) in fake_k8s.jobs and ("default", "nightly-etl") in fake_k8s.jobs


def test_kueues_reason_is_stored_on_the_waiting_job_and_shown_until_kueue_admits_it(tmp_path, fake_k8s, memory_store):
    """Reconcile records Kueue's admission message (the Workload's QuotaReserved=False condition) as the job's
    status_reason while it stays LAUNCHING, once per change, and the job runs when Kueue admits it."""
    from chalicelib.jobs.service import JobService
    from chalicelib.reaper import Action, reconcile
    from tests.factories import k8s_env, submit

    settings = make_settings(tmp_path, **k8s_env(fake_k8s, {"name": "q", "local_queue": "team-a"}))
    service = JobService(memory_store, settings)
    job = submit(service, backend="kubernetes", image=IMAGE)
    assert memory_store.get_job(job.job_id).status is JobStatus.LAUNCHING
    name = Handle.of(job).native_name
    message = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor a100"
    fake_k8s.pending_workload(name, message=message)
    assert [d.action for d in reconcile(service)] == [Action.NOTE_WAIT]
    waiting = memory_store.get_job(job.job_id)
    assert waiting.status is JobStatus.LAUNCHING
    assert waiting.status_reason == f"Kueue (team-a): Pending: {message}"
    assert waiting.to_api()["status_reason"] == waiting.status_reason  # what GET /jobs/{id} and status show
    assert [d.action for d in reconcile(service)] == [Action.NONE]  # unchanged: nothing written again
    fake_k8s.admit(name)
    fake_k8s.start(name)
    reconcile(service)
    assert memory_store.get_job(job.job_id).status is JobStatus.RUNNING


def test_a_pod_that_cannot_be_scheduled_is_the_waiting_jobs_reason(tmp_path, fake_k8s, memory_store):
    from chalicelib.jobs.service import JobService
    from chalicelib.reaper import reconcile
    from tests.factories import k8s_env, submit

    service = JobService(memory_store, make_settings(tmp_path, **k8s_env(fake_k8s)))
    job = submit(service, backend="kubernetes", image=IMAGE, resources={"gpus": 8, "gpu_type": "A100"})
    fake_k8s.unschedulable(Handle.of(job).native_name)
    reconcile(service)
    reason = memory_store.get_job(job.job_id).status_reason
    assert reason.startswith("Unschedulable: ") and "Insufficient" in reason, reason
