"""How a job's files move on SageMaker, AWS Batch and ECS: the job wrapper and the helper containers' work.

Every value a user gives (command, setup, URIs, input names) travels as an argument; the scripts here are
fixed text. The wrapper (the job's own container) unpacks the code, runs the setup steps and then the
command in the unpacked folder; the helpers (the AWS CLI image, in the same task) download code, inputs and
the checkpoint before it and upload outputs and checkpoints while and after it runs.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib.backends.agent import UNPACK_CODE_SH
from chalicelib.jobs import contract

if TYPE_CHECKING:
    from chalicelib.jobs.spec_types import JobSpec

#: the helper containers' image: the AWS CLI, pinned (its entrypoint is `aws`; ECS can replace it, Batch cannot)
AWS_CLI_IMAGE = "public.ecr.aws/aws-cli/aws-cli:2.27.26"
#: SageMaker's channel for the packed code: input names starting with "jobplane" are refused, so none clashes
CODE_CHANNEL = "jobplane-code"
#: how often the ECS sidecar syncs the checkpoint folder while the job runs
SYNC_SECONDS = 60
#: how long the ECS and Batch sidecar, stopped (SIGTERM), waits for the job's own status before it uploads, so the
#: checkpoint a job writes on SIGTERM goes up too; within ECS's default 30 s between SIGTERM and SIGKILL
STOP_WAIT_SECONDS = 15
#: what the wrapper exits with when it cannot unpack the code or enter its folder (BSD's EX_SOFTWARE)
WRAPPER_FAILED = 70
# The tools the scripts call resolve on this PATH, whatever PATH the spec's env gives the job.
_TOOLS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Layout:
    """Where one backend puts a job's folders inside its container."""

    code_dir: str  # where the packed code arrives (the wrapper unpacks every *.tar.gz in it)
    work_dir: str  # the unpacked code: the job's current folder
    input_dir: str
    output_dir: str
    checkpoint_dir: str
    exit_file: str = ""  # where the wrapper writes the command's status; "" = exec the command instead

    def variables(self, job_id: str, attempt: int) -> dict[str, str]:
        return contract.job_variables(
            job_id,
            attempt,
            input_dir=self.input_dir,
            output_dir=self.output_dir,
            checkpoint_dir=self.checkpoint_dir,
        )


# SageMaker's own folders: channels under /opt/ml/input/data, the model folder it uploads, its checkpoint folder.
SAGEMAKER = Layout(
    code_dir=f"/opt/ml/input/data/{CODE_CHANNEL}",
    work_dir="/opt/ml/code",
    input_dir="/opt/ml/input/data",
    output_dir="/opt/ml/model",
    checkpoint_dir="/opt/ml/checkpoints",
)
# ECS and Batch: two task volumes, the inputs' mounted read-only in the job's container.
VOLUME, INPUT_VOLUME = "jobplane", "jobplane-input"
ROOT, INPUT_ROOT = "/jobplane", "/jobplane-input"
CONTAINERS = Layout(
    code_dir=f"{ROOT}/code",
    work_dir=f"{ROOT}/work",
    input_dir=INPUT_ROOT,
    output_dir=f"{ROOT}/output",
    checkpoint_dir=f"{ROOT}/checkpoints",
    exit_file=f"{ROOT}/status/exit",
)

