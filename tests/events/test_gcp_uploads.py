"""GCS uploads go through the same trigger rules, dedup and loop protection as S3 uploads."""

from __future__ import annotations

import copy
import sys

from chalicelib.events.gcp import GCS_FINALIZED, handle_gcs_event
from chalicelib.jobs.service import JobService
from tests.factories import gcp_fixture, make_settings

RULES = f"""
rules:
  - name: gcs-datasets
    bucket: gs://sample-bucket
    prefix: folder/
    outputs: [folder/outputs/]
    owner: uploads
    job:
      name: "ingest-{{stem}}"
      backend: local
      command: ["{sys.executable}", "-c", "print(1)", "gs://{{bucket}}/{{key}}"]
      max_runtime_minutes: 5
"""


def test_a_finalized_object_starts_one_job_by_the_rules(tmp_path, memory_store):
    rules = tmp_path / "triggers.yaml"
    rules.write_text(RULES)
    service = JobService(memory_store, make_settings(tmp_path, JOBPLANE_TRIGGERS_FILE=str(rules)))
    data = gcp_fixture("cloudevent_storage_finalized.json")["data"]
    [first] = handle_gcs_event(GCS_FINALIZED, data, service)
    assert (first["outcome"], first["rule"], first["key"]) == ("started", "gcs-datasets", "folder/Test.cs")
    job = service.store.get_job(first["job_id"])
    assert (job.name, job.owner, job.spec.to_dict()["command"][-1]) == (
        "ingest-test",
        "uploads",
        "gs://sample-bucket/folder/Test.cs",
    )
    [again] = handle_gcs_event(GCS_FINALIZED, data, service)  # redelivered: same generation
    assert (again["outcome"], again["job_id"]) == ("duplicate", first["job_id"])
    rewritten = dict(copy.deepcopy(data), generation="1587627537231058")  # the same name written again
    assert handle_gcs_event(GCS_FINALIZED, rewritten, service)[0]["outcome"] == "started"
    output = dict(copy.deepcopy(data), name="folder/outputs/model.pt")
    assert handle_gcs_event(GCS_FINALIZED, output, service) == [
        {"bucket": "sample-bucket", "key": "folder/outputs/model.pt", "outcome": "output"}
    ]


def test_an_s3_rule_never_matches_a_gcs_bucket_of_the_same_name(tmp_path, memory_store):
    rules = tmp_path / "triggers.yaml"
    rules.write_text(RULES.replace("gs://sample-bucket", "sample-bucket"))
    service = JobService(memory_store, make_settings(tmp_path, JOBPLANE_TRIGGERS_FILE=str(rules)))
    data = gcp_fixture("cloudevent_storage_finalized.json")["data"]
    [result] = handle_gcs_event(GCS_FINALIZED, data, service)
    assert result["outcome"] != "started"
    assert list(service.store.iter_active()) == []
