"""Every job-side unpack of packed code refuses the same crafted archives, before it writes anything.

Three unpackers keep the contract: the local runner's (Python tarfile), the VM scripts' and the Vertex
wrapper's `unpack_code` (POSIX sh over `tar -tv`, run here by dash and bash), and the ECS / Batch / Kubernetes
wrapper (the same shell function, or PY_UNPACK in an image without tar). Each refuses an archive with more
members or unpacked bytes than contract.CODE_MAX_MEMBERS / CODE_MAX_UNPACKED_BYTES (a zip bomb), or with a
member landing outside the folder (absolute, `..`, a link out), and says which in its message.
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from chalicelib.backends.agent import UNPACK_CODE_SH
from chalicelib.backends.aws import staging as aws_staging
from chalicelib.backends.local.staging import StagingError, unpack
from chalicelib.jobs import contract

SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]


def _tar(members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = value.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname = value
            tar.addfile(info)
    return buffer.getvalue()


def _bomb(size: int) -> bytes:
    """One member whose header says `size` bytes, then nothing: what a zip bomb's headers announce, in 100 bytes
    of gzip (a real one's data would be zeros compressing ~1000:1; the refusal must come from the header)."""
    info = tarfile.TarInfo("weights.bin")
    info.size = size
    return gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT))


OUT = r"out(side)? (of )?(the|its) folder"  # the Python unpacker names the member, the shell one the kind
CASES = {
    "too-many-members": (lambda: _tar([(f"f{i}", "file", "x") for i in range(6)]), r"(more than|over) 5 members"),
    "too-many-bytes": (
        lambda: _tar([("a", "file", "x" * 600), ("b", "file", "y" * 600)]),
        r"(more than|over) 1000 bytes",
    ),
    "absolute": (lambda: _tar([("ok.txt", "file", "ok"), ("/tmp/jobplane-pwned", "file", "x")]), "absolute"),
    "dot-dot": (lambda: _tar([("ok.txt", "file", "ok"), ("a/../../pwned", "file", "x")]), r"\.\."),
    "symlink-out": (lambda: _tar([("ok.txt", "file", "ok"), ("data/etc", "sym", "../../etc")]), OUT),
    "symlink-absolute": (lambda: _tar([("ok.txt", "file", "ok"), ("passwd", "sym", "/etc/passwd")]), OUT),
    "fifo": (lambda: _tar([("ok.txt", "file", "ok"), ("pipe", "fifo", "")]), "not a file, folder or link"),
}
LIMITS = {"max_members": 5, "max_bytes": 1000}
GOOD = [("src", "dir", ""), ("src/train.py", "file", "print(1)"), ("src/link.py", "sym", "train.py")]


def _python(archive: Path, work: Path, **limits) -> tuple[int, str]:
    try:
        unpack(archive, work, **limits)
    except StagingError as exc:
        return 1, str(exc)
    return 0, ""


def _shell(shell):
    def run(archive: Path, work: Path, **limits) -> tuple[int, str]:
        args = [str(limits["max_members"]), str(limits["max_bytes"])] if limits else []
        script = UNPACK_CODE_SH + 'unpack_code "$@"\n'
        done = subprocess.run(
            [shutil.which(shell), "-c", script, "jobplane", str(archive), "", str(work), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode, done.stderr

    return run


def _py_unpack(archive: Path, work: Path, **limits) -> tuple[int, str]:
    """The wrapper's fallback in an image without tar (its limits are the contract's, in its text)."""
    program = aws_staging.PY_UNPACK
    for name, value in limits.items():
        default = contract.CODE_MAX_MEMBERS if name == "max_members" else contract.CODE_MAX_UNPACKED_BYTES
        program = program.replace(str(default), str(value))
    done = subprocess.run(
        [sys.executable, "-c", program, str(archive), str(work)], capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stderr


UNPACKERS = {"python": _python, "py-unpack": _py_unpack, **{f"sh-{s}": _shell(s) for s in SHELLS}}


@pytest.mark.parametrize("unpacker", sorted(UNPACKERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crafted_archive_is_refused_saying_why_and_nothing_is_written(tmp_path, unpacker, case):
    make, words = CASES[case]
    archive = tmp_path / "code.tar.gz"
    archive.write_bytes(make())
    work = tmp_path / "work"
    work.mkdir()
    status, message = UNPACKERS[unpacker](archive, work, **LIMITS)
    assert status != 0
    assert re.search(words, message), message
    assert list(work.iterdir()) == []
    assert not Path("/tmp/jobplane-pwned").exists()  # noqa: S108 - what the absolute member aimed at


@pytest.mark.parametrize("unpacker", sorted(UNPACKERS))
def test_a_header_announcing_more_than_the_contract_limit_is_refused_from_the_header_alone(tmp_path, unpacker):
    archive = tmp_path / "code.tar.gz"
    archive.write_bytes(_bomb(contract.CODE_MAX_UNPACKED_BYTES + 1))
    work = tmp_path / "work"
    work.mkdir()
    status, message = UNPACKERS[unpacker](archive, work)  # the contract's own limits
    assert status != 0
    assert str(contract.CODE_MAX_UNPACKED_BYTES) in message and "CODE_MAX_UNPACKED_BYTES" in message, message
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("unpacker", sorted(UNPACKERS))
def test_an_archive_at_the_limits_with_links_inside_unpacks(tmp_path, unpacker):
    archive = tmp_path / "code.tar.gz"
    archive.write_bytes(_tar(GOOD))  # 3 members, 8 bytes: within 3 and 8
    work = tmp_path / "work"
    work.mkdir()
    status, message = UNPACKERS[unpacker](archive, work, max_members=3, max_bytes=8)
    assert status == 0, message
    assert (work / "src" / "link.py").read_text() == "print(1)"


@pytest.mark.skipif("dash" not in SHELLS, reason="the wrappers run under a POSIX sh (dash) here")
def test_the_ecs_wrapper_refuses_a_bomb_before_the_job_runs(tmp_path):
    """The ECS / Batch / Kubernetes wrapper: the helper put the archive in the code folder; the job never starts."""
    code = tmp_path / "code"
    code.mkdir()
    (code / ("c" * 64 + ".tar.gz")).write_bytes(_bomb(contract.CODE_MAX_UNPACKED_BYTES + 1))
    marker = tmp_path / "ran"
    args = [str(code), str(tmp_path / "work"), "", "0", "/bin/sh", "-c", f": > {marker}"]
    done = subprocess.run(
        ["dash", "-c", aws_staging.WRAPPER, "jobplane", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == aws_staging.WRAPPER_FAILED, done.stderr
    assert "the archive is refused: over" in done.stderr and "CODE_MAX_UNPACKED_BYTES" in done.stderr
    assert not marker.exists()
