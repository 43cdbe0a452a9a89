"""Every expected failure of the `jobplane` command is one line saying what to do, never a traceback:
run as a user runs it (a process), one case each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from jobplane.local.sinks import UnknownFunction, start_invoke_server
from tests.factories import ROOT


def jobplane(*args: str, cwd=None, env=None, stdin: str = "") -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBPLANE_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "jobplane.cli", *args],
        cwd=cwd or ROOT,
        env=environ,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection(tmp_path):
    port = free_port()
    line = one_error(jobplane("list", "--api", f"http://127.0.0.1:{port}", "--token", "t", cwd=tmp_path))
    assert f"no answer from the API at http://127.0.0.1:{port} (refused or unreachable)" in line
    assert "jobplane local up" in line


def test_no_api_configured(tmp_path):
    line = one_error(jobplane("list", cwd=tmp_path, env={"JOBPLANE_CONFIG": str(tmp_path / "none.toml")}))
    assert "no API address: pass --api, set JOBPLANE_API" in line


@pytest.mark.parametrize("command", ["submit", "validate"])
def test_a_missing_spec_file(tmp_path, command):
    line = one_error(jobplane(command, "nope.yaml", "--api", "http://127.0.0.1:9", "--token", "t", cwd=tmp_path))
    assert line == "error: nope.yaml: no such spec file; check the path (or use - for stdin)"


def test_a_folder_as_spec(tmp_path):
    (tmp_path / "specs").mkdir()
    line = one_error(jobplane("submit", "specs", "--api", "http://127.0.0.1:9", "--token", "t", cwd=tmp_path))
    assert line == "error: specs is a folder, not a spec file; give the YAML or JSON file inside it"


def test_a_yaml_error_names_the_line_and_column(tmp_path):
    (tmp_path / "job.yaml").write_text("name: x\nbackend: local\ncommand: [echo, 'hi'\nenv: {}\n")
    line = one_error(jobplane("submit", "job.yaml", "--api", "http://127.0.0.1:9", "--token", "t", cwd=tmp_path))
    assert line.startswith("error: job.yaml: invalid YAML at line 4, column 1: expected ',' or ']'")


def test_a_duplicate_yaml_key_is_refused_naming_the_key_and_its_lines(tmp_path):
    (tmp_path / "job.yaml").write_text("name: x\nbackend: local\ncommand: [echo]\nbackend: aws-batch\n")
    line = one_error(jobplane("validate", "job.yaml", cwd=tmp_path))
    assert line == (
        "error: job.yaml: invalid YAML at line 4, column 1: found duplicate key 'backend' (first at line 2)"
    )


def test_a_port_in_use_for_local_up(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = jobplane("local", "up", "--port", str(port), "--local-dir", str(tmp_path / "state"), cwd=tmp_path)
    line = one_error(result)
    assert line == f"error: port {port} is already in use (another local up?); pass --port N"


def test_a_handlers_keyerror_under_local_invoke_is_the_handlers_error(tmp_path):
    def invoke(name, payload):
        if name != "on_upload":
            raise UnknownFunction(f"Function not found: {name} (the stack's functions: on_upload)")
        return payload["Records"][0]  # a KeyError, as a handler given the wrong event raises it

    server = start_invoke_server("127.0.0.1", invoke, lambda auth, name, payload: None)
    try:
        state = tmp_path / ".jobplane"
        state.mkdir()
        functions = f"http://127.0.0.1:{server.server_address[1]}"
        (state / "local.json").write_text(json.dumps({"pid": os.getpid(), "functions": functions, "admin_token": "t"}))
        failed = jobplane("local", "invoke", "on_upload", cwd=tmp_path, stdin='{"detail": {}}')
        line = one_error(failed, code=1)
        assert line.startswith("error: on_upload raised KeyError: 'Records' (File ")
        assert "test_cli_errors.py" in line and "in invoke" in line
        missing = jobplane("local", "invoke", "on_uplaod", cwd=tmp_path, stdin="{}")
        assert one_error(missing) == "error: Function not found: on_uplaod (the stack's functions: on_upload)"
    finally:
        server.shutdown()
        server.server_close()


def test_usage_errors_exit_2_with_argparse_usage(tmp_path):
    result = jobplane("list", "--output", "yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice: 'yaml'" in result.stderr


def test_local_up_without_the_local_extra_names_the_install(tmp_path):
    # As in an install without [local]: waitress (the API's server) cannot be imported.
    code = "import sys; sys.modules['waitress'] = None; from jobplane.cli import main; sys.exit(main())"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBPLANE_")}
    result = subprocess.run(
        [sys.executable, "-c", code, "local", "up", "--local-dir", str(tmp_path / "state")],
        cwd=tmp_path,
        env={**environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one_error(result) == "error: the local stack needs waitress: pip install 'jobplane[local]'"