# The job's wrapper, run by /bin/sh -c in the job's image. Its arguments: the code folder ("" when the job
# has none), the work folder, the exit file ("" to exec the command), the number of setup steps, each step
# as its argument count and its arguments, then the command. Its own variables are JOBPLANE_W_* (a spec's env
# cannot name JOBPLANE_*), so nothing in the job's env changes what it does; its tools run on _TOOLS_PATH.
# The wrapper's unpack in an image without tar: the same checks and limits as agent.UNPACK_CODE_SH, then
# tarfile's `data` filter where the image's Python has it. Arguments: the archive, the work folder.
PY_UNPACK = f"""import posixpath, sys, tarfile
archive, work = sys.argv[1:3]
def out(path):
    norm = posixpath.normpath(path)
    return path.startswith("/") or norm == ".." or norm.startswith("../")
def refuse(why):
    sys.exit("jobplane: code_uri: the archive is refused: " + why)
try:
    tar = tarfile.open(archive, "r:gz")
    members, total = [], 0
    for m in tar:
        members.append(m)
        total += m.size
        if len(members) > {contract.CODE_MAX_MEMBERS}:
            refuse("over {contract.CODE_MAX_MEMBERS} members (CODE_MAX_MEMBERS)")
        if total > {contract.CODE_MAX_UNPACKED_BYTES}:
            refuse("over {contract.CODE_MAX_UNPACKED_BYTES} bytes (CODE_MAX_UNPACKED_BYTES)")
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            refuse("not a file, folder or link")
        if out(m.name):
            refuse("members outside its folder (absolute or ..)")
        if (m.issym() and out(posixpath.join(posixpath.dirname(m.name), m.linkname))) or (
            m.islnk() and out(m.linkname)
        ):
            refuse("a link out of its folder")
    extra = {{"filter": "data"}} if hasattr(tarfile, "data_filter") else {{}}
    tar.extractall(work, members, **extra)
except (tarfile.TarError, OSError, EOFError) as exc:
    refuse("it cannot be unpacked: " + str(exc))
"""

WRAPPER = (
    UNPACK_CODE_SH.lstrip("\n")
    + "JOBPLANE_W_PY_UNPACK="
    + shlex.quote(PY_UNPACK)
    + "\n"
    + f"""JOBPLANE_W_PATH={_TOOLS_PATH}
JOBPLANE_W_CODE=$1 JOBPLANE_W_WORK=$2 JOBPLANE_W_EXIT=$3 JOBPLANE_W_STEPS=$4
shift 4
for JOBPLANE_W_DIR in "${{JOBPLANE_OUTPUT_DIR:-}}" "${{JOBPLANE_CHECKPOINT_DIR:-}}"; do
  [ -z "$JOBPLANE_W_DIR" ] || PATH=$JOBPLANE_W_PATH mkdir -p "$JOBPLANE_W_DIR"
done
if [ -n "$JOBPLANE_W_CODE" ]; then
  PATH=$JOBPLANE_W_PATH mkdir -p "$JOBPLANE_W_WORK" || exit {WRAPPER_FAILED}
  for JOBPLANE_W_ARCHIVE in "$JOBPLANE_W_CODE"/*.tar.gz; do
    [ -f "$JOBPLANE_W_ARCHIVE" ] || continue
    # Checked before anything is written (agent.UNPACK_CODE_SH; PY_UNPACK in an image without tar).
    if (PATH=$JOBPLANE_W_PATH; command -v tar >/dev/null 2>&1); then
      (PATH=$JOBPLANE_W_PATH; unpack_code "$JOBPLANE_W_ARCHIVE" "" "$JOBPLANE_W_WORK") || exit {WRAPPER_FAILED}
    else
      PATH=$JOBPLANE_W_PATH python3 -c "$JOBPLANE_W_PY_UNPACK" "$JOBPLANE_W_ARCHIVE" "$JOBPLANE_W_WORK" \
        || exit {WRAPPER_FAILED}
    fi
  done
  cd "$JOBPLANE_W_WORK" || exit {WRAPPER_FAILED}
fi
jobplane_first() {{
  JOBPLANE_W_N=$1
  shift
  JOBPLANE_W_I=0
  JOBPLANE_W_ALL=$#
  while [ "$JOBPLANE_W_I" -lt "$JOBPLANE_W_ALL" ]; do
    if [ "$JOBPLANE_W_I" -lt "$JOBPLANE_W_N" ]; then set -- "$@" "$1"; fi
    shift
    JOBPLANE_W_I=$((JOBPLANE_W_I + 1))
  done
  "$@"
}}
JOBPLANE_W_STATUS=0
while [ "$JOBPLANE_W_STEPS" -gt 0 ]; do
  JOBPLANE_W_N=$1
  shift
  (jobplane_first "$JOBPLANE_W_N" "$@")
  JOBPLANE_W_STATUS=$?
  [ "$JOBPLANE_W_STATUS" -eq 0 ] || break
  shift "$JOBPLANE_W_N"
  JOBPLANE_W_STEPS=$((JOBPLANE_W_STEPS - 1))
done
if [ -z "$JOBPLANE_W_EXIT" ]; then
  [ "$JOBPLANE_W_STATUS" -eq 0 ] || exit "$JOBPLANE_W_STATUS"
  exec "$@"
fi
if [ "$JOBPLANE_W_STATUS" -eq 0 ]; then
  PATH=$JOBPLANE_W_PATH mkdir -p "${{JOBPLANE_W_EXIT%/*}}"
  "$@" &
  JOBPLANE_W_CHILD=$!
  trap ': >"${{JOBPLANE_W_EXIT%/*}}/stopping"; kill -TERM "$JOBPLANE_W_CHILD" 2>/dev/null' TERM INT
  wait "$JOBPLANE_W_CHILD"
  JOBPLANE_W_STATUS=$?
  while kill -0 "$JOBPLANE_W_CHILD" 2>/dev/null; do
    wait "$JOBPLANE_W_CHILD"
    JOBPLANE_W_STATUS=$?
  done
fi
PATH=$JOBPLANE_W_PATH mkdir -p "${{JOBPLANE_W_EXIT%/*}}"
printf '%s\\n' "$JOBPLANE_W_STATUS" > "$JOBPLANE_W_EXIT.tmp"
PATH=$JOBPLANE_W_PATH mv "$JOBPLANE_W_EXIT.tmp" "$JOBPLANE_W_EXIT"
exit "$JOBPLANE_W_STATUS"
"""
)

