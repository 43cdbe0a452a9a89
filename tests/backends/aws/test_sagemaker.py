"""SageMaker training jobs: the CreateTrainingJob request, launch/describe on moto, cancel with Stubber."""

from __future__ import annotations

import pytest
from botocore.stub import Stubber

from chalicelib.backends.aws import staging
from chalicelib.backends.aws.sagemaker import SageMakerBackend, failure_kind
from chalicelib.backends.base import Handle
from chalicelib.errors import BackendError, UnsupportedError
from chalicelib.jobs.model import FailureKind, JobStatus
from chalicelib.jobs.spec_types import JobSpec
from tests.factories import boto, check_aws_request, make_job

SPEC = {
    "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1",
    "command": ["python", "train.py", "--epochs", "10"],
    "env": {"LR": "0.1"},
    "resources": {"gpus": 1, "gpu_type": "A10G", "spot": True},
    "max_runtime_minutes": 120,
    "inputs": ["s3://data-bucket/cifar/", "s3://data-bucket/labels/"],
    "outputs": "s3://data-bucket/outputs/",
    "checkpoint_uri": "s3://data-bucket/checkpoints/run1/",
    "labels": {"team": "vision"},
}


def test_can_build_the_training_job_request_from_a_spec(aws_settings):
    backend = SageMakerBackend(aws_settings)
    job = make_job("sagemaker", SPEC, job_id="a" * 32, attempt=2)
    request = backend.training_job_request(job, Handle.of(job.with_changes(native_id="x")))
    check_aws_request("sagemaker", "CreateTrainingJob", request)
    assert request["TrainingJobName"] == "jp-" + "a" * 32 + "-a2"
    algorithm = request["AlgorithmSpecification"]
    assert (algorithm["TrainingImage"], algorithm["TrainingInputMode"]) == (SPEC["image"], "File")
    # The entrypoint is jobplane's wrapper; the command is its data: no code folder, SageMaker's work folder,
    # no exit file (it execs the command), no setup steps, then the command as it is.
    assert algorithm["ContainerEntrypoint"][:2] == ["/bin/sh", "-c"]
    assert "".join(algorithm["ContainerEntrypoint"][4:]) == staging.WRAPPER
    assert algorithm["ContainerArguments"] == ["", "/opt/ml/code", "", "0", "python", "train.py", "--epochs", "10"]
    assert request["RoleArn"] == f"arn:aws:iam::123456789012:role/jobplane-{aws_settings.stage}-sagemaker"
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 7200 + 3600}
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"] == {"S3Uri": SPEC["checkpoint_uri"], "LocalPath": "/opt/ml/checkpoints"}
    # Channels are named as the inputs are ($JOBPLANE_INPUT_DIR/<name> is /opt/ml/input/data/<name>).
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["0", "1"]
    assert request["InputDataConfig"][1]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://data-bucket/labels/"
    # Artifacts land under <outputs>/<job_id>/ (SageMaker adds <TrainingJobName>/output/model.tar.gz).
    assert request["OutputDataConfig"] == {"S3OutputPath": f"s3://data-bucket/outputs/{'a' * 32}/"}
    assert request["Environment"] == {
        "JOBPLANE_ATTEMPT": "2",
        "JOBPLANE_CHECKPOINT_DIR": "/opt/ml/checkpoints",
        "JOBPLANE_CHECKPOINT_URI": SPEC["checkpoint_uri"],
        "JOBPLANE_INPUT_DIR": "/opt/ml/input/data",
        "JOBPLANE_JOB_ID": "a" * 32,
        "JOBPLANE_OUTPUT_DIR": "/opt/ml/model",
        "JOBPLANE_OUTPUT_URI": SPEC["outputs"],
        "LR": "0.1",
    }
    assert {t["Key"]: t["Value"] for t in request["Tags"]} == {
        "jobplane:job-id": "a" * 32,
        "jobplane:attempt": "2",
        "jobplane:native-id": "jp-" + "a" * 32 + "-a2",
        "jobplane:managed": "true",
        "jobplane:stage": aws_settings.stage,
        "jobplane:owner": "alice",
        "label:team": "vision",
    }


