"""The scriptable CLI: --output, full values in a pipe, options after the subcommand, jobs by name or prefix,
validate, submit --dry-run, profiles, completion, and Ctrl-C during --wait."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from jobplane import cli

LONG_NAME = "a-job-name-long-enough-to-be-cut-at-eighty-columns-by-a-table-that-thinks-it-is-a-terminal"


def job(n: int, name: str | None = None, status: str = "RUNNING") -> dict:
    return {
        "job_id": f"{n:x}" * 32 if n < 16 else f"{n:032x}",
        "name": name or f"job-{n}",
        "owner": "alice",
        "status": status,
        "backend": "local",
        "created_at": "2026-12-02T10:00:00+00:00",
        "cost_estimate_usd": None,
    }


class Transport:
    """The HTTP layer's methods the commands call, answering from a list of jobs."""

    def __init__(self, jobs, pages=1):
        self.jobs = jobs
        self.calls = []
        self.pages = pages

    def list(self, status=None, limit=20, next_token=None):
        self.calls.append(("list", limit, next_token))
        return {"jobs": self.jobs, "next_token": None}

    def get(self, job_id):
        self.calls.append(("get", job_id))
        return next(j for j in self.jobs if j["job_id"] == job_id)

    def events(self, job_id):
        return [{"at": "2026-12-02T10:00:00+00:00", "from": None, "to": "QUEUED", "reason": "r", "source": "api"}]


@pytest.fixture
def jobs(monkeypatch):
    transport = Transport([job(1, LONG_NAME), job(2, "twin"), job(3, "twin")])
    monkeypatch.setattr(cli, "_client", lambda args: transport)
    return transport


def test_list_output_json_ids_and_a_table_with_full_values_in_a_pipe(jobs, capsys):
    assert cli.main(["list", "--output", "json"]) == 0
    assert [j["job_id"] for j in json.loads(capsys.readouterr().out)] == [j["job_id"] for j in jobs.jobs]
    assert cli.main(["list", "-o", "ids"]) == 0
    assert capsys.readouterr().out.split("\n") == [*(j["job_id"] for j in jobs.jobs), ""]
    assert cli.main(["list"]) == 0
    table = capsys.readouterr().out
    assert jobs.jobs[0]["job_id"] in table and LONG_NAME in table  # not cut to 80 columns: stdout is no terminal
    assert max(len(line) for line in table.splitlines()) > 120


def test_global_options_are_accepted_after_the_subcommand(monkeypatch, capsys):
    made = []

    class Http(Transport):
        def __init__(self, api, token, timeout=30.0):
            super().__init__([job(1)])
            made.append((api, token))

    monkeypatch.setattr(cli, "Client", Http)
    monkeypatch.delenv("JOBPLANE_API", raising=False)
    monkeypatch.delenv("JOBPLANE_TOKEN", raising=False)
    assert cli.main(["list", "--api", "http://after.test", "--token", "t1", "-o", "ids"]) == 0
    assert cli.main(["--api", "http://before.test", "--token", "t2", "list", "-o", "ids"]) == 0
    assert cli.main(["--api", "http://before.test", "list", "--token", "t3", "-o", "ids"]) == 0
    assert made == [("http://after.test", "t1"), ("http://before.test", "t2"), ("http://before.test", "t3")]