# ECS's init container (the AWS CLI image, entrypoint replaced): restores the checkpoint, downloads the code
# and each input, and makes the folders writable for a job image that does not run as root. Arguments: the
# task volume's root, the inputs' root, the checkpoint location, the code URI ("" for none), then name/URI
# pairs (a URI ending in / is a prefix: its objects; else the one object, in a folder of the input's name).
STAGE_IN = """root=$1 inputs=$2 checkpoint=$3 code=$4
shift 4
mkdir -p "$root/checkpoints" "$root/output" "$root/status" "$root/work" "$root/code" "$inputs" || exit 1
aws s3 sync "$checkpoint" "$root/checkpoints" --only-show-errors || exit 1
if [ -n "$code" ]; then
  aws s3 cp "$code" "$root/code/code.tar.gz" --only-show-errors || exit 1
fi
while [ "$#" -ge 2 ]; do
  name=$1 uri=$2
  shift 2
  mkdir -p "$inputs/$name" || exit 1
  case $uri in
    */) aws s3 sync "$uri" "$inputs/$name" --only-show-errors || exit 1 ;;
    *) aws s3 cp "$uri" "$inputs/$name/${uri##*/}" --only-show-errors || exit 1 ;;
  esac
done
chmod -R a+rwX "$root" && chmod -R a+rX "$inputs"
"""

