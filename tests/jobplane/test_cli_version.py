"""`jobplane --version` reports the installed package's version, from its metadata."""

from __future__ import annotations

import tomllib
from importlib.metadata import version

import pytest

from jobplane.cli import main
from tests.factories import ROOT


def test_can_print_the_version_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"jobplane {version('jobplane')}" == f"jobplane {declared}"
