"""Multi-node jobs on the local backend: N real processes with the rendezvous variables, one state for the group."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from chalicelib.backends.base import Handle
from chalicelib.backends.local.backend import LocalBackend, pid_alive
from chalicelib.jobs.model import FailureKind, JobStatus
from tests.factories import job_spec, make_job, make_settings, wait_for

PY = sys.executable
SLEEP = "import time; time.sleep(120)"


@pytest.fixture
def backend(tmp_path, monkeypatch):
    monkeypatch.setenv("JOBPLANE_KILL_GRACE_SECONDS", "1")  # the runner reads it at start: stops are quick
    return LocalBackend(make_settings(tmp_path))


def multi_job(code_or_argv, nodes=2, **spec):
    command = code_or_argv if isinstance(code_or_argv, list) else [PY, "-c", code_or_argv]
    resources = {"nodes": nodes, **spec.pop("resources", {})}
    return make_job(spec=job_spec("multi", command=command, resources=resources, **spec), named=True)


def run_to_end(backend, job):
    backend.launch(job)
    return wait_for(
        lambda: (obs := backend.describe(Handle.of(job))) is not None and obs.status.terminal and obs,
        timeout=60,
        what="the job to end",
    )


def running_pids(backend, job) -> list[int]:
    """The node processes' ids once every node runs (the runner records them all at once)."""
    path = backend.job_dir(job.native_id) / "runner.json"
    runner = wait_for(lambda: path.exists() and json.loads(path.read_text()), what="runner.json")
    assert backend.describe(Handle.of(job)).status is JobStatus.RUNNING
    return runner["pids"]


def gone(pids) -> bool:
    return not any(pid_alive(pid) for pid in pids)


ENV = (
    "import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('JOBPLANE_') "
    "and k.endswith(('NODES', 'RANK', 'ADDR', 'PORT', 'PER_NODE'))}))"
)


def test_each_node_is_a_process_with_its_rank_and_the_same_master(backend):
    job = multi_job(ENV, nodes=3)
    obs = run_to_end(backend, job)
    assert obs.status is JobStatus.SUCCEEDED and obs.exit_code == 0
    folder = backend.job_dir(job.native_id)
    seen = [json.loads((folder / f"node-{rank}.log").read_text()) for rank in range(3)]
    assert [env["JOBPLANE_NODE_RANK"] for env in seen] == ["0", "1", "2"]
    assert {env["JOBPLANE_NUM_NODES"] for env in seen} == {"3"}
    assert {env["JOBPLANE_MASTER_ADDR"] for env in seen} == {"127.0.0.1"}
    assert {env["JOBPLANE_GPUS_PER_NODE"] for env in seen} == {"0"}
    (port,) = {env["JOBPLANE_MASTER_PORT"] for env in seen}
    assert 1024 < int(port) < 65536


def test_a_single_node_job_sees_no_node_variables(backend):
    job = make_job(spec=job_spec("one", command=[PY, "-c", ENV]), named=True)
    assert run_to_end(backend, job).status is JobStatus.SUCCEEDED
    assert json.loads((backend.job_dir(job.native_id) / "output.log").read_text()) == {}


def test_logs_per_node_and_merged_with_each_line_marked(backend):
    code = "import os; r = os.environ['JOBPLANE_NODE_RANK']; print(f'hello from {r}'); print(f'bye from {r}')"
    job = multi_job(code)
    run_to_end(backend, job)
    handle = Handle.of(job)
    assert backend.logs(handle, node=1).text == "hello from 1\nbye from 1\n"
    assert backend.logs(handle, node=0).text == "hello from 0\nbye from 0\n"
    chunk = backend.logs(handle, node=1, offset=len("hello from 1\n"))
    assert chunk.text == "bye from 1\n" and chunk.complete
    merged = backend.logs(handle).text.splitlines()
    assert sorted(merged) == sorted(
        ["[node 0] hello from 0", "[node 0] bye from 0", "[node 1] hello from 1", "[node 1] bye from 1"]
    )
    # Each node's lines stay in their order in the merged log.
    assert merged.index("[node 1] hello from 1") < merged.index("[node 1] bye from 1")


def test_the_allreduce_example_sums_over_tcp_between_the_nodes(backend):
    job = multi_job([PY, "-m", "examples.allreduce", "--rounds", "4", "--size", "5"], nodes=3)
    obs = run_to_end(backend, job)
    assert obs.status is JobStatus.SUCCEEDED, backend.logs(Handle.of(job)).text
    for rank in range(3):
        text = backend.logs(Handle.of(job), node=rank).text
        # sum over ranks of (rank + 1) * 1 + round: 6 + 3 * 3 in the last round (3)
        assert f"node {rank}: 4 all-reduce rounds of 5 numbers agree: sum[0]=15.0" in text


