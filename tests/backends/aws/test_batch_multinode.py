"""A 4-node AWS Batch job: a multi-node parallel job definition and submission (botocore's service model)."""

from __future__ import annotations

import subprocess

import pytest
from botocore.stub import ANY, Stubber

from chalicelib.backends.aws.batch import BatchBackend, definition_name
from chalicelib.backends.base import Handle
from chalicelib.errors import UnsupportedError
from tests.factories import check_aws_request, make_job

SPEC = {
    "image": "train:1",
    "command": ["torchrun", "train.py"],
    "resources": {"nodes": 4, "gpus": 8, "gpu_type": "A100"},
}


def test_a_4_node_job_is_a_multinode_definition_and_a_submission_of_4_nodes(aws_settings):
    backend = BatchBackend(aws_settings)
    job = make_job("aws-batch", SPEC)
    backend.validate(job.spec)
    definition = backend.job_definition_request(job.spec)
    check_aws_request("batch", "RegisterJobDefinition", definition)
    assert definition["type"] == "multinode" and "ecsProperties" not in definition
    nodes = definition["nodeProperties"]
    assert (nodes["numNodes"], nodes["mainNode"]) == (4, 0)
    (each,) = nodes["nodeRangeProperties"]
    assert each["targetNodes"] == "0:"
    containers = [c["name"] for c in each["ecsProperties"]["taskProperties"][0]["containers"]]
    assert containers == ["stage-tools", "stage-in", "job", "stage-out"]  # every node stages as a single job does
    # Not the single-node definition of the same image: the two shapes live side by side.
    assert definition["jobDefinitionName"] == definition_name("train:1", multinode=True) != definition_name("train:1")

    request = backend.submit_request(job, Handle.of(job), "arn:def")
    check_aws_request("batch", "SubmitJob", request)
    assert "ecsPropertiesOverride" not in request
    overrides = request["nodeOverrides"]
    assert overrides["numNodes"] == 4
    (node,) = overrides["nodePropertyOverrides"]
    assert node["targetNodes"] == "0:"
    job_container = {c["name"]: c for c in node["ecsPropertiesOverride"]["taskProperties"][0]["containers"]}["job"]
    env = {e["name"]: e["value"] for e in job_container["environment"]}
    assert env["JOBPLANE_NUM_NODES"] == "4" and env["JOBPLANE_GPUS_PER_NODE"] == "8"
    assert {"type": "GPU", "value": "8"} in job_container["resourceRequirements"]  # per node
    assert "AWS_BATCH_JOB_NODE_INDEX" in job_container["command"][2]


def test_each_node_runs_the_command_with_its_rank_and_the_main_nodes_address(aws_settings, tmp_path):
    command = ["sh", "-c", 'echo "$JOBPLANE_NODE_RANK $JOBPLANE_MASTER_ADDR"']
    job = make_job("aws-batch", {**SPEC, "command": command})
    request = BatchBackend(aws_settings).submit_request(job, Handle.of(job), "arn:def")
    (node,) = request["nodeOverrides"]["nodePropertyOverrides"]
    container = {c["name"]: c for c in node["ecsPropertiesOverride"]["taskProperties"][0]["containers"]}["job"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    env.update({k: str(tmp_path / k) for k in env if k.endswith("_DIR")})
    env["PATH"] = "/usr/bin:/bin"
    argv = list(container["command"])
    argv[5] = ""  # the exit file: exec the command (the sidecar's handshake is another test's)
    batch = {
        "AWS_BATCH_JOB_NODE_INDEX": "3",
        "AWS_BATCH_JOB_NUM_NODES": "4",
        "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "10.0.3.9",
    }
    done = subprocess.run(argv, env={**env, **batch}, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "3 10.0.3.9\n"


def test_a_multi_node_spot_job_is_refused_naming_the_field(aws_settings):
    spec = make_job("aws-batch", {**SPEC, "resources": {**SPEC["resources"], "spot": True}}).spec
    with pytest.raises(UnsupportedError) as caught:
        BatchBackend(aws_settings).validate(spec)
    assert caught.value.details[0]["field"] == "resources.spot"


def test_one_nodes_logs_are_read_from_its_node_job(aws_settings):
    backend = BatchBackend(aws_settings)
    job = make_job("aws-batch", SPEC, native_id="1b2c3d4e-aaaa-bbbb-cccc-0123456789ab")
    batch, logs = backend.client(), backend.client("logs")
    node_job = {
        "jobName": Handle.of(job).native_name,
        "jobId": "1b2c3d4e-aaaa-bbbb-cccc-0123456789ab#2",
        "jobQueue": "q",
        "status": "RUNNING",
        "startedAt": 1,
        "jobDefinition": "arn:def",
        "nodeDetails": {"nodeIndex": 2, "isMainNode": False},
        "ecsProperties": {
            "taskProperties": [{"containers": [{"name": "job", "logStreamName": "jp-img/default/node2"}]}]
        },
    }
    with Stubber(batch) as batch_stub, Stubber(logs) as logs_stub:
        batch_stub.add_response("describe_jobs", {"jobs": [node_job]}, {"jobs": [node_job["jobId"]]})
        logs_stub.add_response(
            "get_log_events",
            {"events": [{"timestamp": 1, "message": "node 2 says hi", "ingestionTime": 2}], "nextForwardToken": "f/1"},
            {
                "logGroupName": "/aws/batch/job",
                "logStreamName": "jp-img/default/node2",
                "startFromHead": True,
                "limit": ANY,
            },
        )
        chunk = backend.logs(Handle.of(job), node=2)
    assert "node 2 says hi" in chunk.text
