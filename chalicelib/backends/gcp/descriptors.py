"""The Google Cloud backends' facts, light to import: the implementations and Google's clients load when built."""

from __future__ import annotations

from chalicelib.backends import BackendDescriptor, Cloud, ConsoleContext, Requirement

VERTEX_EVENT_SOURCE = "aiplatform.googleapis.com"
GCE_EVENT_SOURCE = "compute.googleapis.com"
GCE_VM_EVENT_SOURCE = "jobplane.gce"  # the message a jobplane VM publishes when its job ends


def vertex_console_url(job, _ctx: ConsoleContext) -> str | None:
    from chalicelib.notify.console import GCP_RE

    gcp = GCP_RE.match(job.native_id)
    if not gcp or gcp["kind"] != "customJobs":
        return None
    return (
        f"https://console.cloud.google.com/ai/platform/locations/{gcp['where']}/training/{gcp['name']}"
        f"?project={gcp['project']}"
    )


def gce_console_url(job, ctx: ConsoleContext) -> str | None:
    from chalicelib.notify.console import GCP_RE, q

    native = job.native_id
    gcp = GCP_RE.match(native)
    if gcp and gcp["kind"] == "instances":
        return (
            f"https://console.cloud.google.com/compute/instancesDetail/zones/{gcp['where']}/instances/{gcp['name']}"
            f"?project={gcp['project']}"
        )
    # A bare instance name is found in the deployment's project and zone.
    if not gcp and ctx.gcp_project and ctx.gce_zone and "/" not in native:
        return (
            f"https://console.cloud.google.com/compute/instancesDetail/zones/{q(ctx.gce_zone)}"
            f"/instances/{q(native)}?project={q(ctx.gcp_project)}"
        )
    return None


VERTEX = BackendDescriptor(
    name="vertex",
    implementation="chalicelib.backends.gcp.vertex:VertexBackend",
    cloud=Cloud.GCP,
    display_name="Vertex AI",
    rank=20,
    role="first choice on GCP",
    time_limit_minutes=7 * 24 * 60,
    event_sources=(VERTEX_EVENT_SOURCE,),
    log_resource_types=("ml_job",),
    iam_actions=(
        "aiplatform.customJobs.create",
        "aiplatform.customJobs.get",
        "aiplatform.customJobs.list",
        "aiplatform.customJobs.cancel",
        "logging.logEntries.list",  # the job's output: resource.type="ml_job" entries
    ),
    console_url=vertex_console_url,
    reaps=True,  # the orphan sweep: unfinished custom jobs labelled as this stage's whose job is terminal or gone
    # workerpool0 (the primary replica) and N - 1 replicas in workerpool1; the project's quotas decide beyond this.
    max_nodes=64,
    requires=(Requirement("gcp_project"),),
)

GCE = BackendDescriptor(
    name="gce",
    quota="regional-gpus",
    implementation="chalicelib.backends.gcp.gce:GceBackend",
    cloud=Cloud.GCP,
    display_name="Compute Engine",
    rank=70,
    role="ad-hoc GCE VM (stopped automatically)",
    needs_image=False,
    event_sources=(GCE_EVENT_SOURCE, GCE_VM_EVENT_SOURCE),
    log_resource_types=("gce_instance",),
    iam_actions=(
        "compute.instances.create",
        "compute.instances.get",
        "compute.instances.list",
        "compute.instances.delete",
        "compute.instances.stop",
        "compute.instances.start",  # a stopped dev VM started again (gce_devvm)
        "compute.instances.setLabels",
        "compute.instances.setMetadata",
        "compute.instances.setServiceAccount",
        "compute.instances.getGuestAttributes",
        "compute.disks.create",
        "compute.subnetworks.use",
        "compute.subnetworks.useExternalIp",
        "iam.serviceAccounts.actAs",
        "storage.objects.get",
        "logging.logEntries.list",  # the startup script's output: resource.type="gce_instance" entries
        "compute.regions.get",  # the regional GPU quotas (jobs/quotas.py)
    ),
    console_url=gce_console_url,
    unsupported_features={
        "tpu": "TPUs run only through Vertex AI (backend vertex)",
        "multi_node": "GCE VMs with a compact placement policy are not launched by jobplane yet",
    },
    reaps=True,
    vm=True,
    devvm_provider="chalicelib.backends.gcp.gce_devvm:GceDevVmProvider",
    requires=(
        Requirement("gcp_project"),
        Requirement("gcp_status_uri", prefix="gs://"),
    ),
)
