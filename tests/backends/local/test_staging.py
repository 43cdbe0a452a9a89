"""The local backend keeps the job contract against S3 (moto server): code, inputs, setup, checkpoints, outputs."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
from pathlib import Path

import boto3
import pytest

from chalicelib.backends.base import Handle
from chalicelib.backends.local.backend import LocalBackend
from chalicelib.backends.local.staging import StagingError, check_members, unpack
from chalicelib.errors import UnsupportedError
from chalicelib.jobs.model import FailureKind, JobStatus
from jobplane.pack import pack
from tests.factories import make_job, make_settings, wait_for

BUCKET = "jobplane-test-artifacts"
DATA = "staging-data"


@pytest.fixture
def s3(moto_endpoint):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    for bucket in (BUCKET, DATA):
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
    return client


@pytest.fixture
def backend(tmp_path, moto_endpoint):
    return LocalBackend(make_settings(tmp_path, moto_endpoint, JOBPLANE_LOCAL_CHECKPOINT_SECONDS="1"))


def upload_code(s3, folder: Path) -> tuple[str, str]:
    packed = pack(folder)
    key = f"code/{packed.sha256}.tar.gz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=packed.data)
    return f"s3://{BUCKET}/{key}", packed.sha256


def objects(s3, prefix: str, bucket: str = BUCKET) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def run_to_end(backend, job):
    backend.launch(job)
    return wait_for(
        lambda: (obs := backend.describe(Handle.of(job))) is not None and obs.status.terminal and obs,
        timeout=30,
        what="the job to end",
    )


def log_of(backend, job) -> str:
    return (backend.job_dir(job.native_name or job.native_id) / "output.log").read_text()


def local_job(**spec):
    job = make_job(spec=spec)
    return job.with_changes(native_id=f"jp-{job.job_id}", native_name=f"jp-{job.job_id}")


SCRIPT = r"""
set -e
echo "cwd=$(pwd)"
cat train.py
test -f setup-ran
IN="$JOBPLANE_INPUT_DIR"
cat "$IN/dataset/a.txt" "$IN/dataset/nested/b.txt" "$IN/labels/labels.csv"
# root writes anything: read-only means something to the job's own user only
if [ "$(id -u)" != 0 ] && echo x > "$IN/dataset/a.txt"; then echo "inputs writable"; exit 9; fi
if [ "$(id -u)" != 0 ] && mkdir "$IN/new"; then echo "inputs writable"; exit 9; fi
echo "restored=$(cat "$JOBPLANE_CHECKPOINT_DIR/step")"
echo 2 > "$JOBPLANE_CHECKPOINT_DIR/step"
mkdir -p "$JOBPLANE_OUTPUT_DIR/sub"
echo model > "$JOBPLANE_OUTPUT_DIR/model.txt"
echo deep > "$JOBPLANE_OUTPUT_DIR/sub/metrics.json"
"""


def test_a_job_runs_in_its_unpacked_code_with_read_only_inputs_restored_checkpoints_and_uploaded_outputs(
    backend, s3, tmp_path
):
    code = tmp_path / "src"
    code.mkdir()
    (code / "train.py").write_text("print('training')\n")
    (code / ".gitignore").write_text("*.ckpt\n")
    (code / "big.ckpt").write_text("not packed")
    code_uri, sha = upload_code(s3, code)
    s3.put_object(Bucket=DATA, Key="sets/one/a.txt", Body=b"alpha\n")
    s3.put_object(Bucket=DATA, Key="sets/one/nested/b.txt", Body=b"beta\n")
    s3.put_object(Bucket=DATA, Key="labels.csv", Body=b"cat,dog\n")
    job = local_job(
        command=["/bin/sh", "-c", SCRIPT],
        setup="touch setup-ran && test ! -e big.ckpt",
        code_uri=code_uri,
        code_sha256=sha,
        inputs={"dataset": f"s3://{DATA}/sets/one/", "labels": f"s3://{DATA}/labels.csv"},
    )
    s3.put_object(Bucket=BUCKET, Key=f"checkpoints/{job.job_id}/step", Body=b"1\n")

    final = run_to_end(backend, job)

    log = log_of(backend, job)
    assert final.status is JobStatus.SUCCEEDED, log
    folder = backend.job_dir(job.native_name)
    assert f"cwd={folder / 'work'}" in log and "training" in log
    assert "alpha\nbeta\ncat,dog\n" in log and "restored=1" in log
    assert objects(s3, f"outputs/{job.job_id}/") == {"model.txt": b"model\n", "sub/metrics.json": b"deep\n"}
    assert objects(s3, f"checkpoints/{job.job_id}/") == {"step": b"2\n"}
    assert oct(os.stat(folder / "inputs" / "dataset" / "a.txt").st_mode & 0o777) == "0o444"
    assert "outputs: 2 files uploaded" in log


@pytest.mark.skipif(os.geteuid() != 0, reason="running jobs as another user needs root")
def test_a_job_run_as_another_user_reaches_its_folders_and_cannot_change_its_inputs(s3, moto_endpoint, tmp_path):
    import shutil
    import tempfile

    # The state folder must be one the job's user may pass through (pytest's own tmp folder is not).
    state = Path(tempfile.mkdtemp(prefix="jobplane-nobody-"))
    state.chmod(0o711)
    try:
        backend = LocalBackend(
            make_settings(tmp_path, moto_endpoint, JOBPLANE_LOCAL_RUN_AS="nobody", JOBPLANE_LOCAL_STATE_DIR=str(state))
        )
        code = tmp_path / "src"
        code.mkdir()
        (code / "train.py").write_text("print('training')\n")
        code_uri, sha = upload_code(s3, code)
        s3.put_object(Bucket=DATA, Key="sets/one/a.txt", Body=b"alpha\n")
        s3.put_object(Bucket=DATA, Key="sets/one/nested/b.txt", Body=b"beta\n")
        s3.put_object(Bucket=DATA, Key="labels.csv", Body=b"cat,dog\n")
        job = local_job(
            command=["/bin/sh", "-c", SCRIPT + "\nid -un"],
            setup="touch setup-ran",
            code_uri=code_uri,
            code_sha256=sha,
            inputs={"dataset": f"s3://{DATA}/sets/one/", "labels": f"s3://{DATA}/labels.csv"},
        )
        s3.put_object(Bucket=BUCKET, Key=f"checkpoints/{job.job_id}/step", Body=b"1\n")
        final = run_to_end(backend, job)
        log = log_of(backend, job)
        assert final.status is JobStatus.SUCCEEDED, log
        assert "\nnobody\n" in log and "restored=1" in log and "inputs writable" not in log, log
        assert "inputs/dataset/a.txt: Permission denied" in log, log
        folder = backend.job_dir(job.native_name)
        assert [oct(p.stat().st_mode & 0o777) for p in (state, folder)] == ["0o711", "0o711"]
        assert oct((folder / "output.log").stat().st_mode & 0o777) == "0o600"
        assert objects(s3, f"outputs/{job.job_id}/") == {"model.txt": b"model\n", "sub/metrics.json": b"deep\n"}
        assert objects(s3, f"checkpoints/{job.job_id}/") == {"step": b"2\n"}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_checkpoints_are_synced_while_the_job_runs(backend, s3):
    script = 'echo 7 > "$JOBPLANE_CHECKPOINT_DIR/epoch"; sleep 60'
    job = local_job(command=["/bin/sh", "-c", script])
    backend.launch(job)
    try:
        found = wait_for(
            lambda: objects(s3, f"checkpoints/{job.job_id}/").get("epoch"), timeout=15, what="a periodic sync"
        )
        assert found == b"7\n"
        assert backend.describe(Handle.of(job)).status is JobStatus.RUNNING
    finally:
        backend.cancel(Handle.of(job))
    assert wait_for(lambda: backend.describe(Handle.of(job)).status.terminal, what="the cancel")


def test_a_failing_setup_fails_the_job_naming_the_step_and_still_uploads_outputs(backend, s3):
    setup = [["/bin/sh", "-c", 'echo partial > "$JOBPLANE_OUTPUT_DIR/partial.txt"'], ["/bin/sh", "-c", "exit 3"]]
    job = local_job(command=["/bin/sh", "-c", "echo command-ran"], setup=setup)
    final = run_to_end(backend, job)
    assert final.status is JobStatus.FAILED and final.failure_kind is FailureKind.USER_ERROR
    assert final.reason.startswith("setup step 2 failed (exit code 3)")
    log = log_of(backend, job)
    assert "setup step 2 failed (exit code 3): the command did not run" in log and "command-ran" not in log
    assert objects(s3, f"outputs/{job.job_id}/") == {"partial.txt": b"partial\n"}


def test_a_runner_terminated_without_a_cancel_reports_an_interruption_after_syncing(backend, s3):
    script = 'echo 3 > "$JOBPLANE_CHECKPOINT_DIR/epoch"; echo out > "$JOBPLANE_OUTPUT_DIR/o"; touch ready; sleep 60'
    job = local_job(command=["/bin/sh", "-c", script])
    backend.launch(job)
    folder = backend.job_dir(job.native_name)
    wait_for(lambda: (folder / "work" / "ready").exists(), what="the job to start")
    os.kill(int((folder / "runner.pid").read_text()), signal.SIGTERM)  # the machine shutting down
    final = wait_for(lambda: (o := backend.describe(Handle.of(job))).status.terminal and o, what="the report")
    assert final.status is JobStatus.FAILED and final.failure_kind is FailureKind.INTERRUPTED
    assert final.native_status == "INTERRUPTED"
    assert objects(s3, f"checkpoints/{job.job_id}/") == {"epoch": b"3\n"}
    assert objects(s3, f"outputs/{job.job_id}/") == {"o": b"out\n"}


def test_code_whose_digest_differs_from_code_sha256_is_never_unpacked(backend, s3, tmp_path):
    code = tmp_path / "src"
    code.mkdir()
    (code / "train.py").write_text("x")
    code_uri, _ = upload_code(s3, code)
    job = local_job(command=["/bin/sh", "-c", "echo ran"], code_uri=code_uri, code_sha256="0" * 64)
    final = run_to_end(backend, job)
    assert final.status is JobStatus.FAILED
    assert "staging failed before setup" in final.reason and "not code_sha256 " + "0" * 64 in final.reason
    assert not (backend.job_dir(job.native_name) / "work" / "train.py").exists()
    assert "ran" not in log_of(backend, job).replace("staging", "")


def test_a_missing_input_fails_the_job_before_setup_naming_it(backend, s3):
    job = local_job(command=["/bin/sh", "-c", "echo ran"], inputs={"data": f"s3://{DATA}/nothing-here/"})
    final = run_to_end(backend, job)
    assert final.status is JobStatus.FAILED
    assert final.reason == f"staging failed before setup: input data: no objects below s3://{DATA}/nothing-here/"


def test_without_an_object_store_a_spec_that_needs_one_is_refused_naming_the_field(tmp_path):
    backend = LocalBackend(make_settings(tmp_path))
    with pytest.raises(UnsupportedError) as refused:
        backend.validate(local_job(inputs={"data": "s3://bucket/x/"}).spec)
    assert refused.value.details[0]["field"] == "inputs.data"


def test_gs_locations_are_refused_on_the_local_backend(backend):
    with pytest.raises(UnsupportedError) as refused:
        backend.validate(local_job(outputs="gs://bucket/out/").spec)
    assert refused.value.details[0]["field"] == "outputs"


# --- tar safety ---------------------------------------------------------------------------------


def _archive(tmp_path, *members: tuple[str, str, str]) -> Path:
    """A .tar.gz of (name, kind, payload): kind file (payload = content), sym / hard (payload = target), fifo."""
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload.encode()))
                continue
            info.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname = payload
            tar.addfile(info)
    return path


@pytest.mark.parametrize(
    ("member", "words"),
    [
        (("/etc/evil", "file", "x"), "absolute path"),
        (("../evil", "file", "x"), "'..'"),
        (("a/../../evil", "file", "x"), "'..'"),
        (("link", "sym", "/etc/passwd"), "outside the folder"),
        (("a/link", "sym", "../../etc"), "outside the folder"),
        (("hard", "hard", "../outside"), "outside the folder"),
        (("pipe", "fifo", ""), "not a file, folder or link"),
    ],
)
def test_an_archive_with_a_member_escaping_the_folder_is_refused_and_nothing_is_written(tmp_path, member, words):
    archive = _archive(tmp_path, ("ok.txt", "file", "fine"), member)
    dest = tmp_path / "work"
    dest.mkdir()
    with pytest.raises(StagingError, match=words):
        unpack(archive, dest)
    assert list(dest.iterdir()) == []


def test_links_that_stay_inside_the_folder_are_unpacked(tmp_path):
    archive = _archive(tmp_path, ("data/a.txt", "file", "A"), ("a-link", "sym", "data/a.txt"))
    dest = tmp_path / "work"
    dest.mkdir()
    assert unpack(archive, dest) == 1
    assert (dest / "a-link").read_text() == "A"


def test_check_members_accepts_a_packed_workdir(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "m.py").write_text("")
    packed = pack(tmp_path / "src")
    with tarfile.open(fileobj=io.BytesIO(packed.data), mode="r:gz") as tar:
        check_members(tar.getmembers())
        assert json.dumps(sorted(tar.getnames())) == json.dumps(["pkg", "pkg/m.py"])