def test_profiles_come_from_the_config_file_and_profile_picks_one(monkeypatch, tmp_path, capsys):
    made = []

    class Http(Transport):
        def __init__(self, api, token, timeout=30.0):
            super().__init__([job(1)])
            made.append((api, token, timeout))

    config = tmp_path / "config.toml"
    config.write_text(
        '[profiles.default]\napi = "http://default.test"\ntoken = "d"\n'
        '[profiles.prod]\napi = "https://prod.test"\ntoken = "p"\ntimeout = 9\n'
    )
    monkeypatch.setattr(cli, "Client", Http)
    monkeypatch.setenv("JOBPLANE_CONFIG", str(config))
    monkeypatch.delenv("JOBPLANE_PROFILE", raising=False)
    monkeypatch.delenv("JOBPLANE_API", raising=False)
    monkeypatch.delenv("JOBPLANE_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["list", "-o", "ids"]) == 0  # the default profile
    assert cli.main(["list", "--profile", "prod", "-o", "ids"]) == 0
    monkeypatch.setenv("JOBPLANE_API", "http://env.test")
    assert cli.main(["list", "-o", "ids"]) == 0  # the environment beats the default profile ...
    assert cli.main(["--profile", "prod", "list", "-o", "ids"]) == 0  # ... and a named profile beats it
    assert made == [
        ("http://default.test", "d", 30.0),
        ("https://prod.test", "p", 9.0),
        ("http://env.test", "d", 30.0),
        ("https://prod.test", "p", 9.0),
    ]
    capsys.readouterr()
    assert cli.main(["list", "--profile", "nope"]) == 2
    assert capsys.readouterr().err == f"error: no profile 'nope' in {config} (profiles: default, prod)\n"


def test_a_job_is_named_by_prefix_or_unique_name_and_an_ambiguous_one_lists_the_candidates(jobs, capsys):
    first = jobs.jobs[0]["job_id"]
    assert cli.main(["status", first[:5], "-o", "ids"]) == 0
    assert capsys.readouterr().out == f"{first}\n"
    assert cli.main(["status", LONG_NAME, "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["job_id"] == first
    assert cli.main(["status", "twin"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'twin' names 2 jobs" in err
    assert jobs.jobs[1]["job_id"] in err and jobs.jobs[2]["job_id"] in err and "give more of the id" in err
    assert cli.main(["status", "absent"]) == 2
    assert "no job of yours has the id, id prefix or name 'absent'" in capsys.readouterr().err


def test_validate_checks_a_spec_here_and_names_the_field(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("name: ok\nbackend: local\ncommand: [echo, hi]\nresources: {gpus: 0}\n")
    assert cli.main(["validate", str(good)]) == 0
    assert f"{good}: a valid job spec: 'ok', backend local, no GPU" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: ok\nbackend: local\ncommand: [echo, hi]\nresources: {gpus: -2}\n")
    assert cli.main(["validate", str(bad)]) == 1
    assert "resources.gpus" in capsys.readouterr().err


def test_submit_dry_run_prints_the_backend_the_reason_and_the_request(api, http_for, monkeypatch, tmp_path, capsys):
    http, sent = http_for(api.token("alice"))
    monkeypatch.setattr(cli, "_client", lambda args: http)
    path = tmp_path / "job.yaml"
    path.write_text("name: planned\nbackend: local\ncommand: [python, train.py]\n")
    assert cli.main(["submit", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was stored or launched; this job would run on local" in out
    assert "local start runner:" in out and '"python",' in out
    assert cli.main(["submit", str(path), "--dry-run", "-o", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["backend"] == "local" and plan["request"]["calls"][0]["request"]["command"] == ["python", "train.py"]
    assert sent == ["POST /jobs?dry_run=true"] * 2 and http.list()["jobs"] == []


def test_submit_output_ids_and_json_print_the_job_alone(api, http_for, monkeypatch, tmp_path, capsys):
    http, _ = http_for(api.token("alice"))
    monkeypatch.setattr(cli, "_client", lambda args: http)
    path = tmp_path / "job.yaml"
    path.write_text("name: scripted\nbackend: local\ncommand: [sleep, '60']\n")
    assert cli.main(["submit", str(path), "--output", "ids"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert len(job_id) == 32 and http.get(job_id)["name"] == "scripted"
    assert cli.main(["submit", str(path), "-o", "json"]) == 0
    submitted = json.loads(capsys.readouterr().out)
    assert submitted["name"] == "scripted" and submitted["job_id"] != job_id
    for one in (job_id, submitted["job_id"]):
        http.cancel(one)


def test_ctrl_c_while_waiting_says_the_job_keeps_running_and_how_to_follow_it(monkeypatch, capsys, tmp_path):
    running = job(7)

    class Waiting(Transport):
        def submit(self, text, idempotency_key=None, yaml=True, dry_run=False):
            return running

        def get(self, job_id):
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_client", lambda args: Waiting([running]))
    path = tmp_path / "job.yaml"
    path.write_text("name: job-7\nbackend: local\ncommand: [sleep, '600']\n")
    for output in ("table", "ids"):
        assert cli.main(["submit", str(path), "--wait", "-o", output]) == 130
        err = capsys.readouterr().err
        assert err == (
            f"stopped waiting: job {running['job_id']} keeps running; follow it with "
            f"`jobplane logs {running['job_id']} --follow` or `jobplane status {running['job_id']}`\n"
        )


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_completes_subcommands_nested_ones_and_options(tmp_path):
    script = tmp_path / "jobplane.bash"
    script.write_text(cli.completion_script(cli.build_parser(), "bash"))

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (
            f'source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _jobplane; echo "${{COMPREPLY[*]}}"'
        )
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    assert complete("jobplane", "tok") == ["token"]
    assert sorted(complete("jobplane", "token", "")) == ["create", "list", "revoke"]
    assert complete("jobplane", "list", "--out") == ["--output"]
    assert complete("jobplane", "list", "--output", "j") == ["json"]
    assert complete("jobplane", "--api", "x", "endpoint", "inv") == ["invoke"]
    assert "--dry-run" in complete("jobplane", "submit", "--")
    zsh = cli.completion_script(cli.build_parser(), "zsh")
    assert zsh.startswith("#compdef jobplane\nautoload -U +X bashcompinit && bashcompinit\n")


def test_completion_prints_the_script(capsys):
    assert cli.main(["completion", "bash"]) == 0
    assert "complete -o default -F _jobplane jobplane" in capsys.readouterr().out
