"""Packing a workdir: a deterministic .tar.gz of the files git would keep, so the same tree has the same digest."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: read in every folder of the tree (like git's .gitignore); the second is for what git keeps but jobs need not
IGNORE_FILES = (".gitignore", ".jobplaneignore")
#: never packed, whatever the ignore files say
ALWAYS_SKIPPED = (".git",)
#: what `jobplane submit` refuses above, unless JOBPLANE_CODE_MAX_MB says otherwise (the API has the same limit)
DEFAULT_MAX_MB = 100


class PackError(Exception):
    """The workdir cannot be packed (missing, a link that leaves it, over the size limit); the message says why."""


@dataclass(frozen=True)
class Packed:
    """A packed workdir: the archive's bytes, their SHA-256 and the files in it (relative, sorted)."""

    data: bytes
    sha256: str
    files: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.data)


def max_bytes_from_env() -> int:
    raw = os.environ.get("JOBPLANE_CODE_MAX_MB", "").strip()
    try:
        mb = int(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        raise PackError(f"JOBPLANE_CODE_MAX_MB must be a whole number of megabytes, got {raw!r}") from None
    if mb < 1:
        raise PackError(f"JOBPLANE_CODE_MAX_MB must be at least 1, got {mb}")
    return mb * 1024 * 1024


class _Rules:
    """The ignore files found from the root down to one folder; the deepest match decides, as in git."""

    def __init__(self, specs: tuple[tuple[str, object], ...] = ()) -> None:
        self.specs = specs

    def below(self, folder: Path, relative: str) -> _Rules:
        import pathspec

        added = []
        for name in IGNORE_FILES:
            path = folder / name
            if path.is_file():
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
                added.append((relative, pathspec.GitIgnoreSpec.from_lines(lines)))
        return _Rules(self.specs + tuple(added)) if added else self

    def ignored(self, relative: str, is_dir: bool) -> bool:
        verdict = False
        for base, spec in self.specs:
            inside = relative[len(base) + 1 :] if base else relative
            result = spec.check_file(inside + "/" if is_dir else inside)
            if result.include is not None:
                verdict = result.include
        return verdict


def walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every file, link and folder to pack, in sorted order; ignored ones left out."""
    root = root.resolve()
    if not root.is_dir():
        raise PackError(f"workdir {root} is not a folder")

    def visit(folder: Path, relative: str, rules: _Rules) -> Iterator[tuple[str, Path]]:
        rules = rules.below(folder, relative)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name in ALWAYS_SKIPPED:
                continue
            path = Path(entry.path)
            rel = f"{relative}/{entry.name}" if relative else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if rules.ignored(rel, is_dir):
                continue
            if entry.is_symlink():
                target = (path.parent / os.readlink(path)).resolve()
                if target != root and root not in target.parents:
                    raise PackError(f"{rel} is a link to {target}, outside the workdir: copy the file in or ignore it")
                yield rel, path
            elif is_dir:
                yield rel, path
                yield from visit(path, rel, rules)
            elif entry.is_file(follow_symlinks=False):
                yield rel, path
            # sockets, fifos and devices are not code: left out

    yield from visit(root, "", _Rules())


def _info(rel: str, path: Path) -> tuple[tarfile.TarInfo, bytes | None]:
    st = path.lstat()
    info = tarfile.TarInfo(rel)
    # Nothing of this machine goes in: no times, owners or umask, so the digest is the tree's alone.
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        info.mode = 0o777
        return info, None
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        return info, None
    data = path.read_bytes()
    info.size = len(data)
    info.mode = 0o755 if st.st_mode & 0o111 else 0o644
    return info, data


def pack(workdir: str | Path, max_bytes: int | None = None) -> Packed:
    """The workdir as a .tar.gz (gitignore rules honoured, .git skipped); PackError when over `max_bytes`."""
    limit = max_bytes_from_env() if max_bytes is None else max_bytes
    root = Path(workdir)
    entries = list(walk(root))
    sizes = [(path.lstat().st_size, rel) for rel, path in entries if path.is_file() and not path.is_symlink()]
    _check_unpack_limits(root, len(entries), sizes)
    buffer = io.BytesIO()
    # gzip with mtime 0 and no file name: the header is the same on every machine and every day.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel, path in entries:
                info, data = _info(rel, path)
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
                if buffer.tell() > limit:
                    break
    data = buffer.getvalue()
    if len(data) > limit:
        biggest = sorted(sizes, reverse=True)[:5]
        listed = ", ".join(f"{rel} ({_mb(size)})" for size, rel in biggest)
        raise PackError(
            f"workdir {root} packs to more than the {_mb(limit)} limit (JOBPLANE_CODE_MAX_MB); "
            f"the biggest files: {listed}; add them to .jobplaneignore (or .gitignore) and read them as inputs"
        )
    files = tuple(rel for rel, path in entries if not path.is_dir() or path.is_symlink())
    return Packed(data, hashlib.sha256(data).hexdigest(), files)


def _check_unpack_limits(root: Path, members: int, sizes: list[tuple[int, str]]) -> None:
    """What the job-side unpack would refuse (contract.CODE_MAX_MEMBERS / CODE_MAX_UNPACKED_BYTES), refused now."""
    from chalicelib.jobs.contract import CODE_MAX_MEMBERS, CODE_MAX_UNPACKED_BYTES

    if members > CODE_MAX_MEMBERS:
        raise PackError(
            f"workdir {root} has {members} files and folders, more than a job unpacks ({CODE_MAX_MEMBERS}); "
            "add what the job does not need to .jobplaneignore (or .gitignore) and read data as inputs"
        )
    total = sum(size for size, _ in sizes)
    if total > CODE_MAX_UNPACKED_BYTES:
        raise PackError(
            f"workdir {root} holds {_mb(total)}, more than a job unpacks ({_mb(CODE_MAX_UNPACKED_BYTES)}); "
            "add the biggest files to .jobplaneignore (or .gitignore) and read them as inputs"
        )


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"
