"""Drop from Chalice's dependency layer the AWS SDK that the Lambda Python runtime already ships."""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from email.parser import HeaderParser
from pathlib import Path

# The runtime's boto3 and its dependency closure. pynamodb requires botocore, so Chalice's pip resolve bundles it
# (77 % of the old 20 MiB zip) next to the runtime's boto3 of another release; the runtime's set is consistent.
RUNTIME_DISTRIBUTIONS = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"})


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions(names: list[str], read) -> dict[str, tuple[str, list[str]]]:
    """{normalized name: (version, the archive members its RECORD lists)} for every dist-info in a layer."""
    found = {}
    for member in names:
        if not member.endswith(".dist-info/METADATA"):
            continue
        site_packages = member.rsplit("/", 2)[0]
        headers = HeaderParser().parsestr(read(member).decode())
        record = read(member.removesuffix("METADATA") + "RECORD").decode()
        files = [f"{site_packages}/{os.path.normpath(row[0])}" for row in csv.reader(io.StringIO(record)) if row]
        found[_normalize(headers["Name"])] = (headers["Version"], files)
    return found


def strip_runtime_sdk(layer_zip: Path, drop: frozenset[str] = RUNTIME_DISTRIBUTIONS) -> dict[str, str]:
    """Rewrite the layer without the `drop` distributions; return {name: version} of what was dropped."""
    with zipfile.ZipFile(layer_zip) as source:
        found = distributions(source.namelist(), source.read)
        dropped = {name: version for name, (version, _) in found.items() if name in drop}
        unwanted = {member for name in dropped for member in found[name][1]}
        if not unwanted:
            return {}
        rewritten = layer_zip.with_suffix(".tmp")
        with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                if info.filename not in unwanted:
                    # Same ZipInfo (Chalice's fixed 1980 timestamps): an unchanged layer keeps its hash, so
                    # Terraform publishes a new layer version only when the dependencies change.
                    target.writestr(info, source.read(info), compress_type=zipfile.ZIP_DEFLATED)
    rewritten.replace(layer_zip)
    return dropped
