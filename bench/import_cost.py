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
    return 0


if __name__ == "__main__":
    sys.exit(main())