# The ECS and Batch sidecar (the AWS CLI image): syncs the checkpoint folder every `interval` seconds while the
# job runs; when the job's exit file appears, or on SIGTERM or the wrapper's `stopping` mark (a stop, a spot
# reclaim; on Batch the sidecar's PID 1 is the AWS CLI, which has no TERM handler, so the kernel drops the
# TERM and the job's wrapper, which traps it, is the one that tells): then after waiting up to
# `grace` seconds for the job, which got the same SIGTERM, to write its status), uploads the outputs and a last
# checkpoint and exits with the job's status (1 when the job succeeded but an upload failed; 143 when it was
# stopped before the job wrote its status). Arguments: the volume's root, the artifacts URI, the checkpoint
# location, the interval, the grace.
STAGE_OUT = """root=$1 artifacts=$2 checkpoint=$3 interval=$4 grace=${5:-0}
stopping=0
trap 'stopping=1' TERM INT
waited=0
while [ ! -f "$root/status/exit" ] && [ ! -f "$root/status/stopping" ] && [ "$stopping" -eq 0 ]; do
  sleep 1 &
  wait $!
  waited=$((waited + 1))
  if [ "$waited" -ge "$interval" ]; then
    aws s3 sync "$root/checkpoints" "$checkpoint" --only-show-errors || echo "jobplane: checkpoint sync failed" >&2
    waited=0
  fi
done
waited=0
while [ ! -f "$root/status/exit" ] && [ "$waited" -lt "$grace" ]; do
  sleep 1
  waited=$((waited + 1))
done
failed=0
aws s3 sync "$root/output" "$artifacts" --only-show-errors || failed=1
aws s3 sync "$root/checkpoints" "$checkpoint" --only-show-errors || failed=1
status=143
if [ -f "$root/status/exit" ]; then status=$(cat "$root/status/exit"); fi
case $status in '' | *[!0-9]*) status=1 ;; esac
if [ "$failed" -ne 0 ]; then
  echo "jobplane: uploading the outputs or the checkpoint failed" >&2
  if [ "$status" -eq 0 ]; then status=1; fi
fi
exit "$status"
"""


def require_s3(spec: JobSpec, service: str) -> None:
    """The helpers and SageMaker move files with S3 only: every location the spec names is an s3:// URI."""
    from chalicelib.errors import UnsupportedError

    named = [(f"inputs.{name}", uri) for name, uri in spec.inputs.items()]
    named += [("code_uri", spec.code_uri), ("outputs", spec.outputs), ("checkpoint_uri", spec.checkpoint_uri)]
    for field, uri in named:
        if uri and not uri.startswith("s3://"):
            raise UnsupportedError(
                f"{service} jobs read and write S3 only", [{"field": field, "message": "an s3:// URI"}]
            )


def wrapper_args(spec: JobSpec, layout: Layout) -> list[str]:
    """The wrapper's arguments for a spec: the folders, then setup and command as counted argument lists."""
    args = [layout.code_dir if spec.code_uri else "", layout.work_dir, layout.exit_file, str(len(spec.setup))]
    for step in spec.setup:
        args += [str(len(step)), *step]
    return args + list(spec.command)


def split_script(script: str, size: int) -> list[str]:
    """`script` in pieces of at most `size` characters (SageMaker caps each entrypoint item at 256)."""
    return [script[i : i + size] for i in range(0, len(script), size)]


def sagemaker_entrypoint(pieces: int) -> list[str]:
    """ContainerEntrypoint: sh joins the wrapper's pieces (its first arguments) and runs them as the script;
    the wrapper's own arguments follow as ContainerArguments."""
    joined = "".join(f"${{{i}}}" for i in range(1, pieces + 1))
    return ["/bin/sh", "-c", f'JOBPLANE_W_SCRIPT="{joined}"; shift {pieces}; eval "$JOBPLANE_W_SCRIPT"', "jobplane"]


def stage_in_args(spec: JobSpec, checkpoint_uri: str) -> list[str]:
    args = [ROOT, INPUT_ROOT, checkpoint_uri, spec.code_uri or ""]
    for name, uri in spec.inputs.items():
        args += [name, uri]
    return args


def stage_out_args(
    artifacts_uri: str, checkpoint_uri: str, interval: int = SYNC_SECONDS, grace: int = STOP_WAIT_SECONDS
) -> list[str]:
    return [ROOT, artifacts_uri, checkpoint_uri, str(interval), str(grace)]


