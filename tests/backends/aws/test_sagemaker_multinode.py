"""A 4-node SageMaker training job: InstanceCount, the node variables, the rendezvous before the wrapper."""

from __future__ import annotations

import json
import subprocess

from chalicelib.backends.aws import staging
from chalicelib.backends.aws.sagemaker import SageMakerBackend
from chalicelib.backends.base import Handle
from tests.factories import check_aws_request, make_job

SPEC = {
    "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1",
    "command": ["torchrun", "--nnodes", "4", "train.py"],
    "resources": {"gpus": 8, "gpu_type": "A100", "nodes": 4},
}


def test_a_4_node_job_is_one_training_job_of_4_instances(aws_settings):
    job = make_job("sagemaker", SPEC)
    request = SageMakerBackend(aws_settings).training_job_request(job, Handle.of(job))
    check_aws_request("sagemaker", "CreateTrainingJob", request)  # botocore's service model and its limits
    assert request["ResourceConfig"]["InstanceCount"] == 4
    env = request["Environment"]
    assert env["JOBPLANE_NUM_NODES"] == "4" and env["JOBPLANE_GPUS_PER_NODE"] == "8"
    assert env["JOBPLANE_MASTER_PORT"] == "29500"
    # Each instance finds its own rank and the master in resourceconfig.json: neither is fixed at launch.
    assert "JOBPLANE_NODE_RANK" not in env and "JOBPLANE_MASTER_ADDR" not in env
    script = "".join(request["AlgorithmSpecification"]["ContainerEntrypoint"][4:])
    assert "/opt/ml/input/config/resourceconfig.json" in script and script.endswith(staging.WRAPPER)


def test_a_single_node_request_is_unchanged(aws_settings):
    job = make_job("sagemaker", {**SPEC, "resources": {"gpus": 1, "gpu_type": "A10G"}})
    request = SageMakerBackend(aws_settings).training_job_request(job, Handle.of(job))
    assert request["ResourceConfig"]["InstanceCount"] == 1
    assert "JOBPLANE_NUM_NODES" not in request["Environment"]
    assert "".join(request["AlgorithmSpecification"]["ContainerEntrypoint"][4:]) == staging.WRAPPER


def test_the_entrypoint_of_each_instance_runs_the_command_with_its_rank(aws_settings, tmp_path):
    """The request's own entrypoint and arguments run by /bin/sh, as algo-3 of 4 (its resourceconfig.json)."""
    job = make_job("sagemaker", {**SPEC, "command": ["sh", "-c", 'echo "$JOBPLANE_NODE_RANK $JOBPLANE_MASTER_ADDR"']})
    request = SageMakerBackend(aws_settings).training_job_request(job, Handle.of(job))
    config = tmp_path / "resourceconfig.json"
    hosts = ["algo-1", "algo-2", "algo-3", "algo-4"]
    config.write_text(json.dumps({"current_host": "algo-3", "hosts": hosts, "network_interface_name": "eth0"}))
    spec = request["AlgorithmSpecification"]
    args = list(spec["ContainerArguments"])
    args[1] = str(tmp_path / "work")  # the work folder: this machine has no /opt/ml
    env = {**request["Environment"], "PATH": "/usr/bin:/bin", "JOBPLANE_R_RESOURCE_CONFIG": str(config)}
    env = {k: v for k, v in env.items() if not k.endswith("_DIR")}
    done = subprocess.run(spec["ContainerEntrypoint"] + args, env=env, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2 algo-1\n"
