"""From a VM job's terminal event to its VM's stop request: counted inside the same invocation.

The reaper's sweep is the second way a GPU stops; this measures the first: the invocation that
applies the terminal event also asks EC2 to terminate the instance (moto, botocore hooks).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(jobs: int = 5) -> dict:
    import boto3

    from chalicelib.auth import Principal
    from chalicelib.config import Settings
    from chalicelib.jobs.model import EventSource, FailureKind, JobEvent, JobStatus
    from chalicelib.jobs.service import JobService
    from chalicelib.jobs.spec import parse_spec
    from chalicelib.store.dynamo import DynamoJobStore
    from jobplane.local.emulator import start_moto

    server, endpoint = start_moto()
    try:
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=endpoint)
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        boto3.client("iam", region_name="us-east-1", endpoint_url=endpoint).create_instance_profile(
            InstanceProfileName="bench-ec2-job"
        )
        boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint).create_bucket(Bucket="bench-artifacts")
        settings = Settings.from_env(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "JOBPLANE_TABLE_PREFIX": "vmstop",
                "JOBPLANE_BACKENDS": "ec2",
                "JOBPLANE_EC2_AMI": ami,
                "JOBPLANE_EC2_INSTANCE_PROFILE": "bench-ec2-job",
                "JOBPLANE_ARTIFACTS_BUCKET": "bench-artifacts",
                "JOBPLANE_LOCAL_STATE_DIR": tempfile.mkdtemp(),
            }
        )
        store = DynamoJobStore(settings)
        store.create_tables()
        service = JobService(store, settings)
        calls: list[tuple[str, float]] = []
        client = service.backend("ec2").client()
        client.meta.events.register(
            "before-call.ec2.TerminateInstances", lambda **_: calls.append(("TerminateInstances", time.perf_counter()))
        )
        rows = []
        for i in range(jobs):
            spec = parse_spec(
                {
                    "name": f"vm-{i}",
                    "backend": "ec2",
                    "image": "train:1",
                    "command": ["python", "t.py"],
                    "resources": {"gpus": 1, "gpu_type": "A10G"},
                }
            )
            job, _ = service.submit(Principal("bench"), spec)
            calls.clear()
            started = time.perf_counter()
            service.apply_event(
                JobEvent(
                    job.job_id,
                    JobStatus.FAILED,
                    EventSource.BACKEND,
                    reason="exit code 1",
                    failure_kind=FailureKind.USER_ERROR,
                )
            )
            ended = time.perf_counter()
            stops = [t for name, t in calls if name == "TerminateInstances"]
            rows.append(
                {
                    "stop_requests": len(stops),
                    "inside": all(started <= t <= ended for t in stops),
                    "ms": (stops[0] - started) * 1000 if stops else None,
                }
            )
        return {"rows": rows}
    finally:
        server.stop()


def main() -> int:
    rows = measure()["rows"]
    inside = sum(1 for r in rows if r["stop_requests"] == 1 and r["inside"])
    print(
        f"VM jobs ended: {len(rows)}; stop request sent inside the terminal event's own invocation: "
        f"{inside}/{len(rows)} (target: all)"
    )
    print(
        "ms from the event's arrival to the TerminateInstances call: "
        + ", ".join(f"{r['ms']:.1f}" for r in rows if r["ms"] is not None)
    )
    return 0 if inside == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
