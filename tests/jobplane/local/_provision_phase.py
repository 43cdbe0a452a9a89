"""One life of the local stack's emulator on a state folder: provision the cloud backends, report what was made."""

import json
import sys

sys.path.insert(0, sys.argv[2])
from pathlib import Path

import boto3

from chalicelib.config import Settings
from jobplane.local.cloud import provision
from jobplane.local.emulator import start_moto

emulator, endpoint = start_moto(state=Path(sys.argv[1]))
env = {"AWS_ENDPOINT_URL": endpoint, "JOBPLANE_STAGE": "local", "JOBPLANE_BACKENDS": "local,ec2,aws-batch"}
settings = Settings.from_env({**env, "JOBPLANE_LOCAL_STATE_DIR": sys.argv[1], "JOBPLANE_LOCAL_RUN_AS": "self"})
done = provision(settings, endpoint, "us-east-1")
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
if sys.argv[3] == "write":
    s3.put_object(Bucket=settings.artifacts_bucket, Key="kept", Body=b"x")
kept = s3.get_object(Bucket=settings.artifacts_bucket, Key="kept")["Body"].read().decode()
print(json.dumps({"created": done.created, "env": done.env, "kept": kept, "bucket": settings.artifacts_bucket}))
emulator.stop()
