"""AWS backends against moto: the local stack's moto server, and moto in-process."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from tests.factories import make_settings

AWS_BACKENDS = "sagemaker,aws-batch,ecs,ec2,local"


@pytest.fixture(params=["server", "in-process"])
def aws_settings(request, tmp_path):
    """Settings for a fresh stage (its own queues, clusters, buckets) on moto, both ways."""
    stage = f"t{uuid.uuid4().hex[:8]}"
    if request.param == "server":
        endpoint = request.getfixturevalue("moto_endpoint")
        # The moto server runs Batch jobs without Docker only when told so (as the local stack does).
        body = json.dumps({"batch": {"use_docker": False}}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/config", data=body, method="POST"))
        yield make_settings(tmp_path, endpoint, JOBPLANE_STAGE=stage, JOBPLANE_BACKENDS=AWS_BACKENDS)
    else:
        from moto import mock_aws

        with mock_aws(config={"batch": {"use_docker": False}}):
            yield make_settings(tmp_path, None, JOBPLANE_STAGE=stage, JOBPLANE_BACKENDS=AWS_BACKENDS)
