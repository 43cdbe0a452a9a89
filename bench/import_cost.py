"""Cold-start import cost: `import app` vs `import boto3` alone, measured side by side in one run."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = {
    "python (no import)": "pass",
    "import boto3": "import boto3",
    "import app": "import app",
    # What a cold Lambda pays before answering its first API request: the lazy core gets imported too.
    "import app + first request": (
        "import app, chalicelib.deps, chalicelib.jobs.service, chalicelib.store.dynamo, chalicelib.jobs.spec"
    ),
}


def _run(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - start


def measure(rounds: int = 15) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in SNIPPETS}
    for code in SNIPPETS.values():
        _run(code)  # warm the file cache, so every sample measures the same thing
    for _ in range(rounds):
        for name, code in SNIPPETS.items():  # interleaved: machine noise hits every variant alike
            samples[name].append(_run(code))
    return {name: statistics.median(values) for name, values in samples.items()}


def bundle_size() -> tuple[int, int]:
    """(zipped, unzipped) bytes of the Lambda deployment package, built the way `make package` builds it."""
    import os
    import tempfile
    import zipfile

    out = Path(tempfile.mkdtemp(prefix="jobplane-bundle-")) / "package"
    chalice = Path(sys.executable).parent / "chalice"
    env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    subprocess.run(
        [str(chalice), "package", "--pkg-format", "terraform", "--stage", "dev", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env=env,
    )
    bundle = out / "deployment.zip"
    with zipfile.ZipFile(bundle) as archive:
        unzipped = sum(info.file_size for info in archive.infolist())
    return bundle.stat().st_size, unzipped


def main() -> int:
    medians = measure()
    base = medians["python (no import)"]
    boto3 = medians["import boto3"] - base
    print(f"{'variant':30} {'process s':>10} {'import s':>9} {'x boto3':>8}")
    for name, value in medians.items():
        net = value - base
        ratio = "" if name.startswith("python") else f"{net / boto3:8.2f}"
        print(f"{name:30} {value:10.3f} {net:9.3f} {ratio}")
    print(f"import app / import boto3 = {(medians['import app'] - base) / boto3:.2f} (target <= 1.3)")
    zipped, unzipped = bundle_size()
    print(
        f"Lambda bundle: {zipped / 2**20:.1f} MiB zipped, {unzipped / 2**20:.1f} MiB unzipped (limits 50 and 250 MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
