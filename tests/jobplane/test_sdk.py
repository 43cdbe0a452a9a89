"""The Python SDK (`from jobplane import Client`) over the real app: typed results, pages, names, errors."""

from __future__ import annotations

import json
import socket

import pytest

from jobplane import (
    AmbiguousJob,
    Client,
    Conflict,
    ConnectionFailed,
    InvalidRequest,
    Job,
    NotConfigured,
    NotFound,
    SpecError,
    Unauthenticated,
    WaitTimeout,
)
from jobplane.sdk import read_profile, read_spec
from jobplane.sdk_errors import BackendFailed, PayloadTooLarge, ServerError, api_error


@pytest.fixture
def sdk(http_for):
    """sdk(token) -> (the SDK with its HTTP answered by the app in this process, the requests it sent)."""

    def make(token):
        http, sent = http_for(token)
        return Client(transport=http), sent

    return make


def spec(name: str, **extra) -> dict:
    return {"name": name, "backend": "local", "command": ["sleep", "60"], **extra}


@pytest.fixture
def alice(api, sdk):
    client, sent = sdk(api.token("alice"))
    yield client, sent
    for job in client.list(page_size=100):
        if not job.terminal:
            client.cancel(job)


def test_submit_takes_a_dict_yaml_text_or_a_path_and_returns_typed_jobs(alice, tmp_path):
    client, _ = alice
    from_dict = client.submit(spec("from-dict"))
    from_text = client.submit("name: from-text\nbackend: local\ncommand: [sleep, '60']\n")
    path = tmp_path / "job.yaml"
    path.write_text("name: from-path\nbackend: local\ncommand: [sleep, '60']\n")
    from_path = client.submit(path)
    from_str_path = client.submit(str(path))
    assert all(isinstance(j, Job) for j in (from_dict, from_text, from_path, from_str_path))
    assert [from_dict.name, from_text.name, from_path.name, from_str_path.name] == [
        "from-dict",
        "from-text",
        "from-path",
        "from-path",
    ]
    got = client.get(from_dict.job_id)
    assert (got.job_id, got.owner, got.backend, got.spec["command"]) == (
        from_dict.job_id,
        "alice",
        "local",
        ["sleep", "60"],
    )
    assert got.raw["job_id"] == got.job_id and not got.terminal
    assert [e.to for e in client.events(got)][0] == "QUEUED"


def test_list_is_an_iterator_that_reads_a_page_only_when_it_gets_there(alice):
    client, sent = alice
    ids = [client.submit(spec(f"job-{i}")).job_id for i in range(5)]
    sent.clear()
    jobs = client.list(page_size=2)
    first = next(jobs)
    assert first.job_id == ids[-1] and len(sent) == 1  # newest first; one page read so far
    rest = list(jobs)
    assert [first.job_id, *(j.job_id for j in rest)] == ids[::-1]
    assert len(sent) == 3 and all(s.startswith("GET /jobs?") for s in sent)
    assert [j.job_id for j in client.list(page_size=2, limit=3)] == ids[::-1][:3]
    pages = list(client.pages(page_size=2))
    assert [len(p.jobs) for p in pages] == [2, 2, 1] and pages[-1].next_token is None


def test_a_job_is_named_by_id_unique_prefix_or_unique_name(alice):
    client, _ = alice
    one = client.submit(spec("only-one"))
    twins = [client.submit(spec("twin")) for _ in range(2)]
    assert client.get(one.job_id[:6]).job_id == one.job_id
    assert client.get("only-one").job_id == one.job_id
    assert client.cancel("only-one").job_id == one.job_id
    with pytest.raises(AmbiguousJob) as info:
        client.get("twin")
    assert sorted(c.split()[0] for c in info.value.candidates) == sorted(t.job_id for t in twins)
    assert "'twin' names 2 jobs" in info.value.message
    with pytest.raises(NotFound, match="no job of yours has the id, id prefix or name 'nothing-like-it'"):
        client.get("nothing-like-it")


