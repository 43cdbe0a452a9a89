"""`pip install` of the wheel into a fresh virtual environment gives a working `jobplane` and SDK."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile

import pytest

from tests.factories import ROOT

# Only what a source distribution carries: the wheel must not depend on the rest of the checkout.
SOURCES = ["pyproject.toml", "README.md", "jobplane", "chalicelib"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)])
    [wheel] = dist.glob("jobplane-*.whl")
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)])
    # An empty folder: nothing of the checkout is importable from the current directory.
    empty = tmp_path_factory.mktemp("empty")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {"wheel": wheel, "bin": env_dir / "bin", "python": python, "cwd": empty, "env": env}


def test_the_wheel_carries_the_packages_and_their_data_and_nothing_else(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("jobplane-")}
    assert tops == {"jobplane", "chalicelib"}
    assert {
        "chalicelib/triggers.yaml",
        "chalicelib/dashboard/index.html",
        "chalicelib/templates/resnet-cifar.yaml",
        "jobplane/local/stack.py",
        "chalicelib/backends/aws/sagemaker.py",
    } <= set(names)
    packages = {str(p.parent.relative_to(ROOT)) for p in ROOT.glob("chalicelib/**/__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= set(names)  # every sub-package, found not listed


def test_the_installed_cli_prints_its_version_and_help(installed):
    version = _run([str(installed["bin"] / "jobplane"), "--version"], cwd=installed["cwd"], env=installed["env"])
    assert version.stdout.strip() == "jobplane 0.1.0"
    assert installed["wheel"].name.startswith("jobplane-0.1.0-")
    usage = _run([str(installed["bin"] / "jobplane"), "--help"], cwd=installed["cwd"], env=installed["env"])
    assert "submit" in usage.stdout and "token" in usage.stdout and "--version" in usage.stdout


def test_the_sdk_and_the_admin_commands_core_import_with_the_declared_dependencies(installed):
    code = (
        "import jobplane, jobplane.client, jobplane.cli\n"
        "import chalicelib.auth, chalicelib.store.dynamo, chalicelib.notify.users, chalicelib.jobs.spec\n"
        "import rich.console\n"
        f"assert jobplane.__file__.startswith({str(installed['python'].parents[1])!r})\n"
    )
    _run([str(installed["python"]), "-c", code], cwd=installed["cwd"], env=installed["env"])
