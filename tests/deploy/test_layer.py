"""The layer post-processing drops exactly the runtime's SDK distributions, by their RECORD, reproducibly."""

from __future__ import annotations

import importlib.util
import zipfile

from tests.factories import ROOT

# By path: under pytest the name `deploy` is this test package, not the repository's deploy/ folder.
_spec = importlib.util.spec_from_file_location("jobplane_deploy_layer", ROOT / "deploy" / "aws" / "layer.py")
_layer_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_layer_module)
strip_runtime_sdk = _layer_module.strip_runtime_sdk

SITE = "python/lib/python3.11/site-packages"


def _dist(archive: zipfile.ZipFile, name: str, version: str, files: list[str]) -> None:
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    listed = [*files, f"{info}/METADATA", f"{info}/RECORD"]
    for path in files:
        archive.writestr(zipfile.ZipInfo(f"{SITE}/{path}", (1980, 1, 1, 0, 0, 0)), b"# code\n")
    archive.writestr(f"{SITE}/{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    archive.writestr(f"{SITE}/{info}/RECORD", "".join(f"{path},sha256=x,7\n" for path in listed))


def _layer(path):
    with zipfile.ZipFile(path, "w") as archive:
        _dist(archive, "botocore", "1.44.8", ["botocore/__init__.py", "botocore/data/s3/service-2.json"])
        _dist(archive, "python-dateutil", "2.9.0", ["dateutil/__init__.py"])
        _dist(archive, "six", "1.17.0", ["six.py"])
        _dist(archive, "pynamodb", "6.1.0", ["pynamodb/__init__.py", "pynamodb/models.py"])
    return path


def test_can_drop_the_runtime_sdk_and_keep_everything_else(tmp_path):
    layer = _layer(tmp_path / "layer.zip")
    assert strip_runtime_sdk(layer) == {"botocore": "1.44.8", "python-dateutil": "2.9.0", "six": "1.17.0"}
    names = set(zipfile.ZipFile(layer).namelist())
    assert names == {
        f"{SITE}/pynamodb/__init__.py",
        f"{SITE}/pynamodb/models.py",
        f"{SITE}/pynamodb-6.1.0.dist-info/METADATA",
        f"{SITE}/pynamodb-6.1.0.dist-info/RECORD",
    }


def test_the_same_layer_strips_to_the_same_bytes_and_a_stripped_layer_is_left_alone(tmp_path):
    # Terraform publishes a layer version when the zip's hash changes: an unchanged layer must hash the same.
    first, second = _layer(tmp_path / "a.zip"), _layer(tmp_path / "b.zip")
    strip_runtime_sdk(first)
    strip_runtime_sdk(second)
    assert first.read_bytes() == second.read_bytes()
    before = first.read_bytes()
    assert strip_runtime_sdk(first) == {}
    assert first.read_bytes() == before