def test_the_apis_error_codes_become_the_sdks_exceptions(sdk, alice):
    client, _ = alice
    with pytest.raises(NotFound) as missing:
        client.get("0" * 32)
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(InvalidRequest) as bad:
        client.submit(spec("bad", resources={"gpus": -1}))
    assert bad.value.code == "invalid_request" and bad.value.details[0]["field"] == "resources.gpus"
    client.submit(spec("keyed"), idempotency_key="k1")
    with pytest.raises(Conflict) as reused:
        client.submit(spec("other"), idempotency_key="k1")
    assert reused.value.code == "idempotency_key_reused"
    stranger, _ = sdk("not-a-token")
    with pytest.raises(Unauthenticated) as unauth:
        list(stranger.list())
    assert unauth.value.status == 401 and "jobplane token create" in unauth.value.hint


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (409, {"error": {"code": "conflict", "message": "terminal"}}, Conflict),
        (502, {"error": {"code": "model_error", "message": "raised"}}, BackendFailed),
        (413, {"error": {"code": "payload_too_large", "message": "big"}}, PayloadTooLarge),
        (400, {"error": {"code": "something_new", "message": "?"}}, InvalidRequest),  # unknown code: by status
        (500, "<html>oops</html>", ServerError),
        (405, {"error": {"code": "method_not_allowed", "message": "no"}}, InvalidRequest),
    ],
)
def test_error_answers_map_by_code_then_status(status, body, cls):
    error = api_error(status, body)
    assert type(error) is cls and error.status == status


def test_wait_gives_up_after_its_timeout_and_says_the_job_keeps_running(alice):
    client, _ = alice
    job = client.submit(spec("slow"))
    with pytest.raises(WaitTimeout) as info:
        client.wait(job, timeout=0, interval=0)
    assert info.value.job.job_id == job.job_id
    assert "it keeps running" in str(info.value)


def test_dry_run_names_the_backend_the_reason_and_the_request_and_stores_nothing(alice):
    client, sent = alice
    plan = client.dry_run(spec("planned", env={"LR": "0.1"}))
    assert plan.backend == "local" and plan.planner_reason
    assert plan.candidates[0].startswith("local")
    [call] = plan.request["calls"]
    assert call["operation"] == "start runner"
    assert call["request"]["command"] == ["sleep", "60"] and call["request"]["env"]["LR"] == "0.1"
    assert sent[-1] == "POST /jobs?dry_run=true"
    assert list(client.list()) == []  # nothing stored, nothing launched


def test_a_refused_connection_is_one_error_naming_the_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", "t", timeout=5)
    with pytest.raises(ConnectionFailed) as info:
        client.get("0" * 32)
    assert f"no answer from the API at http://127.0.0.1:{port}" in info.value.message
    assert "jobplane local up" in info.value.hint


def test_from_env_and_from_config_profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("JOBPLANE_API", "http://env.test")
    monkeypatch.setenv("JOBPLANE_TOKEN", "env-token")
    monkeypatch.delenv("JOBPLANE_PROFILE", raising=False)
    client = Client.from_env()
    assert client.http.api == "http://env.test"
    assert client.http.session.headers["Authorization"] == "Bearer env-token"
    (tmp_path / "prod.token").write_text("prod-token\n")
    config = tmp_path / "config.toml"
    config.write_text(
        'default_profile = "dev"\n'
        '[profiles.dev]\napi = "http://dev.test"\ntoken = "dev-token"\n'
        f'[profiles.prod]\napi = "https://prod.test/api"\ntoken_file = "{tmp_path / "prod.token"}"\ntimeout = 5\n'
    )
    dev = Client.from_config(path=config)
    assert dev.http.api == "http://dev.test"
    prod = Client.from_config("prod", config)
    assert prod.http.api == "https://prod.test/api" and prod.http.timeout == 5.0
    assert prod.http.session.headers["Authorization"] == "Bearer prod-token"
    monkeypatch.setenv("JOBPLANE_PROFILE", "prod")
    assert read_profile(path=config)["name"] == "prod"
    with pytest.raises(NotConfigured, match=r"no profile 'staging' in .*config.toml \(profiles: dev, prod\)"):
        Client.from_config("staging", config)
    config.write_text('[profiles.x]\napi = "http://x"\ntokn = "typo"\n')
    with pytest.raises(NotConfigured, match="unknown keys tokn"):
        Client.from_config("x", config)
    config.write_text("[profiles\n")
    with pytest.raises(NotConfigured, match="not a valid TOML config file"):
        Client.from_config("x", config)


