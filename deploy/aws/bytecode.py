"""Ship compiled bytecode in the Lambda zips, so a cold start does not compile every module from source.

Lambda's /var/task and /opt are read-only and Chalice zips sources only: without this, every cold start compiles
the app, the core and the layer's libraries again (none of it can be cached). Each `X.py` gets
`__pycache__/X.<cache tag>.pyc` beside it in the same zip, in the unchecked-hash form (PEP 552): the interpreter
loads it without comparing the source's timestamp, which the zip's fixed 1980 dates would not match anyway. The
sources stay for tracebacks. The tag is this interpreter's: a runtime of another version ignores the files, so
`runtime_tag` refuses to compile for a runtime other than the one running.
"""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path, PurePosixPath


def runtime_tag(runtime: str) -> str:
    """The cache tag ('cpython-311') of a Lambda runtime name ('python3.11'), which must be this interpreter's."""
    mine = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if runtime != mine:
        raise SystemExit(f"the functions run on {runtime} but this is {mine}: build the package with {runtime}")
    return sys.implementation.cache_tag


def cached_name(source: str, tag: str) -> str:
    """`pkg/mod.py` -> `pkg/__pycache__/mod.<tag>.pyc`, where the import system looks for it."""
    path = PurePosixPath(source)
    return str(path.parent / "__pycache__" / f"{path.stem}.{tag}.pyc").removeprefix("./")


def unchecked_pyc(source: bytes, name: str) -> bytes:
    """The unchecked-hash .pyc of `source` (what `py_compile` writes with PycInvalidationMode.UNCHECKED_HASH)."""
    from importlib._bootstrap_external import _code_to_hash_pyc

    code = compile(source, name, "exec", dont_inherit=True)
    return _code_to_hash_pyc(code, importlib.util.source_hash(source), checked=False)


def add_bytecode(archive_path: Path, tag: str = sys.implementation.cache_tag) -> int:
    """Rewrite the zip with a .pyc next to each .py it holds (replacing any it had); return how many.

    The same sources give the same bytes (no timestamps), so an unchanged layer keeps its hash for Terraform.
    A source that does not compile (a library's Python-2 test file, say) is left without bytecode, as pip does.
    """
    with zipfile.ZipFile(archive_path) as source:
        infos = source.infolist()
        data = {info.filename: source.read(info) for info in infos}  # before writestr retags each ZipInfo
        wanted = {cached_name(info.filename, tag): info for info in infos if info.filename.endswith(".py")}
        rewritten = archive_path.with_suffix(".pyc-tmp")
        compiled = 0
        with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as target:
            for info in infos:
                if info.filename in wanted:
                    continue  # replaced below
                target.writestr(info, data[info.filename], compress_type=zipfile.ZIP_DEFLATED)
            for pyc, info in sorted(wanted.items()):
                try:
                    pyc_bytes = unchecked_pyc(data[info.filename], info.filename)
                except (SyntaxError, ValueError):
                    continue
                entry = zipfile.ZipInfo(pyc, info.date_time)
                entry.external_attr = info.external_attr
                target.writestr(entry, pyc_bytes, compress_type=zipfile.ZIP_DEFLATED)
                compiled += 1
    rewritten.replace(archive_path)
    return compiled
