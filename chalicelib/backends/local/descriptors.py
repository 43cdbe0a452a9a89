"""The local backend's facts, light to import: the implementation (subprocess, the runner) loads only when built."""

from __future__ import annotations

from chalicelib.backends import BackendDescriptor, Cloud

EVENT_SOURCE = "jobplane.local"


LOCAL = BackendDescriptor(
    name="local",
    implementation="chalicelib.backends.local.backend:LocalBackend",
    cloud=Cloud.LOCAL,
    display_name="local",
    rank=80,
    role="local processes",
    needs_image=False,
    event_sources=(EVENT_SOURCE,),
    unsupported_features={
        "gpu": "the local backend runs CPU processes only; use sagemaker, vertex, ec2 or gce for GPUs",
        "tpu": "TPUs exist only on Vertex AI",
    },
    # A multi-node job's nodes are processes on this machine, talking over 127.0.0.1.
    max_nodes=8,
    reaps=True,  # local processes stand in for ad-hoc VMs: the same sweep stops them
)