def test_no_address_or_token_is_one_error_saying_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.delenv("JOBPLANE_API", raising=False)
    monkeypatch.delenv("JOBPLANE_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotConfigured, match="no API address") as info:
        Client.from_env()
    assert "JOBPLANE_API" in info.value.hint


def test_spec_files_are_read_with_errors_that_name_the_file_line_and_column(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        read_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="is a folder, not a spec file"):
        read_spec(tmp_path)
    client = Client("http://unused.test", "t")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ncommand: [echo, hi\n")
    with pytest.raises(SpecError, match=r"broken.yaml: invalid YAML at line 3, column 1"):
        client.submit(broken)
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: a\ncommand: [echo]\nname: b\n")
    with pytest.raises(SpecError, match=r"line 3, column 1: found duplicate key 'name' \(first at line 1\)"):
        client.submit(twice)
    as_json = tmp_path / "twice.json"
    as_json.write_text('{"name": "a",\n "name": "b"}')
    with pytest.raises(SpecError, match="found duplicate key 'name'"):
        client.submit(as_json)


def test_logs_yield_whole_lines_across_chunks_and_follow_until_complete(monkeypatch):
    answers = [
        {"text": "", "next_offset": 0, "complete": False, "note": "QUEUED"},
        {"text": "epoch 1\nepo", "next_offset": 11, "complete": False, "note": None},
        {"text": "ch 2\ndone", "next_offset": 20, "complete": False, "note": None},
        {"text": "", "next_offset": 20, "complete": True, "note": None},
    ]
    asked = []

    class Transport:
        def logs(self, job_id, offset):
            asked.append((job_id, offset))
            return answers[len(asked) - 1]

    monkeypatch.setattr("jobplane.sdk.time.sleep", lambda s: None)
    client = Client(transport=Transport())
    assert list(client.logs("f" * 32)) == ["epoch 1", "epoch 2", "done"]
    assert asked == [("f" * 32, 0), ("f" * 32, 0), ("f" * 32, 11), ("f" * 32, 20)]
    asked.clear()
    assert list(client.logs("f" * 32, follow=False)) == []  # one read: the first answer has no text


def test_the_api_refuses_duplicate_yaml_keys_and_names_the_line(api):
    body = "name: a\nbackend: local\ncommand: [echo]\nbackend: aws-batch\n"
    answer = api.request("POST", "/jobs", api.token("alice"), body, {"Content-Type": "application/x-yaml"})
    assert answer.status_code == 400
    detail = json.loads(answer.body)["error"]["details"][0]
    assert detail["field"] == "(body)" and "line 4, column 1: found duplicate key 'backend'" in detail["message"]
    dry = api.request("POST", "/jobs?dry_run=maybe", api.token("alice"), spec("x"))
    assert dry.status_code == 400 and json.loads(dry.body)["error"]["details"][0]["field"] == "dry_run"
    assert api.request("POST", "/jobs?dry_run=true", None, spec("x")).status_code == 401


def test_tokens_are_listed_by_id_and_revoked(api, sdk):
    token = api.token("bob")
    client, _ = sdk(token)
    [mine] = client.tokens()
    assert mine.user == "bob" and not mine.admin and len(mine.token_id) == 12 and token not in str(mine.raw)
    assert client.revoke_token(mine.token_id).token_id == mine.token_id
    with pytest.raises(Unauthenticated):
        client.tokens()
