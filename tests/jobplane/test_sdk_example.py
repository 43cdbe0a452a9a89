"""The README's SDK example, run as it is against a local stack (`jobplane local up`) in its folder."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.factories import ROOT, start_stack, stop_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def readme_example() -> str:
    """The first python block of the README's "Python SDK" section."""
    section = (ROOT / "README.md").read_text().split("\n## Python SDK\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_sdk_example_runs_against_the_local_stack(tmp_path):
    stack = start_stack(tmp_path / ".jobplane")
    try:
        env = {k: v for k, v in stack["env"].items() if k not in ("JOBPLANE_API", "JOBPLANE_TOKEN")}
        # From the stack's folder, as the README says: from_env() finds the stack by its .jobplane.
        env.pop("JOBPLANE_LOCAL_DIR")
        result = subprocess.run(
            [sys.executable, "-c", readme_example()],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        stop_stack(stack)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    job_id, status, backend = lines[0].split()
    assert (len(job_id), status, backend) == (32, "SUCCEEDED", "local")
    assert lines[1] == "hello from the SDK"
    assert lines[2] == "['sdk-hello']"
    assert lines[3] == "True"
    assert lines[4]  # the planner's reason
    assert lines[5] == "missing: 404 not_found"
