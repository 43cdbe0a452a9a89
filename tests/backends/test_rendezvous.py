"""The rendezvous prelude run by a real /bin/sh with each provider's published facts: the same JOBPLANE_* result."""

from __future__ import annotations

import json
import subprocess

import pytest

from chalicelib.backends import rendezvous

SHOW = 'printf "%s %s %s %s %s" "$JOBPLANE_NUM_NODES" "$JOBPLANE_NODE_RANK" "$JOBPLANE_MASTER_ADDR" '
SHOW += '"$JOBPLANE_MASTER_PORT" "$JOBPLANE_GPUS_PER_NODE"'
# What every backend puts in each node's env at launch for a 4-node job of 8 GPUs a node.
LAUNCHED = {"JOBPLANE_NUM_NODES": "4", "JOBPLANE_MASTER_PORT": "29500", "JOBPLANE_GPUS_PER_NODE": "8"}


def run(provider: str, env: dict[str, str], then: str = SHOW) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["/bin/sh", "-c", rendezvous.prelude(provider) + then],
        env={"PATH": "/usr/bin:/bin", **LAUNCHED, **env},
        capture_output=True,
        text=True,
        timeout=10,
    )


def resource_config(tmp_path, current: str, indent=None):
    """/opt/ml/input/config/resourceconfig.json as SageMaker writes it for a homogeneous cluster."""
    hosts = ["algo-1", "algo-2", "algo-3", "algo-4"]
    doc = {
        "current_host": current,
        "current_instance_type": "ml.p4d.24xlarge",
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "instance_groups": [
            {"instance_group_name": "homogeneousCluster", "instance_type": "ml.p4d.24xlarge", "hosts": hosts[::-1]}
        ],
        "network_interface_name": "eth0",
    }
    path = tmp_path / "resourceconfig.json"
    path.write_text(json.dumps(doc, indent=indent))
    return {"JOBPLANE_R_RESOURCE_CONFIG": str(path)}


@pytest.mark.parametrize(("current", "rank"), [("algo-1", "0"), ("algo-3", "2"), ("algo-4", "3")])
def test_sagemaker_ranks_come_from_resourceconfig(tmp_path, current, rank):
    done = run(rendezvous.SAGEMAKER, resource_config(tmp_path, current, indent=4))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"4 {rank} algo-1 29500 8"
    assert f"jobplane: node {rank} of 4, master algo-1:29500" in done.stderr


def test_sagemaker_falls_back_to_the_toolkits_sm_hosts(tmp_path):
    env = {"JOBPLANE_R_RESOURCE_CONFIG": str(tmp_path / "absent"), "SM_CURRENT_HOST": "algo-2"}
    env["SM_HOSTS"] = '["algo-1", "algo-2", "algo-3", "algo-4"]'
    assert run(rendezvous.SAGEMAKER, env).stdout == "4 1 algo-1 29500 8"


def test_sagemaker_without_its_facts_or_with_another_count_fails_the_node(tmp_path):
    done = run(rendezvous.SAGEMAKER, {"JOBPLANE_R_RESOURCE_CONFIG": str(tmp_path / "absent")}, then="echo ran")
    assert done.returncode == rendezvous.RENDEZVOUS_FAILED and "ran" not in done.stdout
    assert "neither" in done.stderr
    done = run(
        rendezvous.SAGEMAKER, {**resource_config(tmp_path, "algo-2"), "JOBPLANE_NUM_NODES": "2"}, then="echo ran"
    )
    assert done.returncode == rendezvous.RENDEZVOUS_FAILED and "4 hosts, 2 asked for" in done.stderr


def cluster_spec(task_type: str, index: int, **dumps) -> str:
    """CLUSTER_SPEC as Vertex sets it: workerpool0 the primary replica, workerpool1 the other workers."""
    return json.dumps(
        {
            "cluster": {
                "workerpool0": ["cmle-training-workerpool0-ab12cd-0:2222"],
                "workerpool1": [f"cmle-training-workerpool1-ab12cd-{i}:2222" for i in range(3)],
            },
            "environment": "cloud",
            "task": {"type": task_type, "index": index},
            "job": {"worker_pool_specs": [{"machine_spec": {"machine_type": "a2-highgpu-8g"}, "replica_count": 1}]},
        },
        **dumps,
    )


@pytest.mark.parametrize(
    ("task", "index", "rank"), [("workerpool0", 0, "0"), ("workerpool1", 0, "1"), ("workerpool1", 2, "3")]
)
def test_vertex_ranks_and_master_come_from_cluster_spec(task, index, rank):
    for dumps in ({}, {"separators": (",", ":")}, {"indent": 2}):
        done = run(rendezvous.VERTEX, {"CLUSTER_SPEC": cluster_spec(task, index, **dumps)})
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"4 {rank} cmle-training-workerpool0-ab12cd-0 2222 8"


def test_vertex_refuses_a_pool_that_is_not_a_training_node():
    done = run(rendezvous.VERTEX, {"CLUSTER_SPEC": cluster_spec("workerpool2", 0)}, then="echo ran")
    assert done.returncode == rendezvous.RENDEZVOUS_FAILED and "workerpool2" in done.stderr
    assert run(rendezvous.VERTEX, {}, then="echo ran").returncode == rendezvous.RENDEZVOUS_FAILED


def test_batch_child_nodes_use_the_main_nodes_address():
    env = {
        "AWS_BATCH_JOB_NODE_INDEX": "2",
        "AWS_BATCH_JOB_NUM_NODES": "4",
        "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "10.0.1.17",
    }
    assert run(rendezvous.BATCH, env).stdout == "4 2 10.0.1.17 29500 8"


def test_batch_main_node_which_has_no_main_address_uses_its_own():
    env = {"AWS_BATCH_JOB_NODE_INDEX": "0", "AWS_BATCH_JOB_NUM_NODES": "4", "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0"}
    own = subprocess.run(["hostname", "-i"], capture_output=True, text=True).stdout.split()[0]
    assert run(rendezvous.BATCH, env).stdout == f"4 0 {own} 29500 8"


def test_batch_a_main_node_other_than_0_is_rank_0():
    env = {"AWS_BATCH_JOB_NODE_INDEX": "1", "AWS_BATCH_JOB_NUM_NODES": "4", "AWS_BATCH_JOB_MAIN_NODE_INDEX": "1"}
    assert run(rendezvous.BATCH, env).stdout.split()[1] == "0"
    env["AWS_BATCH_JOB_NODE_INDEX"] = "0"
    assert run(rendezvous.BATCH, env).stdout.split()[1] == "3"


def test_kubernetes_rank_is_the_completion_index():
    env = {"JOB_COMPLETION_INDEX": "3", "JOBPLANE_MASTER_ADDR": "jp-0123-0.jp-0123"}
    assert run(rendezvous.KUBERNETES, env).stdout == "4 3 jp-0123-0.jp-0123 29500 8"
    assert run(rendezvous.KUBERNETES, {}).returncode == rendezvous.RENDEZVOUS_FAILED


def test_the_prelude_leaves_the_wrappers_arguments_alone():
    env = {"JOB_COMPLETION_INDEX": "1", "JOBPLANE_MASTER_ADDR": "m"}
    done = subprocess.run(
        ["/bin/sh", "-c", rendezvous.prelude(rendezvous.KUBERNETES) + 'printf "%s|" "$@"', "jobplane", "a b", "$(c)"],
        env={"PATH": "/usr/bin:/bin", **LAUNCHED, **env},
        capture_output=True,
        text=True,
    )
    assert done.stdout == "a b|$(c)|"
