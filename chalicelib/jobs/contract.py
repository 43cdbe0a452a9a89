"""The job contract every backend keeps: the variables a job sees and where its files come from and go.

A job finds, by the same names on every backend:
  JOBPLANE_JOB_ID, JOBPLANE_ATTEMPT      who it is
  JOBPLANE_INPUT_DIR/<name>               each input, read-only, before setup starts
  JOBPLANE_OUTPUT_DIR                     what it writes here ends up under artifacts_uri (failed jobs too)
  JOBPLANE_CHECKPOINT_DIR                 restored from checkpoint_uri before it starts, synced back while it runs
and, on every node of a multi-node job (resources.nodes > 1), what torchrun's --nnodes, --node_rank,
--master_addr, --master_port and --nproc_per_node take:
  JOBPLANE_NUM_NODES, JOBPLANE_NODE_RANK (0..N-1; 0 is the master), JOBPLANE_MASTER_ADDR,
  JOBPLANE_MASTER_PORT, JOBPLANE_GPUS_PER_NODE
Its current folder is the unpacked code_uri when the spec has one. Each backend decides the paths (SageMaker's
are fixed by SageMaker), this module decides the names and the locations in the object store.
"""

from __future__ import annotations

from collections.abc import Mapping

from chalicelib.jobs.spec_types import JobSpec

JOB_ID = "JOBPLANE_JOB_ID"
ATTEMPT = "JOBPLANE_ATTEMPT"
INPUT_DIR = "JOBPLANE_INPUT_DIR"
OUTPUT_DIR = "JOBPLANE_OUTPUT_DIR"
CHECKPOINT_DIR = "JOBPLANE_CHECKPOINT_DIR"
VARIABLES = (JOB_ID, ATTEMPT, INPUT_DIR, OUTPUT_DIR, CHECKPOINT_DIR)
NUM_NODES = "JOBPLANE_NUM_NODES"
NODE_RANK = "JOBPLANE_NODE_RANK"
MASTER_ADDR = "JOBPLANE_MASTER_ADDR"
MASTER_PORT = "JOBPLANE_MASTER_PORT"
GPUS_PER_NODE = "JOBPLANE_GPUS_PER_NODE"
NODE_VARIABLES = (NUM_NODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, GPUS_PER_NODE)
#: the port the master node listens on where the backend chooses it (the cloud backends: a machine of its own)
DEFAULT_MASTER_PORT = 29500
#: what a spec's env may not set (the job's own variables above, and the cloud SDKs' credentials)
RESERVED_PREFIXES = ("JOBPLANE_", "AWS_")

#: where `jobplane submit` uploads packed code, below the stage's artifact store: code/<sha256>.tar.gz
CODE_PREFIX = "code/"
#: the most members and unpacked bytes a job's packed code may hold: the job-side unpack refuses a larger
#: archive (a zip bomb) before writing anything, and `jobplane submit` refuses to pack a larger workdir
CODE_MAX_MEMBERS = 100_000
CODE_MAX_UNPACKED_BYTES = 4 * 1024**3
#: where a job's outputs go when its spec names no `outputs`: outputs/<job_id>/
OUTPUTS_PREFIX = "outputs/"
#: where a job's checkpoints go when its spec names no `checkpoint_uri`: checkpoints/<job_id>/
CHECKPOINTS_PREFIX = "checkpoints/"


def store_root(spec_uri: str | None, bucket: str, scheme: str = "s3") -> str:
    """`spec_uri` as a prefix ending in /, or the stage's default outputs prefix in `bucket`."""
    if spec_uri:
        return spec_uri if spec_uri.endswith("/") else spec_uri + "/"
    return f"{scheme}://{bucket}/{OUTPUTS_PREFIX}"


