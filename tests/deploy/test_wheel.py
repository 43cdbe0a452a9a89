"""`pip install` of the wheel into a fresh virtual environment gives a working `jobplane` and SDK."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import venv
import zipfile

import pytest
import requests

from tests.factories import ROOT, free_port, wait_for

# Only what a source distribution carries: the wheel must not depend on the rest of the checkout.
SOURCES = ["pyproject.toml", "README.md", "app.py", "jobplane", "chalicelib"]

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
    # [local]: the stack's emulator and Chalice, so `jobplane local up` runs from the installed package.
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[local]"])
    # An empty folder: nothing of the checkout is importable from the current directory.
    empty = tmp_path_factory.mktemp("empty")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {"wheel": wheel, "bin": env_dir / "bin", "python": python, "cwd": empty, "env": env}


def test_the_wheel_carries_the_packages_and_their_data_and_nothing_else(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("jobplane-")}
    assert tops == {"jobplane", "chalicelib", "app.py"}
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


def test_local_up_from_an_empty_folder_then_a_json_submit_and_the_readme_sdk_example(installed, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    port = free_port()
    env = {k: v for k, v in installed["env"].items() if not k.startswith("JOBPLANE_") and k != "AWS_ENDPOINT_URL"}
    # Jobs run as this user, as in the other stack tests (as root the default is nobody, who cannot enter
    # pytest's 0700 temporary folders where this venv lives).
    env["JOBPLANE_LOCAL_RUN_AS"] = os.environ["JOBPLANE_LOCAL_RUN_AS"]
    log = open(tmp_path / "stack.log", "w")  # noqa: SIM115
    stack = subprocess.Popen(
        [str(installed["bin"] / "jobplane"), "local", "up", "--port", str(port), "--reconcile-seconds", "1"],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def up():
            assert stack.poll() is None, (tmp_path / "stack.log").read_text()
            try:
                state = json.loads((folder / ".jobplane" / "local.json").read_text())
                return state if requests.get(state["api"] + "/health", timeout=1).ok else None
            except (OSError, ValueError, KeyError, requests.RequestException):
                return None

        wait_for(up, timeout=120, interval=0.5, what="the installed local stack")
        (folder / "job.yaml").write_text("name: from-the-wheel\nbackend: local\ncommand: [python, -c, 'print(1)']\n")
        submitted = _run(
            [
                str(installed["bin"] / "jobplane"),
                "submit",
                "job.yaml",
                "--output",
                "json",
                "--wait",
                "--timeout",
                "120",
            ],
            cwd=folder,
            env=env,
        )
        job = json.loads(submitted.stdout)
        assert (job["name"], job["status"]) == ("from-the-wheel", "SUCCEEDED")
        section = (ROOT / "README.md").read_text().split("\n## Python SDK\n", 1)[1]
        example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
        ran = _run([str(installed["python"]), "-c", example], cwd=folder, env=env)
        assert ran.stdout.splitlines()[1] == "hello from the SDK"
        assert ran.stdout.splitlines()[-1] == "missing: 404 not_found"
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(timeout=60)
        finally:
            if stack.poll() is None:
                stack.kill()
            log.close()