def test_a_failing_node_fails_the_job_naming_it_and_stops_the_others(backend):
    code = "import os, sys, time; r = int(os.environ['JOBPLANE_NODE_RANK']); time.sleep(1.5) if r else time.sleep(120)"
    code += "; sys.exit(3)"
    job = multi_job(code)
    backend.launch(job)
    pids = running_pids(backend, job)
    obs = run_to_end(backend, job)
    assert obs.status is JobStatus.FAILED and obs.failure_kind is FailureKind.USER_ERROR
    assert obs.exit_code == 3
    assert obs.reason == "node 1 of 2 failed: exit code 3; node 0 stopped with it"
    assert gone(pids)
    assert "jobplane: node 1 of 2 failed: exit code 3" in backend.logs(Handle.of(job)).text


def test_killing_one_node_fails_the_job_and_stops_the_other(backend):
    job = multi_job(SLEEP)
    backend.launch(job)
    pids = running_pids(backend, job)
    os.kill(pids[1], signal.SIGKILL)
    obs = run_to_end(backend, job)
    assert obs.status is JobStatus.FAILED
    assert obs.exit_code == 137
    assert obs.reason.startswith("node 1 of 2 failed: killed by signal SIGKILL (exit code 137)")
    assert gone(pids)


def test_cancel_stops_every_node(backend):
    job = multi_job(SLEEP, nodes=3)
    backend.launch(job)
    pids = running_pids(backend, job)
    backend.cancel(Handle.of(job))
    obs = run_to_end(backend, job)
    assert obs.status is JobStatus.CANCELLED
    assert gone(pids)


def test_nodes_left_running_by_a_dead_runner_are_listed_and_all_stopped(backend):
    """The runner killed -9: the job is lost, its nodes run on; the reaper's view lists the group as running
    and stopping it (release or the sweep) stops every node, not only the first."""
    job = multi_job(SLEEP)
    backend.launch(job)
    pids = running_pids(backend, job)
    folder = backend.job_dir(job.native_id)
    runner_pid = int((folder / "runner.pid").read_text())
    os.kill(runner_pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(runner_pid), what="the runner to die")
    assert backend.describe(Handle.of(job)).status is JobStatus.FAILED
    assert all(pid_alive(pid) for pid in pids)
    (listed,) = [r for r in backend.list_managed() if r.job_id == job.job_id]
    assert listed.running
    os.kill(pids[0], signal.SIGKILL)  # one node gone, one left: the group still counts as running
    wait_for(lambda: not pid_alive(pids[0]), what="node 0 to die")
    (listed,) = [r for r in backend.list_managed() if r.job_id == job.job_id]
    assert listed.running
    backend.release(Handle.of(job), "the job is terminal")
    wait_for(lambda: gone(pids), what="every node to stop")
    (listed,) = [r for r in backend.list_managed() if r.job_id == job.job_id]
    assert not listed.running


def test_a_node_that_cannot_start_fails_the_job_and_starts_no_group(backend):
    job = multi_job(["/nonexistent/program"])
    obs = run_to_end(backend, job)
    assert obs.status is JobStatus.FAILED and obs.exit_code == 127
    assert obs.reason.startswith("could not start '/nonexistent/program' on node 0")


def test_a_runner_told_to_stop_interrupts_the_whole_group_so_a_retry_starts_every_node_again(backend):
    """SIGTERM without a cancel request (the machine going away): every node stops and the report is
    INTERRUPTED, which `retries: {on: [interruption]}` relaunches as one new attempt of the whole group."""
    job = multi_job(SLEEP)
    backend.launch(job)
    pids = running_pids(backend, job)
    runner_pid = int((backend.job_dir(job.native_id) / "runner.pid").read_text())
    os.kill(runner_pid, signal.SIGTERM)
    obs = run_to_end(backend, job)
    assert obs.status is JobStatus.FAILED and obs.failure_kind is FailureKind.INTERRUPTED
    assert gone(pids)


def test_setup_runs_once_on_this_machine_before_every_node_starts(backend):
    code = "import os; print(open('prepared').read().strip(), os.environ['JOBPLANE_NODE_RANK'])"
    job = multi_job(code, setup=[[PY, "-c", "open('prepared', 'a').write('ready\\n')"]])
    assert run_to_end(backend, job).status is JobStatus.SUCCEEDED
    assert (backend.job_dir(job.native_id) / "work" / "prepared").read_text() == "ready\n"
    assert backend.logs(Handle.of(job), node=1).text == "ready 1\n"