def store_for(backend: str | None, settings, spec: JobSpec | None = None) -> tuple[str, str]:
    """(bucket, scheme) of the stage's store where a job on `backend` keeps its files when the spec names no
    location: Cloud Storage (JOBPLANE_GCP_ARTIFACTS_BUCKET) for the Google Cloud backends and for a Kubernetes
    cluster whose `store` is gs (the spec's resources.cluster, else the first enabled one), S3
    (JOBPLANE_ARTIFACTS_BUCKET) for every other."""
    from chalicelib.backends import Cloud, descriptor_or_none

    found = descriptor_or_none(backend)
    if found is not None and found.cloud == Cloud.GCP:
        return settings.gcp_artifacts_bucket, "gs"
    if found is not None and found.cloud == Cloud.KUBERNETES:
        clusters = [c for c in (getattr(settings, "k8s_clusters", None) or ()) if c.enabled]
        wanted = spec.resources.cluster if spec is not None else None
        cluster = next((c for c in clusters if c.name == wanted), clusters[0] if clusters else None)
        if cluster is not None and cluster.store == "gs":
            return settings.gcp_artifacts_bucket, "gs"
    return settings.artifacts_bucket, "s3"


def artifacts_uri(spec: JobSpec, job_id: str, bucket: str, scheme: str = "s3") -> str:
    """Where the job's $JOBPLANE_OUTPUT_DIR ends up: <outputs>/<job_id>/ (every attempt writes there)."""
    return f"{store_root(spec.outputs, bucket, scheme)}{job_id}/"


def checkpoint_location(spec: JobSpec, job_id: str, bucket: str, scheme: str = "s3") -> str:
    """Where $JOBPLANE_CHECKPOINT_DIR is restored from and synced to: the spec's checkpoint_uri, or the job's
    own prefix in the stage's store, so every attempt of a job (on any backend of that cloud) resumes from the
    one before it without the user naming a location."""
    if spec.checkpoint_uri:
        return spec.checkpoint_uri if spec.checkpoint_uri.endswith("/") else spec.checkpoint_uri + "/"
    return f"{scheme}://{bucket}/{CHECKPOINTS_PREFIX}{job_id}/"


def code_key(sha256: str) -> str:
    """The object key of packed code with this digest: content-addressed, so unchanged code uploads nothing."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return f"{CODE_PREFIX}{sha256}.tar.gz"


def input_items(spec: JobSpec) -> list[tuple[str, str, bool]]:
    """(name, uri, is_prefix) per input, in the spec's order: a URI ending in / is a folder of objects."""
    return [(name, uri, uri.endswith("/")) for name, uri in spec.inputs.items()]


def job_variables(job_id: str, attempt: int, *, input_dir: str, output_dir: str, checkpoint_dir: str) -> dict[str, str]:
    """The JOBPLANE_* variables of one attempt, given where the backend puts the folders."""
    return {
        JOB_ID: job_id,
        ATTEMPT: str(attempt),
        INPUT_DIR: input_dir,
        OUTPUT_DIR: output_dir,
        CHECKPOINT_DIR: checkpoint_dir,
    }


def node_variables(spec: JobSpec, rank: int | None, master_addr: str | None, master_port: int) -> dict[str, str]:
    """The rendezvous variables of one node; a rank or address the node finds out itself (the wrapper in
    chalicelib/backends/rendezvous.py derives it from the provider's facts) is None and left out."""
    found = {
        NUM_NODES: str(spec.resources.nodes),
        NODE_RANK: None if rank is None else str(rank),
        MASTER_ADDR: master_addr,
        MASTER_PORT: str(master_port),
        GPUS_PER_NODE: str(spec.resources.gpus),
    }
    return {k: v for k, v in found.items() if v is not None}


def user_env(env: Mapping[str, str]) -> dict[str, str]:
    """The spec's own env: it reaches the job's process only, never a script jobplane runs around it."""
    return dict(env)


def store_uris(spec: JobSpec) -> list[tuple[str, str]]:
    """(field, URI) of every object-store location the spec names, each field as a 400 names it."""
    named = [("code_uri", spec.code_uri), ("outputs", spec.outputs), ("checkpoint_uri", spec.checkpoint_uri)]
    named += [(f"inputs.{name}", uri) for name, uri in spec.inputs.items()]
    return [(field, uri) for field, uri in named if uri]


def foreign_uri(spec: JobSpec, scheme: str) -> tuple[str, str] | None:
    """The first (field, URI) that is not in `scheme`'s object store (a backend that reads only s3:// or
    only gs:// refuses the job naming it, so `auto` never picks a backend that cannot read the job's data)."""
    for field, uri in store_uris(spec):
        if not uri.startswith(f"{scheme}://"):
            return field, uri
    return None
