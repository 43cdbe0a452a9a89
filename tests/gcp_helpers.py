"""GCP test helpers: settings for the fake, job submission, payloads in Google's published shapes."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gcp"
STATUS_URI = "gs://jp-status/test"
PROJECT = "my-project"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def gcp_env(endpoint: str) -> dict[str, str]:
    return {
        "JOBPLANE_BACKENDS": "vertex,gce,local",
        "JOBPLANE_GCP_PROJECT": PROJECT,
        "JOBPLANE_GCP_REGION": "us-central1",
        "JOBPLANE_GCE_ZONE": "us-central1-a",
        "JOBPLANE_GCP_STATUS_URI": STATUS_URI,
        "JOBPLANE_GCP_EVENTS_TOPIC": f"projects/{PROJECT}/topics/jobplane-test-events",
        "JOBPLANE_GCP_API_ENDPOINT": endpoint,
    }


def submit(service, **spec):
    from chalicelib.auth import Principal
    from chalicelib.jobs.spec import parse_spec

    body = {"name": "train", "command": ["python", "train.py"], **spec}
    job, _ = service.submit(Principal("alice", False), parse_spec(body))
    return job


def pubsub_data(payload: dict, attributes: dict | None = None, message_id: str = "2070443601311540") -> dict:
    """A messagePublished CloudEvent's data in Google's published shape (push body fixture), new payload."""
    data = copy.deepcopy(load("pubsub_push_body.json"))
    data["message"]["data"] = base64.b64encode(json.dumps(payload).encode()).decode()
    data["message"]["attributes"] = attributes or {}
    data["message"]["messageId"] = data["message"]["message_id"] = message_id
    return data