STAGED = {
    "image": SPEC["image"],
    "command": "python train.py --data $JOBPLANE_INPUT_DIR/train",
    "setup": [["pip", "install", "-r", "requirements.txt"], ["sh", "-c", "echo $(hostname) > ready"]],
    "code_uri": "s3://jobplane-artifacts/code/" + "c" * 64 + ".tar.gz",
    "code_sha256": "c" * 64,
    "inputs": {"train": "s3://data-bucket/cifar/", "labels": "s3://data-bucket/meta/labels.csv"},
}


def test_the_request_stages_code_inputs_outputs_and_checkpoints_as_the_contract_says(aws_settings):
    backend = SageMakerBackend(aws_settings)
    job = make_job("sagemaker", STAGED, job_id="d" * 32)
    backend.validate(job.spec)
    request = backend.training_job_request(job, Handle.of(job))
    check_aws_request("sagemaker", "CreateTrainingJob", request)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in request["InputDataConfig"]}
    # A prefix, an object (the exact key, as an S3Prefix) and the packed code, each its own channel.
    assert channels == {
        "train": {
            "S3DataType": "S3Prefix",
            "S3Uri": "s3://data-bucket/cifar/",
            "S3DataDistributionType": "FullyReplicated",
        },
        "labels": {
            "S3DataType": "S3Prefix",
            "S3Uri": "s3://data-bucket/meta/labels.csv",
            "S3DataDistributionType": "FullyReplicated",
        },
        "jobplane-code": {
            "S3DataType": "S3Prefix",
            "S3Uri": STAGED["code_uri"],
            "S3DataDistributionType": "FullyReplicated",
        },
    }
    # No outputs or checkpoint_uri in the spec: the stage's store, per job.
    bucket = aws_settings.artifacts_bucket
    assert request["OutputDataConfig"] == {"S3OutputPath": f"s3://{bucket}/outputs/{'d' * 32}/"}
    assert request["CheckpointConfig"] == {
        "S3Uri": f"s3://{bucket}/checkpoints/{'d' * 32}/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["AlgorithmSpecification"]["ContainerArguments"] == [
        "/opt/ml/input/data/jobplane-code",
        "/opt/ml/code",
        "",
        "2",
        "4",
        "pip",
        "install",
        "-r",
        "requirements.txt",
        "3",
        "sh",
        "-c",
        "echo $(hostname) > ready",
        "/bin/sh",
        "-c",
        "python train.py --data $JOBPLANE_INPUT_DIR/train",
    ]


def test_the_entrypoint_runs_the_wrapper_from_its_pieces_with_hostile_values_as_data(tmp_path):
    # SageMaker's entrypoint joins the wrapper's <=256-character pieces and runs them; here with stub folders.
    import subprocess
    import tarfile

    from chalicelib.backends.aws.staging import Layout

    code = tmp_path / "channel"
    code.mkdir()
    packed = tmp_path / "src"
    packed.mkdir()
    (packed / "train.sh").write_text('echo "trained with $1" > trained.txt\n')
    with tarfile.open(code / ("c" * 64 + ".tar.gz"), "w:gz") as tar:
        tar.add(packed / "train.sh", arcname="train.sh")
    layout = Layout(
        str(code), str(tmp_path / "work"), str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "ck")
    )
    hostile = "$(touch pwned); `touch pwned2` * ' \" \n"
    spec = make_job(
        "sagemaker",
        {
            **STAGED,
            "setup": [["sh", "-c", 'printf %s "$0" > setup.txt', hostile]],
            "command": ["sh", "train.sh", hostile],
        },
    ).spec
    pieces = staging.split_script(staging.WRAPPER, 256)
    assert max(len(p) for p in pieces) <= 256 and len(staging.sagemaker_entrypoint(len(pieces))[2]) <= 256
    argv = staging.sagemaker_entrypoint(len(pieces)) + pieces + staging.wrapper_args(spec, layout)
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    work = tmp_path / "work"
    assert (work / "setup.txt").read_text() == hostile  # setup ran in the code folder, before the command
    assert (work / "trained.txt").read_text() == f"trained with {hostile}\n"
    assert not list(tmp_path.rglob("pwned*"))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"command": ["python", "x" * 257]}, "command[1]"),
        ({"setup": [["sh", "-c", "y" * 300]]}, "setup[0][2]"),
        ({"command": ["echo"] + ["a"] * 96}, "command"),
        ({"inputs": {f"i{n}": "s3://data-bucket/x/" for n in range(20)}}, "inputs"),
        ({"code_uri": "gs://bucket/code/" + "c" * 64 + ".tar.gz"}, "code_uri"),
    ],
)
def test_what_sagemaker_cannot_take_is_refused_naming_the_field(aws_settings, overrides, field):
    job = make_job("sagemaker", {**STAGED, **overrides})
    with pytest.raises(UnsupportedError) as err:
        SageMakerBackend(aws_settings).validate(job.spec)
    assert err.value.details[0]["field"] == field


