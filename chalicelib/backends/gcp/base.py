"""What the Google Cloud backends share: clients, labels, machine tables, status objects, error translation."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# The error table lives in gcp/errors.py; imported here too because the GCP backends import it from base.
from chalicelib.backends.gcp.errors import map_gcp_errors, translate  # noqa: F401
from chalicelib.config import Settings
from chalicelib.errors import (
    BackendValidationError,
    UnsupportedError,
)

if TYPE_CHECKING:
    from chalicelib.jobs.spec_types import JobSpec
    from chalicelib.pricing import Quote

# --- labels (GCP rules: keys start with a letter; [a-z0-9_-]; at most 63 characters) ---------------
LABEL_MANAGED = "jobplane-managed"
LABEL_STAGE = "jobplane-stage"
LABEL_JOB_ID = "jobplane-job-id"
LABEL_ATTEMPT = "jobplane-attempt"
LABEL_STOPPED_BY = "jobplane-stopped-by"
LABEL_STOP_REASON = "jobplane-stop-reason"
LABEL_KIND = "jobplane-kind"  # "devvm" on a dev VM: the job sweep leaves it to the dev VM reaper
_LABEL_BAD = re.compile(r"[^a-z0-9_-]")


def label_value(value: str) -> str:
    """Any string as a valid label value (lowercase, [a-z0-9_-], at most 63 characters)."""
    return _LABEL_BAD.sub("-", str(value).lower())[:63]


def label_key(key: str) -> str:
    key = label_value(key)
    return key if key[:1].isalpha() else f"l-{key}"[:63]


def job_labels(settings: Settings, job_id: str, attempt: int, user: Mapping[str, str] | None = None) -> dict[str, str]:
    """The user's labels, then jobplane's (which win): how every GCP resource is traced back and swept."""
    labels = {label_key(k): label_value(v) for k, v in (user or {}).items()}
    labels.update(
        {
            LABEL_MANAGED: "true",
            LABEL_STAGE: label_value(settings.stage),
            LABEL_JOB_ID: job_id,
            LABEL_ATTEMPT: str(attempt),
        }
    )
    return labels


def managed_filter(settings: Settings) -> str:
    """The list filter that returns only this stage's jobplane resources (Compute and Vertex syntax)."""
    return f'labels.{LABEL_MANAGED}="true" AND labels.{LABEL_STAGE}="{label_value(settings.stage)}"'


# --- machines -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuOffer:
    """How one GPU type is had on Google Cloud: Vertex's accelerator enum, GCE's accelerator type,
    and the machine type for a count (N1 takes any attached count; A2/A3/G2 come with their GPUs)."""

    vertex_accelerator: str
    gce_accelerator: str
    machines: dict[int, str] | None  # GPU count -> machine type; None: an N1 machine sized by cpus/memory
    counts: tuple[int, ...]