# AWS Batch takes no entryPoint, and the AWS CLI image's is `aws`: there STAGE_IN and STAGE_OUT run as AWS CLI
# aliases (`!` aliases are run by /bin/sh with the alias's arguments appended, each shell-quoted by the CLI).
# The alias file is fixed text, content-addressed in the stage's artifact store; a first helper downloads it
# into CLI_HOME, the HOME of the helpers that run the aliases.
CLI_HOME = f"{ROOT}/home"
ALIAS_STAGE_IN = "jobplane-stage-in"
ALIAS_STAGE_OUT = "jobplane-stage-out"


def _alias(name: str, script: str) -> str:
    lines = script.strip("\n").splitlines()
    # The file is INI (continuation lines are indented): a blank or comment-like line would cut the script.
    if any(not line.strip() or line.lstrip().startswith(("#", ";")) for line in lines):
        raise ValueError(f"{name}: a script line the alias file cannot hold")
    body = "\n".join("  " + line for line in ["!f() {", *("  " + line for line in lines), "}; f"])
    return f"{name} = {body.lstrip()}\n"


def cli_aliases() -> str:
    """The AWS CLI alias file ($HOME/.aws/cli/alias) the Batch helpers run STAGE_IN and STAGE_OUT from."""
    return "[toplevel]\n" + _alias(ALIAS_STAGE_IN, STAGE_IN) + _alias(ALIAS_STAGE_OUT, STAGE_OUT)


def cli_aliases_key() -> str:
    """Where the alias file lives in the artifact store: under code/ (the job role reads it), by its digest."""
    import hashlib

    digest = hashlib.sha256(cli_aliases().encode()).hexdigest()
    return f"{contract.CODE_PREFIX}jobplane-aws-cli-alias-{digest[:20]}"


def input_command(name: str, uri: str, is_prefix: bool) -> list[str]:
    """One input's download as the AWS CLI's arguments (what a Batch helper container runs as `aws ...`)."""
    if is_prefix:
        return ["s3", "sync", uri, f"{INPUT_ROOT}/{name}", "--only-show-errors"]
    return ["s3", "cp", uri, f"{INPUT_ROOT}/{name}/{uri.rsplit('/', 1)[-1]}", "--only-show-errors"]


def mount(volume: str, path: str, read_only: bool = False) -> dict[str, Any]:
    return {"sourceVolume": volume, "containerPath": path, "readOnly": read_only}


def _arn(uri: str) -> str:
    return "arn:aws:s3:::" + uri.removeprefix("s3://")


def job_role_policy(bucket: str) -> dict[str, Any]:
    """What the role a job runs with (SageMaker's, the Batch job role, the ECS task role) needs in the stage's
    artifact store, and nothing else there: read packed code, write outputs, read and write checkpoints.
    Inputs, and outputs or checkpoint_uri in another bucket, are the operator's to grant (jobplane cannot know
    them before a job names them)."""
    root = f"s3://{bucket}/"
    code = _arn(root + contract.CODE_PREFIX) + "*"
    outputs = _arn(root + contract.OUTPUTS_PREFIX) + "*"
    checkpoints = _arn(root + contract.CHECKPOINTS_PREFIX) + "*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadCode", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [code]},
            {
                "Sid": "WriteOutputs",
                "Effect": "Allow",
                "Action": ["s3:AbortMultipartUpload", "s3:PutObject"],
                "Resource": [outputs],
            },
            {
                "Sid": "Checkpoints",
                "Effect": "Allow",
                "Action": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"],
                "Resource": [checkpoints],
            },
            {
                # `aws s3 sync` (and SageMaker's checkpoint sync) list the side they compare against.
                "Sid": "ListOutputsAndCheckpoints",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [_arn(root).rstrip("/")],
                "Condition": {
                    "StringLike": {"s3:prefix": [contract.OUTPUTS_PREFIX + "*", contract.CHECKPOINTS_PREFIX + "*"]}
                },
            },
        ],
    }