def test_gpu_counts_pick_the_smallest_instance_that_has_them(aws_settings):
    backend = SageMakerBackend(aws_settings)
    two = make_job("sagemaker", {**SPEC, "resources": {"gpus": 2, "gpu_type": "A10G"}})
    assert backend.training_job_request(two, Handle.of(two))["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge"
    with pytest.raises(UnsupportedError) as err:
        backend.validate(
            JobSpec.from_dict({**two.spec.to_dict(), "resources": {**two.spec.to_dict()["resources"], "gpus": 16}})
        )
    assert err.value.details == [{"field": "resources.gpus", "message": "at most 8 A10G GPUs per job"}]


def test_can_launch_and_describe_on_moto_and_a_retried_launch_starts_nothing(aws_settings):
    backend = SageMakerBackend(aws_settings)
    job = make_job("sagemaker", SPEC)
    assert backend.describe(Handle.of(job)) is None
    first = backend.launch(job)
    again = backend.launch(job)
    assert (first.native_id, first.native_status) == (f"jp-{job.job_id}", "InProgress")
    assert (again.native_id, again.native_status) == (f"jp-{job.job_id}", "AlreadyLaunched")
    names = [j["TrainingJobName"] for j in boto(aws_settings, "sagemaker").list_training_jobs()["TrainingJobSummaries"]]
    assert names.count(f"jp-{job.job_id}") == 1
    seen = backend.describe(Handle.of(job))  # moto completes training jobs at once
    assert (seen.status, seen.native_status, seen.job_id, seen.attempt) == (
        JobStatus.SUCCEEDED,
        "Completed",
        job.job_id,
        1,
    )


def test_cancel_calls_stop_training_job_and_ignores_a_job_already_over(aws_settings):
    # moto does not implement StopTrainingJob: the real response shapes come through a Stubber.
    backend = SageMakerBackend(aws_settings)
    client = boto(aws_settings, "sagemaker")
    backend.set_client("sagemaker", client)
    job = make_job("sagemaker", SPEC)
    with Stubber(client) as stub:
        stub.add_response("stop_training_job", {}, {"TrainingJobName": f"jp-{job.job_id}"})
        stub.add_client_error(
            "stop_training_job",
            service_error_code="ValidationException",
            service_message="The request was rejected because the training job is in status Completed.",
            http_status_code=400,
            expected_params={"TrainingJobName": f"jp-{job.job_id}"},
        )
        stub.add_client_error(
            "stop_training_job", service_error_code="ThrottlingException", service_message="Rate exceeded"
        )
        backend.cancel(Handle.of(job))
        backend.cancel(Handle.of(job))
        with pytest.raises(BackendError) as err:
            backend.cancel(Handle.of(job))
        stub.assert_no_pending_responses()
    assert err.value.retryable is True
    assert err.value.message == "sagemaker StopTrainingJob: ThrottlingException: Rate exceeded"


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("CapacityError: Unable to provision requested ML compute capacity.", FailureKind.NO_CAPACITY),
        ("AlgorithmError: ExecuteUserScriptError: exit status 1", FailureKind.USER_ERROR),
        ("ClientError: Data download failed", FailureKind.USER_ERROR),
        ("ResourceLimitExceeded: account-level service limit", FailureKind.QUOTA),
        ("InternalServerError: We encountered an internal error.", FailureKind.BACKEND_ERROR),
    ],
)
def test_failure_reasons_map_to_failure_kinds(reason, kind):
    assert failure_kind(reason) is kind


