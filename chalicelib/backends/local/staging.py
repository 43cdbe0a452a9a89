"""The local runner's half of the job contract: code, inputs and checkpoints in from S3, checkpoints and outputs out.

The runner runs as the stack's user and the job, when the stack is root, as another one: everything read from
a folder the job can write is opened without following links, one folder at a time, so a job cannot make the
runner upload (or overwrite) a file outside its own folders.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from chalicelib.jobs import contract

CHUNK = 1 << 20


class StagingError(Exception):
    """A part of the contract could not be kept (a missing input, a digest that does not match, a bad archive)."""


# --- the object store ------------------------------------------------------------------------
@dataclass
class Storage:
    """S3 as the runner reaches it: the stack's endpoint (re-read from its file: a restarted stack moves) and
    the credentials the stack handed over its pipe. None of it is in the job's environment."""

    region: str
    endpoint_url: str | None = None
    endpoint_file: str | None = None
    credentials: dict[str, str | None] = field(default_factory=dict)

    def client(self):
        import botocore.session
        from botocore.config import Config

        endpoint = self.endpoint_url
        if self.endpoint_file:
            try:
                endpoint = Path(self.endpoint_file).read_text().strip() or endpoint
            except OSError:
                pass
        session = botocore.session.Session()
        return session.create_client(
            "s3",
            region_name=self.region,
            endpoint_url=endpoint,
            aws_access_key_id=self.credentials.get("access_key"),
            aws_secret_access_key=self.credentials.get("secret_key"),
            aws_session_token=self.credentials.get("token"),
            config=Config(retries={"mode": "standard", "max_attempts": 5}),
        )


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise StagingError(f"{uri!r}: the local backend reads and writes s3:// locations only")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def list_keys(client, uri: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object below the prefix `uri`."""
    from botocore.exceptions import ClientError

    bucket, prefix = split_uri(uri)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"], int(obj["Size"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise
        # No bucket, no objects: a first attempt's checkpoint location, say (an input says it found none).


def _relative(prefix: str, key: str) -> PurePosixPath:
    """A key below `prefix` as a path below a folder; a key that would leave the folder is refused."""
    rel = PurePosixPath(key[len(prefix) :])
    if not rel.parts or rel.is_absolute() or any(p in ("..", ".") for p in rel.parts):
        raise StagingError(f"object key {key!r} does not name a file below {prefix!r}")
    return rel


def _download(client, bucket: str, key: str, dest: Path) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    written = 0
    with open(dest, "wb") as fh:
        for block in iter(lambda: body.read(CHUNK), b""):
            fh.write(block)
            written += len(block)
    return written


def download_prefix(client, uri: str, folder: Path) -> int:
    """Every object below the prefix `uri` into `folder`, keeping its path below the prefix; returns the count."""
    bucket, prefix = split_uri(uri)
    count = 0
    for key, _ in list_keys(client, uri):
        if key.endswith("/"):
            continue  # a folder marker
        _download(client, bucket, key, folder / _relative(prefix, key))
        count += 1
    return count


def stage_input(client, name: str, uri: str, folder: Path) -> int:
    """One input at `folder`: a prefix (URI ending in /) as the objects below it, an object as that one file."""
    folder.mkdir(parents=True, exist_ok=True)
    if uri.endswith("/"):
        count = download_prefix(client, uri, folder)
        if count == 0:
            raise StagingError(f"input {name}: no objects below {uri}")
        return count
    bucket, key = split_uri(uri)
    from botocore.exceptions import ClientError

    try:
        _download(client, bucket, key, folder / PurePosixPath(key).name)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        raise StagingError(f"input {name}: {uri} cannot be read ({code})") from None
    return 1


def make_read_only(folder: Path) -> None:
    """Files 0444, folders 0555, bottom up (the job reads its inputs; it may not change them)."""
    for path, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            os.chmod(os.path.join(path, name), 0o444)  # noqa: S103 - the job's user reads them
        for name in dirs:
            os.chmod(os.path.join(path, name), 0o555)  # noqa: S103 - and lists them, but changes nothing
    os.chmod(folder, 0o555)  # noqa: S103


def give_to(folder: Path, uid: int, gid: int) -> None:
    """Hand a folder the runner filled (before the job started) to the job's user; links are not followed."""
    os.lchown(folder, uid, gid)
    for path, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.lchown(os.path.join(path, name), uid, gid)


# --- packed code -----------------------------------------------------------------------------
def fetch_code(client, uri: str, sha256: str, dest: Path) -> Path:
    """Download packed code and check it is what its digest says before anything is unpacked."""
    bucket, key = split_uri(uri)
    from botocore.exceptions import ClientError

    try:
        _download(client, bucket, key, dest)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        raise StagingError(f"code_uri {uri} cannot be read ({code})") from None
    digest = hashlib.sha256()
    with open(dest, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise StagingError(f"code_uri {uri} has SHA-256 {digest.hexdigest()}, not code_sha256 {sha256}")
    return dest


def check_members(
    members: Iterable[tarfile.TarInfo],
    max_members: int = contract.CODE_MAX_MEMBERS,
    max_bytes: int = contract.CODE_MAX_UNPACKED_BYTES,
) -> list[tarfile.TarInfo]:
    """The archive's members, read one at a time and refused as soon as one is: more members or unpacked bytes
    than the contract's limits (a zip bomb: the headers say how much it would write), or a member that would
    land outside the folder (an absolute path, a `..`, a link, symbolic or hard, whose target leaves the
    folder), or anything but files, folders and links."""
    checked: list[tarfile.TarInfo] = []
    total = 0
    for member in members:
        checked.append(member)
        total += member.size if member.isfile() else 0
        if len(checked) > max_members:
            raise StagingError(f"the archive has more than {max_members} members (CODE_MAX_MEMBERS)")
        if total > max_bytes:
            raise StagingError(f"the archive unpacks to more than {max_bytes} bytes (CODE_MAX_UNPACKED_BYTES)")
        name = PurePosixPath(member.name)
        if name.is_absolute() or member.name.startswith(("/", "\\")):
            raise StagingError(f"archive member {member.name!r} has an absolute path")
        if ".." in name.parts:
            raise StagingError(f"archive member {member.name!r} climbs out of the folder with '..'")
        if member.issym() or member.islnk():
            target = PurePosixPath(member.linkname)
            resolved = target if member.islnk() else name.parent / target
            if target.is_absolute() or _climbs_out(resolved):
                raise StagingError(f"archive member {member.name!r} links to {member.linkname!r}, outside the folder")
        elif not (member.isfile() or member.isdir()):
            raise StagingError(f"archive member {member.name!r} is not a file, folder or link")
    return checked


def _climbs_out(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def unpack(archive: Path, folder: Path, **limits: int) -> int:
    """Unpack a checked .tar.gz into `folder`; returns the number of files. Nothing is written if any member
    is refused (every member is checked first, against `limits`: check_members' max_members and max_bytes),
    and Python's `data` filter guards the extraction itself."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = check_members(tar, **limits)  # before anything is written; stops at the first refusal
            tar.extractall(folder, members=members, filter="data")  # noqa: S202 - members checked above
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise StagingError(f"the packed code cannot be unpacked: {exc}") from None
    return sum(1 for m in members if m.isfile())


# --- reading what the job wrote ----------------------------------------------------------------
def files_below(folder: Path, owner: int | None = None) -> Iterator[tuple[str, int, os.stat_result]]:
    """(relative path, open fd, stat) of every regular file below `folder`, opened without following any link,
    one folder at a time; with `owner`, only files that user owns (a hard link to someone else's file is not
    the job's to upload). The caller closes each fd."""
    try:
        top = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    yield from _walk_fd(top, "", owner)


def _walk_fd(dir_fd: int, prefix: str, owner: int | None) -> Iterator[tuple[str, int, os.stat_result]]:
    try:
        names = sorted(os.listdir(dir_fd))
        for name in names:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError:
                continue  # a link, or gone: not the job's file to upload
            info = os.fstat(fd)
            rel = f"{prefix}{name}"
            if stat.S_ISDIR(info.st_mode):
                yield from _walk_fd(fd, rel + "/", owner)
            elif stat.S_ISREG(info.st_mode) and (owner is None or info.st_uid == owner):
                yield rel, fd, info
            else:
                os.close(fd)
    finally:
        os.close(dir_fd)


def upload_folder(
    client, folder: Path, uri: str, seen: dict[str, tuple[int, int]] | None = None, owner: int | None = None
) -> int:
    """Upload every file below `folder` to the prefix `uri`; with `seen`, only files changed since (size and
    mtime), and `seen` is updated. Returns the number of files uploaded."""
    bucket, prefix = split_uri(uri)
    count = 0
    for rel, fd, info in files_below(folder, owner):
        try:
            mark = (info.st_size, info.st_mtime_ns)
            if seen is not None and seen.get(rel) == mark:
                continue
            with os.fdopen(os.dup(fd), "rb") as fh:
                client.put_object(Bucket=bucket, Key=prefix + rel, Body=fh, ContentLength=info.st_size)
            if seen is not None:
                seen[rel] = mark
            count += 1
        finally:
            os.close(fd)
    return count


def remember(folder: Path) -> dict[str, tuple[int, int]]:
    """The (size, mtime) of each file below `folder` now: what a sync need not upload again."""
    marks = {}
    for rel, fd, info in files_below(folder):
        marks[rel] = (info.st_size, info.st_mtime_ns)
        os.close(fd)
    return marks


def describe(error: Exception) -> str:
    """An error's words for the job's log: the provider's code and message, never a traceback."""
    response: Any = getattr(error, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return f"{err.get('Code')}: {err.get('Message') or ''}".strip()
    return f"{type(error).__name__}: {error}" if not isinstance(error, StagingError) else str(error)
