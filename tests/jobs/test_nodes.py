"""resources.nodes: validated per backend from its descriptor's max_nodes, cost for every node, logs per node."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from chalicelib.backends import descriptor, descriptors
from chalicelib.backends.aws.sagemaker import SageMakerBackend
from chalicelib.backends.local.backend import LocalBackend
from chalicelib.errors import UnsupportedError, ValidationError
from chalicelib.jobs.model import JobStatus, utcnow
from chalicelib.jobs.spec import parse_spec
from chalicelib.pricing import Price
from jobplane import cli
from tests.factories import job_spec, make_job, make_settings


@pytest.fixture
def alice(api):
    return api.token("alice")


def refusal(spec: dict) -> dict:
    with pytest.raises(ValidationError) as caught:
        parse_spec(spec)
    return caught.value.details[0]


def test_nodes_defaults_to_1_and_round_trips():
    assert parse_spec(job_spec()).resources.nodes == 1
    typed = parse_spec(job_spec(resources={"nodes": 4}))
    assert typed.resources.nodes == 4
    assert type(typed).from_dict(typed.to_dict()).resources.nodes == 4


@pytest.mark.parametrize("bad", [0, -1, 1001, "two", 1.5])
def test_a_bad_node_count_is_400_naming_the_field(bad):
    assert refusal(job_spec(resources={"nodes": bad}))["field"] == "resources.nodes"


def test_every_backend_declares_max_nodes():
    most = {d.name: d.max_nodes for d in descriptors()}
    assert all(isinstance(n, int) and n >= 1 for n in most.values())
    assert most["local"] > 1
    for d in descriptors():
        if d.max_nodes == 1:  # a backend that cannot says why
            assert d.unsupported_features.get("multi_node"), d.name


def test_a_backend_that_cannot_run_n_nodes_refuses_at_submit_with_its_reason():
    single = [d for d in descriptors() if d.max_nodes == 1]
    for d in single:
        spec = job_spec(backend=d.name, image="train:1", resources={"nodes": 2})
        detail = refusal(spec)
        assert detail["field"] == "resources.nodes"
        assert d.unsupported_features["multi_node"] in detail["message"]
        assert "asked for 2" in detail["message"] and "local" in detail["message"]
    detail = refusal(job_spec(resources={"nodes": descriptor("local").max_nodes + 1}))
    assert detail["field"] == "resources.nodes"
    assert f"at most {descriptor('local').max_nodes} nodes" in detail["message"]


def test_auto_accepts_nodes_and_the_planner_check_refuses_a_backend_too_small(tmp_path):
    spec = parse_spec(job_spec(backend="auto", image="train:1", resources={"nodes": 2}))
    assert spec.resources.nodes == 2
    backend = LocalBackend(make_settings(tmp_path))
    backend.validate(parse_spec(job_spec(resources={"nodes": 8})))
    too_many = parse_spec(job_spec(backend="auto", image="x", resources={"nodes": 9}))
    with pytest.raises(UnsupportedError) as caught:
        backend.validate(too_many)
    assert caught.value.details[0]["field"] == "resources.nodes"


def test_cost_is_the_sum_over_the_nodes(tmp_path, monkeypatch):
    backend = LocalBackend(make_settings(tmp_path))
    monkeypatch.setattr(
        backend, "hourly_quote", lambda spec, region, usage=None: ("local", Price(2.5, date(2026, 12, 1), "test"))
    )
    started = utcnow() - timedelta(hours=2)
    one = make_job(spec=job_spec(), started_at=started, finished_at=started + timedelta(hours=2))
    four = make_job(spec=job_spec(resources={"nodes": 4}), started_at=started, finished_at=started + timedelta(hours=2))
    assert backend.estimate_cost(one) == pytest.approx(5.0)
    assert backend.estimate_cost(four) == pytest.approx(20.0)
    sagemaker = SageMakerBackend(make_settings(tmp_path))
    assert sagemaker.node_quote(four.spec, "us-east-1")[1] == sagemaker.hourly_quote(four.spec, "us-east-1")[1]
    assert sagemaker.hourly_quote(four.spec, "us-east-1")[1].usd_per_hour == pytest.approx(
        4 * sagemaker.hourly_quote(one.spec, "us-east-1")[1].usd_per_hour
    )


def test_logs_node_parameter_is_checked_against_the_job(api, alice):
    created = api.request("POST", "/jobs", token=alice, body=job_spec(resources={"nodes": 2})).json_body
    job_id = created["job_id"]
    for bad in ("x", "-1", "1.5"):
        response = api.request("GET", f"/jobs/{job_id}/logs?node={bad}", token=alice)
        assert response.status_code == 400, response.body
        assert response.json_body["error"]["details"][0]["field"] == "node"
    response = api.request("GET", f"/jobs/{job_id}/logs?node=2", token=alice)
    assert response.status_code == 400
    assert response.json_body["error"]["details"] == [{"field": "node", "message": "an integer from 0 to 1"}]
    assert api.request("GET", f"/jobs/{job_id}/logs?node=1", token=alice).status_code == 200
    single = api.request("POST", "/jobs", token=alice, body=job_spec()).json_body["job_id"]
    assert api.request("GET", f"/jobs/{single}/logs?node=1", token=alice).status_code == 400
    assert api.request("GET", f"/jobs/{single}/logs?node=0", token=alice).status_code == 200


def test_the_cli_asks_for_one_nodes_logs(monkeypatch, capsys):
    asked = []

    class Client:
        def logs(self, job_id, offset, node=None):
            asked.append((job_id, offset, node))
            return {"text": f"node {node}\n", "next_offset": 8, "complete": True, "note": None}

    monkeypatch.setattr(cli, "_client", lambda args: Client())
    job_id = "0" * 32  # a full id: named as it is, no listing to resolve it
    args = cli.build_parser().parse_args(["logs", job_id, "--node", "2"])
    assert cli.cmd_logs(args) == 0
    assert asked == [(job_id, 0, 2)]
    assert capsys.readouterr().out == "node 2\n"


def test_a_local_two_node_job_runs_to_succeeded_through_the_api(api, alice):
    from tests.factories import wait_for

    code = "import os; print('rank', os.environ['JOBPLANE_NODE_RANK'])"
    spec = job_spec(command=["python", "-c", code], resources={"nodes": 2})
    job_id = api.request("POST", "/jobs", token=alice, body=spec).json_body["job_id"]

    def ended():
        api.lambda_.invoke(
            "reconcile",
            api.events.generate_cw_event(
                source="aws.events", detail_type="Scheduled Event", detail={}, resources=["arn:aws:events:rule/r"]
            ),
        )
        job = api.request("GET", f"/jobs/{job_id}", token=alice).json_body
        return job["status"] in ("SUCCEEDED", "FAILED") and job

    job = wait_for(ended, timeout=30, what="the job to end")
    assert job["status"] == JobStatus.SUCCEEDED.value, job
    assert job["spec"]["resources"]["nodes"] == 2
    assert api.request("GET", f"/jobs/{job_id}/logs?node=1", token=alice).json_body["text"] == "rank 1\n"
    merged = api.request("GET", f"/jobs/{job_id}/logs", token=alice).json_body["text"]
    assert sorted(merged.splitlines()) == ["[node 0] rank 0", "[node 1] rank 1"]


def test_auto_passes_over_backends_that_cannot_run_the_nodes(tmp_path):
    from chalicelib.planner import plan

    spec = parse_spec({"name": "t", "image": "train:1", "command": ["python", "t.py"], "resources": {"nodes": 4}})
    assert plan(spec, make_settings(tmp_path, JOBPLANE_BACKENDS="ecs,aws-batch"))[0] == "aws-batch"
    with pytest.raises(ValidationError) as caught:
        plan(spec, make_settings(tmp_path, JOBPLANE_BACKENDS="ec2,ecs"))
    # Every candidate's refusal is named, each with its own reason.
    said = " ".join(d["message"] for d in caught.value.details)
    assert "EC2 VMs in a cluster placement group" in said and "ECS has no rendezvous between tasks" in said
