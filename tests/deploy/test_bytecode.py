"""The Lambda zips get unchecked-hash bytecode beside each source: imported without compiling, reproducibly."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile

import pytest

from tests.factories import ROOT

# By path: under pytest the name `deploy` is this test package, not the repository's deploy/ folder.
_spec = importlib.util.spec_from_file_location("jobplane_deploy_bytecode", ROOT / "deploy" / "aws" / "bytecode.py")
bytecode = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bytecode)
TAG = sys.implementation.cache_tag


def _zip(path, files: dict[str, str]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), text)
    return path


def test_each_source_gets_its_pyc_where_the_import_system_looks_and_other_files_stay(tmp_path):
    bundle = _zip(
        tmp_path / "f.zip",
        {"app.py": "X = 1\n", "pkg/__init__.py": "", "pkg/mod.py": "Y = 2\n", "pkg/data.json": "{}"},
    )
    assert bytecode.add_bytecode(bundle) == 3
    names = set(zipfile.ZipFile(bundle).namelist())
    assert names == {
        "app.py",
        "pkg/__init__.py",
        "pkg/mod.py",
        "pkg/data.json",
        f"__pycache__/app.{TAG}.pyc",
        f"pkg/__pycache__/__init__.{TAG}.pyc",
        f"pkg/__pycache__/mod.{TAG}.pyc",
    }
    assert zipfile.ZipFile(bundle).read("pkg/data.json") == b"{}"


def test_the_interpreter_runs_the_shipped_bytecode_without_checking_the_source(tmp_path):
    bundle = _zip(tmp_path / "f.zip", {"pkg/__init__.py": "", "pkg/mod.py": "VALUE = 'compiled'\n"})
    bytecode.add_bytecode(bundle)
    task = tmp_path / "task"
    zipfile.ZipFile(bundle).extractall(task)
    # A changed source of another size and date: a timestamp pyc would be recompiled, an unchecked one is not.
    (task / "pkg" / "mod.py").write_text("VALUE = 'recompiled from source'\n")
    code = "import sys; sys.path.insert(0, sys.argv[1]); import pkg.mod; print(pkg.mod.VALUE)"
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    args = [sys.executable, "-I", "-c", code, str(task)]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "compiled"


def test_the_same_sources_give_the_same_bytes_and_a_second_pass_changes_nothing(tmp_path):
    files = {"a.py": "def f():\n    return {'k': [1, 2.5, 'x']}\n", "b/c.py": "import os\nZ = os.sep\n"}
    first, second = _zip(tmp_path / "1.zip", files), _zip(tmp_path / "2.zip", files)
    bytecode.add_bytecode(first)
    bytecode.add_bytecode(second)
    assert first.read_bytes() == second.read_bytes()
    before = first.read_bytes()
    assert bytecode.add_bytecode(first) == 2
    assert first.read_bytes() == before


def test_a_source_that_does_not_compile_keeps_its_source_and_gets_no_pyc(tmp_path):
    bundle = _zip(tmp_path / "f.zip", {"ok.py": "A = 1\n", "py2.py": "print 'old'\n"})
    assert bytecode.add_bytecode(bundle) == 1
    assert set(zipfile.ZipFile(bundle).namelist()) == {"ok.py", "py2.py", f"__pycache__/ok.{TAG}.pyc"}


def test_a_runtime_other_than_this_interpreter_is_refused_by_name():
    mine = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert bytecode.runtime_tag(mine) == TAG
    with pytest.raises(SystemExit, match="run on python2.7 but this is " + mine):
        bytecode.runtime_tag("python2.7")
