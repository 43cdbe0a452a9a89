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
}
# A first request or event served for real, not its imports: bench/cold_start.py.


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


def bundle_sizes() -> dict[str, tuple[int, int]]:
    """{zip name: (zipped, unzipped) bytes} of the function zip and the layer, built by `make package`."""
    import os
    import tempfile
    import zipfile

    out = Path(tempfile.mkdtemp(prefix="jobplane-bundle-")) / "package"
    subprocess.run(
        ["make", "package", "STAGE=dev", f"PACKAGE_DIR={out}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env=os.environ,
    )
    sizes = {}
    for name in ("deployment.zip", "layer-deployment.zip"):
        with zipfile.ZipFile(out / name) as archive:
            sizes[name] = ((out / name).stat().st_size, sum(info.file_size for info in archive.infolist()))
    return sizes


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
    sizes = bundle_sizes()
    (code, code_unzipped), (layer, layer_unzipped) = sizes["deployment.zip"], sizes["layer-deployment.zip"]
    print(
        f"Lambda function zip: {code / 2**20:.2f} MiB zipped, {code_unzipped / 2**20:.2f} MiB unzipped "
        "(target <= 5 MiB)"
    )
    print(
        f"Lambda layer (dependencies, no boto3/botocore): {layer / 2**20:.2f} MiB zipped, "
        f"{layer_unzipped / 2**20:.2f} MiB unzipped (limits 50 and 250 MiB, function and layers together)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
