"""Reconcile on the kubernetes backend: API requests and wall time of describe_many against one describe per job,
for 10 to 1,000 running jobs, the official client against the loopback API server (tests/fakek8s.py)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = (10, 100, 1_000)


def run(sizes: tuple[int, ...]) -> None:
    os.environ.setdefault("JOBPLANE_LOCAL_RUN_AS", "self")
    from chalicelib.backends.base import Handle
    from chalicelib.backends.kubernetes.backend import KubernetesBackend
    from tests.factories import k8s_env, make_job, make_settings
    from tests.fakek8s import FakeKubernetes

    print(f"{'jobs':>6} {'many: requests':>15} {'many: s':>8} {'each: requests':>15} {'each: s':>8} {'ratio':>6}")
    for size in sizes:
        fake = FakeKubernetes()
        with tempfile.TemporaryDirectory() as folder:
            fake.kubeconfig(Path(folder))
            backend = KubernetesBackend(make_settings(Path(folder), **k8s_env(fake)))
            handles = []
            for _ in range(size):
                job = make_job("kubernetes", {"image": "busybox:1.36"})
                handles.append(replace(Handle.of(job), native_id=backend.launch(job).native_id))
                fake.start(handles[-1].native_name)
            fake.requests.clear()
            start = time.perf_counter()
            many = backend.describe_many(handles)
            many_s, many_n = time.perf_counter() - start, len(fake.requests)
            fake.requests.clear()
            start = time.perf_counter()
            each = {h.job_id: backend.describe(h) for h in handles}
            each_s, each_n = time.perf_counter() - start, len(fake.requests)
            assert many == each, "describe_many must answer what describe answers"
        fake.close()
        print(f"{size:>6} {many_n:>15} {many_s:>8.2f} {each_n:>15} {each_s:>8.2f} {each_n / many_n:>6.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    run(tuple(int(s) for s in parser.parse_args().sizes.split(",")))