GPU_OFFERS: dict[str, GpuOffer] = {
    "T4": GpuOffer("NVIDIA_TESLA_T4", "nvidia-tesla-t4", None, (1, 2, 4)),
    "V100": GpuOffer("NVIDIA_TESLA_V100", "nvidia-tesla-v100", None, (1, 2, 4, 8)),
    "P100": GpuOffer("NVIDIA_TESLA_P100", "nvidia-tesla-p100", None, (1, 2, 4)),
    "K80": GpuOffer("NVIDIA_TESLA_K80", "nvidia-tesla-k80", None, (1, 2, 4, 8)),
    "L4": GpuOffer(
        "NVIDIA_L4",
        "nvidia-l4",
        {1: "g2-standard-8", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"},
        (1, 2, 4, 8),
    ),
    "A100": GpuOffer(
        "NVIDIA_TESLA_A100",
        "nvidia-tesla-a100",
        {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g", 8: "a2-highgpu-8g", 16: "a2-megagpu-16g"},
        (1, 2, 4, 8, 16),
    ),
    "A100-80GB": GpuOffer(
        "NVIDIA_A100_80GB",
        "nvidia-a100-80gb",
        {1: "a2-ultragpu-1g", 2: "a2-ultragpu-2g", 4: "a2-ultragpu-4g", 8: "a2-ultragpu-8g"},
        (1, 2, 4, 8),
    ),
    "H100": GpuOffer("NVIDIA_H100_80GB", "nvidia-h100-80gb", {8: "a3-highgpu-8g"}, (8,)),
    "H200": GpuOffer("NVIDIA_H200_141GB", "nvidia-h200-141gb", {8: "a3-ultragpu-8g"}, (8,)),
}
# TPU type (spec) -> (Vertex machine type, accelerator enum or None, count, topology or None)
TPU_OFFERS: dict[str, tuple[str, str | None, int, str | None]] = {
    "v2-8": ("cloud-tpu", "TPU_V2", 8, None),
    "v3-8": ("cloud-tpu", "TPU_V3", 8, None),
    "v5litepod-1": ("ct5lp-hightpu-1t", None, 0, "1x1"),
    "v5litepod-4": ("ct5lp-hightpu-4t", None, 0, "2x2"),
    "v5litepod-8": ("ct5lp-hightpu-8t", None, 0, "2x4"),
}
_N1_SIZES = (2, 4, 8, 16, 32, 64, 96)


@dataclass(frozen=True)
class Machine:
    machine_type: str
    gpu: GpuOffer | None
    gpu_count: int


def n1_machine(cpus: float, memory_gb: float, minimum: int = 4) -> str:
    """The smallest n1-standard machine with the cpus and memory (3.75 GB per vCPU)."""
    for size in _N1_SIZES:
        if size >= max(cpus, minimum) and size * 3.75 >= memory_gb:
            return f"n1-standard-{size}"
    return "n1-standard-96"


def machine_for(spec: JobSpec) -> Machine:
    """The machine type and GPUs for a spec's resources; UnsupportedError names the field otherwise."""
    return machine_for_resources(spec.resources)


def machine_for_resources(resources) -> Machine:
    """machine_for, from the resources alone (a dev VM has no job spec)."""
    gpus = resources.gpus
    instance_type = resources.instance_type
    gpu_type = resources.gpu_type
    offer = None
    if gpus:
        if gpu_type is None:
            raise UnsupportedError(
                "Google Cloud needs resources.gpu_type to attach GPUs",
                [{"field": "resources.gpu_type", "message": f"one of {', '.join(GPU_OFFERS)}"}],
            )
        offer = GPU_OFFERS.get(gpu_type)
        if offer is None:
            raise UnsupportedError(
                f"GPU type {gpu_type} is not offered on Google Cloud",
                [{"field": "resources.gpu_type", "message": f"on Google Cloud: {', '.join(GPU_OFFERS)}"}],
            )
        if gpus not in offer.counts:
            raise UnsupportedError(
                f"{gpu_type} comes in counts of {', '.join(map(str, offer.counts))}",
                [{"field": "resources.gpus", "message": f"one of {', '.join(map(str, offer.counts))}"}],
            )
    if instance_type:
        if "." in instance_type:
            raise UnsupportedError(
                f"{instance_type} is not a Google Cloud machine type",
                [{"field": "resources.instance_type", "message": "a GCE machine type such as g2-standard-8"}],
            )
        return Machine(instance_type, offer, gpus)
    if offer is None:
        return Machine(n1_machine(float(resources.cpus), float(resources.memory_gb)), None, 0)
    if offer.machines is None:
        cpus, memory = float(resources.cpus), float(resources.memory_gb)
        return Machine(n1_machine(cpus, memory, minimum=8), offer, gpus)
    return Machine(offer.machines[gpus], offer, gpus)


def gcp_quote(catalog, provider: str, region: str, spec: JobSpec) -> tuple[str, Quote]:
    """(what is priced, its price per hour): the spec's machine plus the GPUs attached to it (a2/a3/g2 machines
    come with theirs), from the catalog's `provider` table (gce, or vertex, whose table is empty)."""
    purchase = "spot" if spec.resources.spot else "on_demand"
    tpu = spec.resources.tpu
    if tpu is not None:
        machine_type, accelerator, count = TPU_OFFERS[tpu][0], None, None
    else:
        machine = machine_for(spec)
        machine_type = machine.machine_type
        attached = machine.gpu is not None and machine_type.startswith("n1-")
        accelerator = machine.gpu.gce_accelerator if attached else None
        count = machine.gpu_count if attached else None
    what = machine_type + (f" + {count} x {accelerator}" if accelerator else "")
    quote = catalog.vm_price(provider, region, machine_type, purchase, accelerator, count)
    return f"{provider} {what} {purchase.replace('_', '-')} in {region}", quote


# --- clients ----------------------------------------------------------------------------------------
def client_kwargs(settings: Settings, host: str) -> dict[str, Any]:
    """REST transport (no gRPC channel to warm up); an emulator/fake endpoint gets anonymous credentials."""
    from google.api_core.client_options import ClientOptions

    if settings.gcp_api_endpoint:
        from google.auth.credentials import AnonymousCredentials

        return {
            "credentials": AnonymousCredentials(),
            "transport": "rest",
            "client_options": ClientOptions(api_endpoint=settings.gcp_api_endpoint),
        }
    return {"transport": "rest", "client_options": ClientOptions(api_endpoint=host)}


def refuse_foreign_uris(spec: JobSpec, service: str) -> None:
    """GCP backends read and write Cloud Storage only: an s3:// location is refused naming its field."""
    from chalicelib.jobs.contract import foreign_uri

    foreign = foreign_uri(spec, "gs")
    if foreign is not None:
        field, uri = foreign
        raise UnsupportedError(
            f"{service} read and write Cloud Storage only: {field} is {uri}",
            [{"field": field, "message": "a gs:// URI on Google Cloud backends"}],
        )


def parse_gs_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        raise BackendValidationError(f"not a gs:// URI: {uri!r}")
    bucket, _, path = uri[len("gs://") :].partition("/")
    return bucket, path.strip("/")


class StatusObjects:
    """The exit-status objects VMs write to GCS (`<status_uri>/<native_name>/exit.json`), read by REST
    (objects.get, alt=media: see rest.py) rather than google-cloud-storage, which a cold event would import."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def uri(self, native_name: str) -> str:
        return f"{(self.settings.gcp_status_uri or '').rstrip('/')}/{native_name}/exit.json"

    def read(self, native_name: str) -> dict[str, Any] | None:
        from chalicelib.backends.gcp import rest

        bucket, name = parse_gs_uri(self.uri(native_name))
        with map_gcp_errors(f"reading {self.uri(native_name)}"):
            data = rest.download(self.settings, bucket, name)
        if data is None:
            return None
        try:
            status = json.loads(data)
        except ValueError:
            return {"state": "CORRUPT", "reason": f"unreadable exit status at {self.uri(native_name)}"}
        return status if isinstance(status, dict) else None
