"""Run every benchmark and print its figures (counts first: they do not depend on machine noise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cold_start  # noqa: E402
import cost  # noqa: E402
import dynamodb_requests  # noqa: E402
import endpoints  # noqa: E402
import import_cost  # noqa: E402
import local_load  # noqa: E402
import reconcile_cost  # noqa: E402
import vm_stop  # noqa: E402


def main() -> int:
    print("== DynamoDB requests per job lifecycle (moto, botocore before-call hooks) ==")
    dynamodb_requests.main()
    print("\n== Cold-start import cost (median of interleaved fresh processes) ==")
    import_cost.main()
    print("\n== Cold start served: a fresh process's first state event and API requests (moto, loopback GCP fake) ==")
    cold_start.main([])
    print("\n== A VM job's end to its VM's stop request (EC2 on moto) ==")
    vm_stop.main()
    print("\n== Control-plane cost per 1,000 jobs ==")
    cost.main()
    print("\n== The local stack: its journal, and load over loopback (one client on the same machine) ==")
    local_load.main()
    print("\n== Inference endpoints: DynamoDB requests, provider calls per tick, invocation overhead ==")
    endpoints.main([])
    print("\n== The dashboard's refresh with 1,000 jobs on the local stack (DynamoDB counted where it arrives) ==")
    # Its own process: it runs a local stack in-process (environment, a counter wrapped around the emulator).
    subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "dashboard.py")], check=True)
    print("\n== Reconcile at scale: one tick of the real AWS backends on moto, calls counted (10,000 takes long) ==")
    reconcile_cost.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