def test_a_stopped_job_is_cancelled_timed_out_or_out_of_spot_capacity_by_its_secondary_status(aws_settings):
    backend = SageMakerBackend(aws_settings)
    seen = {
        secondary: backend.observe({"TrainingJobStatus": "Stopped", "SecondaryStatus": secondary}, "a" * 32, 1)
        for secondary in ("Stopped", "MaxRuntimeExceeded", "MaxWaitTimeExceeded")
    }
    assert [(o.status, o.failure_kind) for o in seen.values()] == [
        (JobStatus.CANCELLED, None),
        (JobStatus.FAILED, FailureKind.TIMEOUT),
        (JobStatus.FAILED, FailureKind.NO_CAPACITY),
    ]
    starting = backend.observe({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting"}, "a" * 32, 1)
    training = backend.observe({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}, "a" * 32, 1)
    assert (starting.status, training.status) == (JobStatus.LAUNCHING, JobStatus.RUNNING)


def test_declared_metrics_become_metric_definitions_that_botocore_accepts(aws_settings):
    import re

    import botocore.session
    from botocore.validate import validate_parameters

    backend = SageMakerBackend(aws_settings)
    job = make_job("sagemaker", {**SPEC, "metrics": ["val_accuracy", "train/loss"]})
    request = backend.training_job_request(job, Handle.of(job))
    definitions = request["AlgorithmSpecification"]["MetricDefinitions"]
    assert [d["Name"] for d in definitions] == ["val_accuracy", "train/loss"]
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(request, model.operation_model("CreateTrainingJob").input_shape)  # raises when invalid
    line = 'JOBPLANE_METRICS {"epoch": 3, "train/loss": 0.25, "val_accuracy": 0.87}'
    assert [re.search(d["Regex"], line).group(1) for d in definitions] == ["0.87", "0.25"]
    plain = make_job("sagemaker", SPEC)
    assert "MetricDefinitions" not in backend.training_job_request(plain, Handle.of(plain))["AlgorithmSpecification"]


def test_the_longest_declarable_metrics_fit_sagemakers_limits(aws_settings):
    import botocore.session
    from botocore.validate import validate_parameters

    names = [f"{i:02d}" + "k" * 62 for i in range(40)]
    job = make_job("sagemaker", {**SPEC, "metrics": names})
    request = SageMakerBackend(aws_settings).training_job_request(job, Handle.of(job))
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(request, model.operation_model("CreateTrainingJob").input_shape)
    assert max(len(d["Regex"]) for d in request["AlgorithmSpecification"]["MetricDefinitions"]) <= 500


def test_a_job_starting_with_a_capacity_message_waits_for_capacity(aws_settings):
    backend = SageMakerBackend(aws_settings)
    transition = {"Status": "Starting", "StartTime": 1_700_000_000, "StatusMessage": ""}
    detail = {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting"}
    plain = backend.observe({**detail, "SecondaryStatusTransitions": [transition]}, "a" * 32, 1)
    assert (plain.status, plain.waiting_for_capacity) == (JobStatus.LAUNCHING, False)
    message = "Insufficient capacity error from EC2 while launching instances, retrying!"
    retrying = [{**transition, "StatusMessage": message}]
    seen = backend.observe({**detail, "SecondaryStatusTransitions": retrying}, "a" * 32, 1)
    assert (seen.status, seen.waiting_for_capacity) == (JobStatus.LAUNCHING, True)
