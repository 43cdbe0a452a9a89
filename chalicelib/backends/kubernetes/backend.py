"""batch/v1 Jobs through the official client: one Job per attempt, state from its conditions and its pods."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from chalicelib.backends import rendezvous
from chalicelib.backends.base import (
    ComputeBackend,
    Handle,
    LaunchResult,
    LogChunk,
    ManagedResource,
    Observation,
    Offset,
    PowerState,
    ResourceKind,
    bad_offset,
    decode_log_token,
    encode_log_token,
    job_env,
    parse_native_name,
)
from chalicelib.backends.kubernetes.clusters import DEFAULT_CLUSTERS, Cluster, ClusterClients
from chalicelib.backends.kubernetes.descriptors import KUBERNETES
from chalicelib.errors import BackendError, UnsupportedError, ValidationError
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.spec_types import JobSpec
from chalicelib.pricing import Unknown

PREFIX = "jobplane.dev/"
MANAGED, STAGE, JOB_ID, ATTEMPT, OWNER = (PREFIX + k for k in ("managed", "stage", "job-id", "attempt", "owner"))
#: the label the Job controller puts on a Job's pods (Kubernetes 1.27+)
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # an Indexed Job's pod annotation: its index
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"
CONTAINER = "job"
#: GKE's Cloud Storage FUSE CSI driver, and the pod annotation that has GKE inject its sidecar
GCS_FUSE_DRIVER = "gcsfuse.csi.storage.gke.io"
GCS_FUSE_ANNOTATION = "gke-gcsfuse/volumes"
GPU = "nvidia.com/gpu"
# What the node labels call each GPU type, per flavour (GKE's accelerator names; EKS and Karpenter pick the
# GPU by the instance's GPU name label, which the NVIDIA device plugin's feature discovery sets).
GKE_ACCELERATORS = {
    "T4": "nvidia-tesla-t4",
    "L4": "nvidia-l4",
    "V100": "nvidia-tesla-v100",
    "A100": "nvidia-tesla-a100",
    "A100-80GB": "nvidia-a100-80gb",
    "H100": "nvidia-h100-80gb",
    "H200": "nvidia-h200-141gb",
    "P100": "nvidia-tesla-p100",
    "K80": "nvidia-tesla-k80",
}
GPU_NAME_LABELS = {"eks": "k8s.amazonaws.com/accelerator", "karpenter": "karpenter.k8s.aws/instance-gpu-name"}
AWS_GPU_NAMES = {"T4": "t4", "A10G": "a10g", "V100": "v100", "A100": "a100", "H100": "h100", "L4": "l4", "L40S": "l40s"}
#: container waiting reasons that mean the image will never run: the job fails (a user error) at once
IMAGE_FAILURES = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
CONFIG_FAILURES = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


def gpu_name(gpu_type: str) -> str:
    return AWS_GPU_NAMES.get(gpu_type, gpu_type.lower())


def placement(cluster: Cluster, spec: JobSpec) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Node selector and tolerations for the spec's GPU type and spot wish, in the cluster flavour's labels."""
    resources = spec.resources
    selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    if cluster.flavour == "gke":
        if resources.gpu_type:
            selector["cloud.google.com/gke-accelerator"] = GKE_ACCELERATORS.get(
                resources.gpu_type, resources.gpu_type.lower()
            )
        if resources.spot:
            selector["cloud.google.com/gke-spot"] = "true"
            # GKE taints spot nodes only when asked; tolerating the taint is harmless where it is absent.
            tolerations.append(
                {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
            )
    else:
        if resources.gpu_type:
            selector[GPU_NAME_LABELS[cluster.flavour]] = gpu_name(resources.gpu_type)
        if resources.spot:
            if cluster.flavour == "eks":
                selector["eks.amazonaws.com/capacityType"] = "SPOT"
            else:
                selector["karpenter.sh/capacity-type"] = "spot"
    if resources.gpus:
        # The NVIDIA device plugin's taint on GPU nodes (GKE adds the same one to its GPU pools).
        tolerations.append({"key": GPU, "operator": "Exists", "effect": "NoSchedule"})
    if resources.instance_type:
        selector["node.kubernetes.io/instance-type"] = resources.instance_type
    return selector, tolerations


def _labels(stage: str, handle: Handle) -> dict[str, str]:
    return {MANAGED: "true", STAGE: stage, JOB_ID: handle.job_id, ATTEMPT: str(handle.attempt)}


def _when(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _condition(obj: Any, kind: str) -> Any:
    for condition in (obj.status.conditions if obj.status else None) or []:
        if condition.type == kind and condition.status == "True":
            return condition
    return None


@contextlib.contextmanager
def k8s_errors(operation: str) -> Iterator[None]:
    """The client's ApiException -> jobplane's errors: 5xx and 429 retryable, 403 names the RBAC Role."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        status = exc.status or 0
        detail = f"kubernetes {operation}: HTTP {status} {exc.reason}"
        if status == 403:
            detail += " (is deploy/kubernetes/rbac.yaml applied in the namespace?)"
        raise BackendError(detail, retryable=status == 429 or status >= 500) from exc
    except HTTPError as exc:
        raise BackendError(f"kubernetes {operation}: {exc}", retryable=True) from exc


class KubernetesBackend(ComputeBackend):
    descriptor = KUBERNETES
    named_by_us = False
    describes_by_listing = True

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.clients = ClusterClients(settings)

    @classmethod
    def defers_capacity(cls, settings, spec: JobSpec) -> bool:
        """A cluster with a Kueue LocalQueue admits its own jobs: jobplane's limits step aside there."""
        try:
            return cls(settings).cluster_for(spec).local_queue is not None
        except ValidationError:
            return False

    # --- clusters ------------------------------------------------------------------------------------
    @property
    def clusters(self) -> tuple[Cluster, ...]:
        return tuple(c for c in (self.settings.k8s_clusters or DEFAULT_CLUSTERS) if c.enabled)

    def cluster_for(self, spec: JobSpec) -> Cluster:
        wanted = spec.resources.cluster
        if wanted is None:
            return self.clusters[0]
        for cluster in self.clusters:
            if cluster.name == wanted:
                return cluster
        raise ValidationError(
            f"no enabled kubernetes cluster is named {wanted!r}",
            [{"field": "resources.cluster", "message": f"one of {', '.join(c.name for c in self.clusters)}"}],
        )

    def _named(self, name: str) -> Cluster | None:
        return next((c for c in self.clusters if c.name == name), None)

    def batch(self, cluster: Cluster):
        from kubernetes import client

        return client.BatchV1Api(self.clients.api_client(cluster))

    def core(self, cluster: Cluster):
        from kubernetes import client

        return client.CoreV1Api(self.clients.api_client(cluster))

    @staticmethod
    def native_id(cluster: Cluster, name: str) -> str:
        return f"{cluster.name}/{cluster.namespace}/{name}"

    def _locate(self, handle: Handle) -> list[tuple[Cluster, str]]:
        """Where the handle's Job is (its native id says), or every cluster it could be in under its name."""
        if handle.native_id and handle.native_id.count("/") == 2:
            name, _, job = handle.native_id.partition("/")
            cluster = self._named(name)
            if cluster is not None:
                return [(cluster, job.rsplit("/", 1)[1])]
        return [(c, handle.native_name) for c in self.clusters]

    # --- the Job -----------------------------------------------------------------------------------------
    def hourly_quote(self, spec, region, usage=None):
        """The node's price where the spec pins its type (resources.instance_type, the node selector
        node.kubernetes.io/instance-type) on an EKS or GKE cluster: the whole node, as its cloud bills it."""
        cluster = self.cluster_for(spec)
        node = spec.resources.instance_type
        if not node:
            return "kubernetes", Unknown(
                f"cluster {cluster.name} picks the node; name resources.instance_type to have the job priced"
            )
        if cluster.kind == "eks":
            from chalicelib.backends.aws.base import aws_quote

            priced, quote = aws_quote(
                self.catalog, "ec2", cluster.region or self.settings.region, node, spec.resources.spot
            )
            return f"{priced} (the whole node)", quote
        if cluster.kind == "gke" and cluster.location:
            location = cluster.location
            gcp_region = location.rsplit("-", 1)[0] if location.count("-") == 2 else location
            purchase = "spot" if spec.resources.spot else "on_demand"
            quote = self.catalog.vm_price("gce", gcp_region, node, purchase)
            return f"gce {node} {purchase.replace('_', '-')} in {gcp_region} (the whole node)", quote
        return "kubernetes", Unknown(
            f"cluster {cluster.name} is a kubeconfig context: its cloud and prices are unknown"
        )

    def _validate_impl(self, spec: JobSpec) -> None:
        if not spec.image:
            raise UnsupportedError(
                "a Kubernetes Job runs a container image", [{"field": "image", "message": "required for kubernetes"}]
            )
        cluster = self.cluster_for(spec)
        if self._stages(spec) and cluster.store == "gs":
            from chalicelib.backends.gcp.base import refuse_foreign_uris

            refuse_foreign_uris(spec, f"Kubernetes cluster {cluster.name} (store: gs)")
        elif self._stages(spec):
            from chalicelib.backends.aws import staging

            staging.require_s3(spec, "Kubernetes")
        if spec.resources.gpu_type and cluster.flavour == "gke" and spec.resources.gpu_type not in GKE_ACCELERATORS:
            raise UnsupportedError(
                f"GKE offers no {spec.resources.gpu_type}",
                [{"field": "resources.gpu_type", "message": "one of " + ", ".join(GKE_ACCELERATORS)}],
            )

    @staticmethod
    def _stages(spec: JobSpec) -> bool:
        """True when the job's files move (code, inputs, outputs or a checkpoint): the staging containers run."""
        return bool(spec.code_uri or spec.inputs or spec.outputs or spec.checkpoint_uri)

    def job_body(self, job, handle: Handle, cluster: Cluster) -> dict[str, Any]:
        """The batch/v1 Job for one attempt, as the API's JSON (checked against the client's V1Job in tests)."""
        spec = job.spec
        resources = spec.resources
        labels = _labels(self.settings.stage, handle)
        annotations = {
            JOB_ID: handle.job_id,
            ATTEMPT: str(handle.attempt),
            OWNER: job.owner,
            STAGE: self.settings.stage,
        }
        limits = {"cpu": f"{resources.cpus:g}", "memory": f"{int(float(resources.memory_gb) * 1024)}Mi"}
        if resources.gpus:
            limits[GPU] = str(resources.gpus)
        env = job_env(spec, handle)
        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": spec.image,
            "resources": {"limits": limits, "requests": dict(limits)},
        }
        pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
        nodes = resources.nodes
        if nodes > 1:
            # Pod i of an Indexed Job is host <job>-<i> under the headless Service named as the Job (the pod's
            # subdomain): pod 0, the master, is <job>-0.<job> in the namespace's DNS.
            name = handle.native_name
            env.update(rendezvous.launch_env(spec, master_addr=f"{name}-0.{name}"))
            pod["subdomain"] = name
        if self._stages(spec) and cluster.store == "gs":
            self._staged_gcs(job, handle, pod, env)
        elif self._stages(spec):
            self._staged(job, handle, pod, env)
        elif nodes > 1:
            container["command"] = [
                "/bin/sh",
                "-c",
                rendezvous.prelude(rendezvous.KUBERNETES) + 'exec "$@"',
                "jobplane",
            ]
            container["args"] = list(spec.command)
        else:
            container["command"] = list(spec.command)
        container["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
        selector, tolerations = placement(cluster, spec)
        if selector:
            pod["nodeSelector"] = selector
        if tolerations:
            pod["tolerations"] = tolerations
        fatal = sorted(set(spec.retries.fatal_exit_codes))
        # Spot preemption, node drain, eviction: the Job controller makes a new pod, no retry is used up. A
        # multi-node group cannot take a lone replacement into its rendezvous: one disrupted node fails the
        # Job (the controller stops the others) and jobplane retries the whole group as an interruption.
        disrupted = "FailJob" if nodes > 1 else "Ignore"
        rules: list[dict[str, Any]] = [
            {"action": disrupted, "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
        ]
        if fatal:
            rules.append(
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": fatal}}
            )
        body: dict[str, Any] = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": handle.native_name, "labels": dict(labels), "annotations": annotations},
            "spec": {
                "backoffLimit": max(spec.retries.max_attempts - 1, 0),
                "activeDeadlineSeconds": spec.max_runtime_minutes * 60,
                "ttlSecondsAfterFinished": self.settings.k8s_ttl_seconds,
                "podFailurePolicy": {"rules": rules},
                "template": {"metadata": {"labels": dict(labels), "annotations": annotations}, "spec": pod},
            },
        }
        if pod.get("volumes") and any("csi" in v for v in pod["volumes"]):
            # GKE injects the Cloud Storage FUSE sidecar into pods that ask for it.
            body["spec"]["template"]["metadata"]["annotations"][GCS_FUSE_ANNOTATION] = "true"
        if nodes > 1:
            # Every node at once; one failed pod fails the Job, whose controller then stops the other pods (a
            # group missing a node cannot go on); jobplane's retries start the whole group again.
            body["spec"].update(completionMode="Indexed", completions=nodes, parallelism=nodes, backoffLimit=0)
        if cluster.local_queue:
            body["metadata"]["labels"][KUEUE_QUEUE] = cluster.local_queue
            body["spec"]["suspend"] = True  # Kueue unsuspends it when it admits the workload
        return body

    def _staged(self, job, handle: Handle, pod: dict[str, Any], env: dict[str, str]) -> None:
        """The job contract as on ECS: an init container downloads checkpoint, code and inputs; the job runs in the
        wrapper; a second container uploads the checkpoint while it runs and outputs and checkpoint after it."""
        from chalicelib.backends.aws import staging
        from chalicelib.jobs import contract

        spec = job.spec
        layout = staging.CONTAINERS
        bucket = self.settings.artifacts_bucket
        checkpoint = contract.checkpoint_location(spec, job.job_id, bucket)
        env.update(layout.variables(handle.job_id, handle.attempt))
        shared = {"name": staging.VOLUME, "mountPath": staging.ROOT}
        inputs = {"name": staging.INPUT_VOLUME, "mountPath": layout.input_dir}
        (container,) = pod["containers"]
        script = staging.WRAPPER
        if spec.resources.nodes > 1:
            script = rendezvous.prelude(rendezvous.KUBERNETES) + script
        container["command"] = ["/bin/sh", "-c", script, "jobplane"]
        container["args"] = staging.wrapper_args(spec, layout)
        container["volumeMounts"] = [shared, {**inputs, "readOnly": True}]
        helper = {"limits": {"cpu": "250m", "memory": "256Mi"}, "requests": {"cpu": "250m", "memory": "256Mi"}}
        pod["initContainers"] = [
            {
                "name": "stage-in",
                "image": staging.AWS_CLI_IMAGE,
                "command": ["/bin/sh", "-c", staging.STAGE_IN, "stage-in"],
                "args": staging.stage_in_args(spec, checkpoint),
                "volumeMounts": [shared, inputs],
                "resources": helper,
            }
        ]
        pod["containers"].append(
            {
                "name": "stage-out",
                "image": staging.AWS_CLI_IMAGE,
                "command": ["/bin/sh", "-c", staging.STAGE_OUT, "stage-out"],
                "args": staging.stage_out_args(contract.artifacts_uri(spec, job.job_id, bucket), checkpoint),
                "volumeMounts": [shared],
                "resources": helper,
            }
        )
        pod["volumes"] = [{"name": staging.VOLUME, "emptyDir": {}}, {"name": staging.INPUT_VOLUME, "emptyDir": {}}]
        pod["terminationGracePeriodSeconds"] = 120  # stage-out's last upload after a SIGTERM

    def _staged_gcs(self, job, handle: Handle, pod: dict[str, Any], env: dict[str, str]) -> None:
        """The job contract on a cluster whose store is Cloud Storage, as on Vertex: each bucket the job names
        is a Cloud Storage FUSE CSI volume at /gcs/<bucket> (GKE's gcsfuse.csi.storage.gke.io driver; the pod's
        Kubernetes service account needs access to the buckets through Workload Identity), and the job's
        container runs Vertex's wrapper, which checks and unpacks the code from /gcs, links each input into
        $JOBPLANE_INPUT_DIR, then runs setup and the command with outputs and checkpoints on /gcs."""
        from chalicelib.backends.gcp import vertex
        from chalicelib.backends.gcp.base import parse_gs_uri
        from chalicelib.jobs import contract

        spec = job.spec
        bucket = self.settings.gcp_artifacts_bucket
        artifacts = contract.artifacts_uri(spec, job.job_id, bucket, "gs")
        checkpoint = contract.checkpoint_location(spec, job.job_id, bucket, "gs")
        env.update(
            contract.job_variables(
                handle.job_id,
                handle.attempt,
                input_dir=vertex.INPUT_DIR,
                output_dir=vertex.gcs_path(artifacts),
                checkpoint_dir=vertex.gcs_path(checkpoint),
            )
        )
        (container,) = pod["containers"]
        script = vertex.WRAPPER
        if spec.resources.nodes > 1:  # each node's rank and the master's address first, as in _staged
            script = rendezvous.prelude(rendezvous.KUBERNETES) + script
        container["command"] = ["/bin/sh", "-c", script, "jobplane"]
        container["args"] = vertex.wrapper_args(spec)
        uris = [uri for _, uri in contract.store_uris(spec)] + [artifacts, checkpoint]
        buckets = sorted({parse_gs_uri(uri)[0] for uri in uris})
        pod["volumes"] = [
            {
                "name": f"gcs-{i}",
                "csi": {
                    "driver": GCS_FUSE_DRIVER,
                    "volumeAttributes": {"bucketName": name, "mountOptions": "implicit-dirs"},
                },
            }
            for i, name in enumerate(buckets)
        ]
        container["volumeMounts"] = [
            {"name": f"gcs-{i}", "mountPath": f"{vertex.GCS_MOUNT}/{name}"} for i, name in enumerate(buckets)
        ]

    def _launch_impl(self, job, handle: Handle) -> LaunchResult:
        from kubernetes.client.exceptions import ApiException

        cluster = self.cluster_for(job.spec)
        body = self.job_body(job, handle, cluster)
        if self._read(cluster, handle.native_name) is not None:
            return LaunchResult(self.native_id(cluster, handle.native_name), "AlreadyLaunched")
        try:
            created = self.batch(cluster).create_namespaced_job(cluster.namespace, body)
        except ApiException as exc:
            if exc.status != 409:  # AlreadyExists: a launch racing this one made it under the same name
                with k8s_errors("create Job"):
                    raise
            return LaunchResult(self.native_id(cluster, handle.native_name), "AlreadyLaunched")
        if job.spec.resources.nodes > 1:
            self._create_service(cluster, self.service_body(handle, created.metadata.uid))
        return LaunchResult(
            self.native_id(cluster, handle.native_name), "Suspended" if cluster.local_queue else "Created"
        )

    def service_body(self, handle: Handle, job_uid: str) -> dict[str, Any]:
        """The headless Service that gives a multi-node Job's pods their DNS names (<job>-<index>.<job>); owned
        by the Job, so deleting the Job (cancel, the sweep, its TTL) deletes the Service too."""
        name = handle.native_name
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "labels": _labels(self.settings.stage, handle),
                "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job_uid, "blockOwnerDeletion": True}
                ],
            },
            # No cluster IP: DNS answers with each ready pod's own address; not-ready pods too, so the nodes can
            # find the master while they all start.
            "spec": {"clusterIP": "None", "selector": {JOB_NAME_LABEL: name}, "publishNotReadyAddresses": True},
        }

    def _create_service(self, cluster: Cluster, body: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core(cluster).create_namespaced_service(cluster.namespace, body)
        except ApiException as exc:
            if exc.status != 409:  # a retried launch made it already
                with k8s_errors("create Service"):
                    raise

    def _read(self, cluster: Cluster, name: str):
        from kubernetes.client.exceptions import ApiException

        try:
            return self.batch(cluster).read_namespaced_job(name, cluster.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            with k8s_errors("read Job"):
                raise

    def _pods(self, cluster: Cluster, selector: str) -> list[Any]:
        with k8s_errors("list Pods"):
            return list(self.core(cluster).list_namespaced_pod(cluster.namespace, label_selector=selector).items)

    def _describe_impl(self, handle: Handle) -> Observation | None:
        for cluster, name in self._locate(handle):
            found = self._read(cluster, name)
            if found is not None:
                return self.observe(cluster, found, self._pods(cluster, f"{JOB_NAME_LABEL}={name}"))
        return None

    def _describe_many_impl(self, handles: list[Handle]) -> dict[str, Observation | None]:
        # Two list calls per cluster (this stage's Jobs and their pods), whatever the number of jobs.
        wanted = {(h.job_id, h.attempt): h for h in handles}
        found: dict[str, Observation | None] = dict.fromkeys((h.job_id for h in handles), None)
        selector = f"{MANAGED}=true,{STAGE}={self.settings.stage}"
        for cluster in self.clusters:
            with k8s_errors("list Jobs"):
                jobs = self.batch(cluster).list_namespaced_job(cluster.namespace, label_selector=selector).items
            pods: dict[str, list[Any]] = {}
            for pod in self._pods(cluster, selector):
                pods.setdefault((pod.metadata.labels or {}).get(JOB_NAME_LABEL, ""), []).append(pod)
            for item in jobs:
                parsed = parse_native_name(item.metadata.name)
                if parsed is None or parsed not in wanted or found[parsed[0]] is not None:
                    continue
                handle = wanted[parsed]
                if handle.native_id and not handle.native_id.startswith(f"{cluster.name}/"):
                    continue
                found[parsed[0]] = self.observe(cluster, item, pods.get(item.metadata.name, []))
        return found

    # --- state -------------------------------------------------------------------------------------------
    def observe(self, cluster: Cluster, job: Any, pods: list[Any]) -> Observation:
        """A V1Job and its pods -> Observation (Job conditions first; pods say why, or what is in the way)."""
        name = job.metadata.name
        labels = job.metadata.labels or {}
        parsed = parse_native_name(name)
        base = {
            "native_id": self.native_id(cluster, name),
            "job_id": labels.get(JOB_ID) or (parsed[0] if parsed else None),
            "attempt": int(labels[ATTEMPT]) if labels.get(ATTEMPT, "").isdigit() else (parsed[1] if parsed else None),
            "started_at": _when(job.status.start_time) if job.status else None,
        }
        pods = sorted(pods, key=_created)
        done = _condition(job, "Complete")
        if done is not None:
            return Observation(
                JobStatus.SUCCEEDED,
                "Complete",
                reason="Kubernetes: Job complete",
                exit_code=0,
                at=_when(done.last_transition_time) or _when(job.status.completion_time),
                **base,
            )
        failed = _condition(job, "Failed")
        if failed is not None:
            kind, reason, code = self._failure(failed, pods)
            nodes = _nodes(job)
            preempted = [p for p in pods if _condition_any(p, "DisruptionTarget", "True") is not None]
            node = _failed_node(pods) if nodes > 1 else None
            if nodes > 1 and preempted:
                kind, node = FailureKind.INTERRUPTED, _index(preempted[0])
                reason = f"{_disruption(preempted[0])}: the group stops and is retried whole"
            if node is not None:
                reason = f"node {node} of {nodes} failed: {reason}"
            return Observation(
                JobStatus.FAILED,
                f"Failed/{failed.reason or 'Failed'}",
                reason=reason,
                failure_kind=kind,
                exit_code=code,
                at=_when(failed.last_transition_time),
                **base,
            )
        # FailureTarget / SuccessCriteriaMet: the controller is still terminating pods; not terminal yet.
        for pending in ("FailureTarget", "SuccessCriteriaMet"):
            if _condition(job, pending) is not None:
                return Observation(JobStatus.RUNNING, pending, reason=f"Kubernetes: {pending}", **base)
        if job.spec and job.spec.suspend:
            why = self._kueue_reason(cluster, job)
            return Observation(JobStatus.QUEUED, "Suspended", reason=why, waiting_reason=why, **base)
        latest = pods[-1] if pods else None
        if latest is None:
            return Observation(JobStatus.LAUNCHING, "Created", reason="Kubernetes: no pod yet", **base)
        waiting = self._waiting(latest)
        if waiting and waiting[0] in IMAGE_FAILURES + CONFIG_FAILURES:
            return Observation(
                JobStatus.FAILED,
                f"Pod/{waiting[0]}",
                reason=f"{waiting[0]}: {waiting[1]}".rstrip(": "),
                failure_kind=FailureKind.USER_ERROR,
                **base,
            )
        phase = (latest.status.phase if latest.status else None) or "Pending"
        nodes = _nodes(job)
        if phase == "Running" and nodes > 1:
            running = {_index(p) for p in pods if p.status and p.status.phase == "Running"}
            if len(running) >= nodes:
                return Observation(
                    JobStatus.RUNNING, "Running", reason=f"Kubernetes: all {nodes} node pods running", **base
                )
            return Observation(
                JobStatus.LAUNCHING,
                "Pod/Running",
                reason=f"Kubernetes: {len(running)} of {nodes} node pods running",
                **base,
            )
        if phase == "Running":
            return Observation(JobStatus.RUNNING, "Running", reason="Kubernetes: pod running", **base)
        unschedulable = _condition_any(latest, "PodScheduled", "False")
        if unschedulable is not None and unschedulable.reason == "Unschedulable":
            why = f"Unschedulable: {unschedulable.message or ''}".strip()
            return Observation(JobStatus.LAUNCHING, "Pod/Unschedulable", reason=why, waiting_reason=why, **base)
        if phase == "Failed" and _condition_any(latest, "DisruptionTarget", "True") is not None:
            # Preempted; the podFailurePolicy ignores it and the controller is making the next pod.
            return Observation(JobStatus.LAUNCHING, "Pod/DisruptionTarget", reason=_disruption(latest), **base)
        if waiting:
            return Observation(JobStatus.LAUNCHING, f"Pod/{waiting[0]}", reason=waiting[0], **base)
        return Observation(JobStatus.LAUNCHING, f"Pod/{phase}", reason=f"Kubernetes: pod {phase}", **base)

    @staticmethod
    def _waiting(pod: Any) -> tuple[str, str] | None:
        for status in (pod.status.container_statuses if pod.status else None) or []:
            if status.state and status.state.waiting and status.state.waiting.reason:
                return status.state.waiting.reason, status.state.waiting.message or ""
        return None

    def _failure(self, condition: Any, pods: list[Any]) -> tuple[FailureKind, str, int | None]:
        why = condition.reason or "Failed"
        message = condition.message or ""
        terminated = _terminated(pods)
        code = terminated.exit_code if terminated is not None else None
        if why == "DeadlineExceeded":
            return FailureKind.TIMEOUT, f"DeadlineExceeded: {message}".strip(), code
        if terminated is not None and terminated.reason == "OOMKilled":
            return FailureKind.USER_ERROR, f"OOMKilled: the job's container ran out of memory ({message})", code
        if why == "PodFailurePolicy":
            return FailureKind.USER_ERROR, f"PodFailurePolicy: {message}".strip(), code
        if terminated is not None:
            return FailureKind.USER_ERROR, f"{why}: the job exited {code} ({terminated.reason or 'Error'})", code
        waiting = next((w for p in reversed(pods) if (w := self._waiting(p))), None)
        if waiting and waiting[0] in IMAGE_FAILURES:
            return FailureKind.USER_ERROR, f"{waiting[0]}: {waiting[1]}", None
        return FailureKind.BACKEND_ERROR, f"{why}: {message}".strip(), code

    def _kueue_reason(self, cluster: Cluster, job: Any) -> str:
        """Why Kueue has not admitted the Job: its Workload's QuotaReserved condition, when one is readable."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        queue = (job.metadata.labels or {}).get(KUEUE_QUEUE)
        if not queue:
            return "Kubernetes: Job suspended"
        try:
            found = client.CustomObjectsApi(self.clients.api_client(cluster)).list_namespaced_custom_object(
                "kueue.x-k8s.io",
                "v1beta1",
                cluster.namespace,
                "workloads",
                label_selector=f"{KUEUE_JOB_UID}={job.metadata.uid}",
            )
        except ApiException:
            found = {}
        for workload in found.get("items", []):
            for condition in (workload.get("status") or {}).get("conditions") or []:
                if condition.get("type") in ("QuotaReserved", "Admitted") and condition.get("status") == "False":
                    return f"Kueue ({queue}): {condition.get('reason', '')}: {condition.get('message', '')}".strip()
        return f"Kueue ({queue}): waiting for admission"

    # --- cancel, logs, the sweep -----------------------------------------------------------------------
    def _delete(self, cluster: Cluster, name: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch(cluster).delete_namespaced_job(
                name, cluster.namespace, body=client.V1DeleteOptions(propagation_policy="Background")
            )
        except ApiException as exc:
            if exc.status != 404:
                with k8s_errors("delete Job"):
                    raise

    def _cancel_impl(self, handle: Handle) -> None:
        for cluster, name in self._locate(handle):
            found = self._read(cluster, name)
            if found is None:
                continue
            if _condition(found, "Complete") is None and _condition(found, "Failed") is None:
                self._delete(cluster, name)  # a finished Job stays, with its pods' logs, until its TTL
            return

    def _node_logs_impl(self, handle: Handle, node: int, offset: Offset, limit: int) -> LogChunk:
        return self._logs_impl(handle, offset, limit, node=node)

    def _logs_impl(self, handle: Handle, offset: Offset, limit: int, node: int | None = None) -> LogChunk:
        """The `job` container's log of each of the Job's pods in turn: a pod that was preempted (or otherwise
        replaced) is read to its end, then a line says which pod replaced it and why, then the new pod's log
        follows. The offset is a byte offset into the first pod's log, then a cursor naming the pod and the
        byte in it (encode_log_token), so `--follow` goes on across a replacement and offset 0 reads every
        pod's output from the start, the previous ones first. A multi-node Job's pods are read per node
        (`node`; without it node 0, the master)."""
        if not isinstance(offset, int | str):
            raise bad_offset()
        for cluster, name in self._locate(handle):
            found = self._read(cluster, name)
            if found is None:
                continue
            pods = sorted(
                (
                    p
                    for p in self._pods(cluster, f"{JOB_NAME_LABEL}={name}")
                    if p.status and p.status.phase != "Pending"
                ),
                key=_pod_order,
            )
            finished = _condition(found, "Complete") is not None or _condition(found, "Failed") is not None
            if _nodes(found) > 1:
                wanted = 0 if node is None else node
                pods = [p for p in pods if _index(p) == wanted]  # that node's pods, a replaced one's too
            if not pods:
                return LogChunk("", offset, finished, note="no pod has started yet")
            index, at = self._log_position(pods, offset)
            pod = pods[index]
            text, note = self._pod_log(cluster, pod, is_latest=index == len(pods) - 1)
            if text is None:
                return LogChunk("", offset, finished, note=note)
            data = text.encode()
            piece = data[at : at + limit]
            end = at + len(piece)
            if end >= len(data) and index + 1 < len(pods):
                # This pod is over (a newer one replaced it): say so once, and go on at the next pod's start.
                following = pods[index + 1]
                line = f"--- jobplane: pod {pod.metadata.name} ended ({_pod_end(pod)}); {note + '; ' if note else ''}"
                line += f"pod {following.metadata.name} replaces it ---\n"
                if data and not data.endswith(b"\n"):
                    line = "\n" + line
                token = encode_log_token({"pod": following.metadata.name, "at": 0})
                return LogChunk(piece.decode(errors="replace") + line, token, False)
            next_offset: Offset = end if index == 0 else encode_log_token({"pod": pod.metadata.name, "at": end})
            complete = finished and index == len(pods) - 1 and end >= len(data)
            return LogChunk(piece.decode(errors="replace"), next_offset, complete)
        return LogChunk("", offset, True, note="the Job is not in the cluster")

    @staticmethod
    def _log_position(pods: list[Any], offset: Offset) -> tuple[int, int]:
        """(pod index, byte) an offset names: an int is a byte of the first pod's log, a cursor names its pod
        (one that is gone: the oldest pod still there, from its start)."""
        if isinstance(offset, int):
            return 0, max(offset, 0)
        state = decode_log_token(offset)
        wanted, at = state.get("pod"), state.get("at")
        if not isinstance(wanted, str) or not isinstance(at, int) or at < 0:
            raise bad_offset()
        for index, pod in enumerate(pods):
            if pod.metadata.name == wanted:
                return index, at
        return 0, 0

    def _pod_log(self, cluster: Cluster, pod: Any, is_latest: bool) -> tuple[str | None, str | None]:
        """The pod's `job` log, or (None, why) for the current pod whose log cannot be read yet; a replaced
        pod whose log cannot be read at all (its node went with a spot reclaim: the API server cannot reach
        its kubelet) reads as empty, with why."""
        from kubernetes.client.exceptions import ApiException

        try:
            with k8s_errors("read Pod log"):
                text = self.core(cluster).read_namespaced_pod_log(
                    pod.metadata.name, cluster.namespace, container=CONTAINER
                )
        except BackendError as exc:
            if not is_latest:
                return "", "its log is no longer readable"  # its node went with it: what follows still reads
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status in (400, 404):
                return None, "the pod's log is not there (yet)"
            raise
        return text or "", None

    def _list_managed_impl(self) -> list[ManagedResource]:
        found = []
        selector = f"{MANAGED}=true,{STAGE}={self.settings.stage}"
        for cluster in self.clusters:
            with k8s_errors("list Jobs"):
                jobs = self.batch(cluster).list_namespaced_job(cluster.namespace, label_selector=selector).items
            for item in jobs:
                labels = item.metadata.labels or {}
                finished = _condition(item, "Complete") is not None or _condition(item, "Failed") is not None
                parsed = parse_native_name(item.metadata.name)
                found.append(
                    ManagedResource(
                        backend=self.name,
                        resource_id=self.native_id(cluster, item.metadata.name),
                        kind=ResourceKind.JOB,
                        state="Finished" if finished else "Active",
                        power=PowerState.GONE if finished else PowerState.RUNNING,
                        stage=labels.get(STAGE),
                        native_name=item.metadata.name,
                        job_id=parsed[0] if parsed else None,
                        attempt=parsed[1] if parsed else None,
                        launched_at=_when(item.metadata.creation_timestamp),
                    )
                )
        return found

    def _stop_resource_impl(self, resource: ManagedResource, reason: str) -> None:
        name, _, rest = resource.resource_id.partition("/")
        cluster = self._named(name)
        if cluster is None or resource.native_name is None:
            raise UnsupportedError(f"refusing to stop {resource.resource_id}: no enabled cluster is named {name!r}")
        found = self._read(cluster, resource.native_name)
        if found is None or (found.metadata.labels or {}).get(STAGE) != self.settings.stage:
            return  # gone, or not this stage's (checked on the object itself, not only the list)
        self._delete(cluster, resource.native_name)


def _created(obj: Any) -> datetime:
    return _when(obj.metadata.creation_timestamp) or datetime.min.replace(tzinfo=UTC)


def _pod_order(pod: Any) -> tuple[datetime, int, datetime]:
    """Oldest first; within one second (creationTimestamp's resolution) an ended pod before its replacement."""
    ended = (pod.status.phase if pod.status else None) in ("Failed", "Succeeded")
    started = _when(pod.status.start_time) if pod.status else None
    return _created(pod), 0 if ended else 1, started or datetime.max.replace(tzinfo=UTC)


def _pod_end(pod: Any) -> str:
    """Why a replaced pod ended, in the kubelet's words: its DisruptionTarget condition, else its phase."""
    found = _condition_any(pod, "DisruptionTarget", "True")
    if found is not None:
        return f"preempted: {found.reason or 'DisruptionTarget'}: {found.message or ''}".rstrip(": ")
    return (pod.status.phase if pod.status else None) or "ended"


def _condition_any(pod: Any, kind: str, status: str) -> Any:
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.type == kind and condition.status == status:
            return condition
    return None


def _nodes(job: Any) -> int:
    """How many nodes a Job runs: an Indexed Job's completions (jobplane's multi-node jobs), else 1."""
    spec = job.spec
    return (spec.completions or 1) if spec and spec.completion_mode == "Indexed" else 1


def _index(pod: Any) -> int | None:
    """The pod's completion index (its node rank) in an Indexed Job."""
    value = ((pod.metadata.annotations if pod.metadata else None) or {}).get(COMPLETION_INDEX)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _failed_node(pods: list[Any]) -> int | None:
    """The rank of the first node pod whose job container ended with a non-zero exit code."""
    ended = []
    for pod in pods:
        for status in (pod.status.container_statuses if pod.status else None) or []:
            done = status.state.terminated if status.name == CONTAINER and status.state else None
            if done is not None and done.exit_code:
                ended.append((done.finished_at or datetime.max.replace(tzinfo=UTC), _index(pod)))
    return min(ended, key=lambda e: e[0])[1] if ended else None


def _terminated(pods: list[Any]) -> Any:
    """The job container's last termination (newest pod first)."""
    for pod in reversed(pods):
        for status in (pod.status.container_statuses if pod.status else None) or []:
            if status.name == CONTAINER and status.state and status.state.terminated:
                return status.state.terminated
    return None


def _disruption(pod: Any) -> str:
    found = _condition_any(pod, "DisruptionTarget", "True")
    return f"DisruptionTarget: {found.reason or ''} {found.message or ''}".strip() if found else "DisruptionTarget"
