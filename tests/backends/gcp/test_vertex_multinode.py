"""A 4-node Vertex AI custom job: workerpool0 and workerpool1 as the client sends them; each replica's rank."""

from __future__ import annotations

import json
import subprocess

import pytest
from google.cloud import aiplatform_v1

from chalicelib.backends import rendezvous
from chalicelib.backends.base import Handle
from chalicelib.backends.gcp.vertex import WRAPPER, VertexBackend
from chalicelib.errors import UnsupportedError
from tests.factories import submit

IMAGE = "us-docker.pkg.dev/my-project/train/resnet:1"


def created(fake_gcp) -> dict:
    (create,) = [r for r in fake_gcp.requests if r["method"] == "POST"]
    return create["body"]


def test_a_4_node_job_is_a_primary_pool_and_a_pool_of_3_alike(gcp_service, fake_gcp):
    submit(gcp_service, image=IMAGE, backend="vertex", resources={"gpus": 8, "gpu_type": "A100", "nodes": 4})
    body = created(fake_gcp)
    # What the server got is a CustomJob the library itself reads back.
    aiplatform_v1.CustomJob.from_json(json.dumps(body))
    primary, workers = body["jobSpec"]["workerPoolSpecs"]
    assert (primary["replicaCount"], workers["replicaCount"]) == ("1", "3")
    assert primary["machineSpec"] == workers["machineSpec"]
    assert primary["machineSpec"]["acceleratorCount"] == 8  # per node
    assert primary["containerSpec"] == workers["containerSpec"]
    script = rendezvous.prelude(rendezvous.VERTEX) + WRAPPER
    assert primary["containerSpec"]["command"] == ["/bin/sh", "-c", script, "jobplane"]
    env = {e["name"]: e["value"] for e in primary["containerSpec"]["env"]}
    assert env["JOBPLANE_NUM_NODES"] == "4" and env["JOBPLANE_GPUS_PER_NODE"] == "8"


def test_a_single_node_job_has_one_pool_and_no_prelude(gcp_service, fake_gcp):
    submit(gcp_service, image=IMAGE, backend="vertex")
    (pool,) = created(fake_gcp)["jobSpec"]["workerPoolSpecs"]
    assert pool["containerSpec"]["command"] == ["/bin/sh", "-c", WRAPPER, "jobplane"]


def test_each_replica_runs_the_command_with_its_rank_from_cluster_spec(gcp_service, fake_gcp, tmp_path):
    command = ["sh", "-c", 'echo "$JOBPLANE_NODE_RANK $JOBPLANE_MASTER_ADDR:$JOBPLANE_MASTER_PORT"']
    submit(gcp_service, image=IMAGE, backend="vertex", command=command, resources={"nodes": 4})
    container = created(fake_gcp)["jobSpec"]["workerPoolSpecs"][1]["containerSpec"]
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update({k: str(tmp_path / k) for k in env if k.endswith("_DIR")})  # no /gcs on this machine
    cluster = {
        "cluster": {
            "workerpool0": ["cmle-training-workerpool0-1a2b3c-0:2222"],
            "workerpool1": [f"cmle-training-workerpool1-1a2b3c-{i}:2222" for i in range(3)],
        },
        "environment": "cloud",
        "task": {"type": "workerpool1", "index": 1},
    }
    done = subprocess.run(
        container["command"] + container["args"],
        env={**env, "PATH": "/usr/bin:/bin", "CLUSTER_SPEC": json.dumps(cluster)},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2 cmle-training-workerpool0-1a2b3c-0:2222\n"


def test_one_nodes_logs_are_refused_on_vertex_naming_the_field(gcp_settings):
    with pytest.raises(UnsupportedError) as caught:
        VertexBackend(gcp_settings).logs(Handle("a" * 32, "jp-" + "a" * 32), node=1)
    assert caught.value.details[0]["field"] == "node"
