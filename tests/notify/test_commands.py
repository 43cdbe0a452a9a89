"""POST /slack/commands through the Chalice app: signatures, user mapping, inline and deferred answers."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from urllib.parse import urlencode

import boto3
import pytest
from slack_sdk.signature import SignatureVerifier

from chalicelib.auth import Principal
from chalicelib.jobs.model import EventSource, JobEvent, JobStatus
from chalicelib.jobs.spec import parse_spec
from chalicelib.notify import commands
from chalicelib.notify.invoke import ThreadInvoker
from chalicelib.notify.users import map_slack_user
from tests.factories import InstantBackend, make_settings, make_stores, use_stores

# Slack's published example ("Verifying requests from Slack").
DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOC_TIMESTAMP = "1531420618"
DOC_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    "&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    "&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

SECRET = "test-signing-secret-0123456789abcdef"
RESPONSE_PATH = "/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN"
HELP = (
    "*/jobplane* commands:\n"
    "• `/jobplane list [STATUS]`\n"
    "• `/jobplane status JOB_ID`\n"
    "• `/jobplane cancel JOB_ID`\n"
    "• `/jobplane submit TEMPLATE [key=value ...]`\n"
    "• `/jobplane vm start|stop|list`\n"
    "• `/jobplane help`\n"
    "Templates: blobs-softmax, resnet-cifar"
)


class FixedClock:
    def __init__(self, now: float) -> None:
        self.now_value = now

    def now(self) -> float:
        return self.now_value


def sign(body: str, timestamp: str, secret: str = SECRET) -> dict[str, str]:
    """Slack's v0 scheme, computed here with hmac (independently of slack-sdk)."""
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": f"v0={digest}",
    }


class SlackApp:
    def __init__(self, client, store, service, invoker, slack, user):
        self.client, self.store, self.service, self.invoker, self.slack = client, store, service, invoker, slack
        self.user = user

    def command(self, text: str, user: str = "U2CERLKJA", headers=None, timestamp=None):
        body = urlencode(
            {
                "team_id": "T1DC2JH3J",
                "channel_id": "C2147483705",
                "user_id": user,
                "user_name": "roadrunner",
                "command": "/jobplane",
                "text": text,
                "response_url": f"{self.slack.url}{RESPONSE_PATH}",
                "trigger_id": "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c",
            }
        )
        ts = timestamp or str(int(time.time()))
        return self.client.http.post("/slack/commands", headers=headers or sign(body, ts), body=body)

    def submit(self, owner: str, name: str = "train"):
        spec = parse_spec({"name": name, "backend": "local", "command": ["true"]})
        job, _ = self.service.submit(Principal(owner), spec)
        return job


@pytest.fixture(scope="module")
def slack_env(tmp_path_factory, moto_endpoint):
    """Settings, tables and the signing secret, made once per module (tables take a second to create)."""
    secret_name = f"jobplane/test/{uuid.uuid4().hex}/slack-signing-secret"
    boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_endpoint).create_secret(
        Name=secret_name, SecretString=SECRET
    )
    settings = make_settings(
        tmp_path_factory.mktemp("slack"),
        moto_endpoint,
        JOBPLANE_SLACK_SIGNING_SECRET=secret_name,
        JOBPLANE_SLACK_ASYNC="thread",
        JOBPLANE_SLACK_SEND_BUDGET_SECONDS="2",
    )
    return settings, make_stores(settings)


@pytest.fixture
def slack_app(slack_env, slack):
    """The app with a fresh jobplane user behind Slack user U2CERLKJA (so tests share no jobs)."""
    from chalice.test import Client

    from chalicelib import deps
    from chalicelib.jobs.service import JobService

    settings, stores = slack_env
    store = stores["jobs"]
    backend = InstantBackend(settings)
    service = JobService(store, settings, backend_factory=lambda *_: backend)
    invoker = ThreadInvoker(deps.run_slack_worker)
    use_stores(settings, stores, service=service, slack_invoker=invoker)
    user = f"rr-{uuid.uuid4().hex[:8]}"
    map_slack_user(stores["slack"], "U2CERLKJA", user)
    import app as app_module

    with Client(app_module.app) as client:
        yield SlackApp(client, store, service, invoker, slack, user)
    deps.reset()


# --- signatures -----------------------------------------------------------------------------
def test_slacks_published_example_verifies_with_slack_sdk():
    verifier = SignatureVerifier(DOC_SECRET, FixedClock(int(DOC_TIMESTAMP)))
    assert verifier.generate_signature(timestamp=DOC_TIMESTAMP, body=DOC_BODY) == DOC_SIGNATURE
    headers = {"X-Slack-Request-Timestamp": DOC_TIMESTAMP, "X-Slack-Signature": DOC_SIGNATURE}
    assert commands.verify(DOC_SECRET, DOC_BODY.encode(), headers, FixedClock(int(DOC_TIMESTAMP) + 299))
    assert not commands.verify(DOC_SECRET, DOC_BODY.encode(), headers, FixedClock(int(DOC_TIMESTAMP) + 301))
    assert not commands.verify(DOC_SECRET, DOC_BODY.encode(), headers, FixedClock(int(DOC_TIMESTAMP) - 301))


def test_slacks_published_example_request_is_answered(slack_app, monkeypatch):
    monkeypatch.setattr(commands, "wall_clock", FixedClock(int(DOC_TIMESTAMP) + 10))
    from chalicelib import deps

    deps.override(**{f"secret:{deps.get_settings().slack_signing_secret}": DOC_SECRET})
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": DOC_TIMESTAMP,
        "X-Slack-Signature": DOC_SIGNATURE,
    }
    response = slack_app.client.http.post("/slack/commands", headers=headers, body=DOC_BODY)
    assert response.status_code == 200
    assert response.json_body == {"response_type": "ephemeral", "text": HELP}


def test_a_replayed_request_gets_401_and_changes_nothing(slack_app, monkeypatch):
    job = slack_app.submit(slack_app.user)
    signed_at = int(time.time())
    monkeypatch.setattr(commands, "wall_clock", FixedClock(signed_at + 5 * 60 + 1))
    response = slack_app.command(f"cancel {job.job_id}", timestamp=str(signed_at))
    assert (response.status_code, response.json_body) == (401, commands.UNAUTHORIZED)
    slack_app.invoker.join()
    assert slack_app.invoker.threads == []
    assert slack_app.store.get_job(job.job_id).status is JobStatus.LAUNCHING


@pytest.mark.parametrize(
    "forge",
    [
        lambda body, ts: sign(body, ts, secret="not-the-secret"),
        lambda body, ts: sign(body.replace("cancel", "status"), ts),  # signed one body, sent another
        lambda body, ts: {**sign(body, ts), "X-Slack-Request-Timestamp": str(int(ts) + 1)},
        lambda body, ts: {**sign(body, ts), "X-Slack-Request-Timestamp": "soon"},
        lambda body, ts: {"Content-Type": "application/x-www-form-urlencoded"},
    ],
    ids=["wrong-secret", "other-body", "other-timestamp", "bad-timestamp", "unsigned"],
)
def test_a_forged_request_gets_401_and_changes_nothing(slack_app, forge):
    job = slack_app.submit(slack_app.user)
    body = urlencode({"user_id": "U2CERLKJA", "text": f"cancel {job.job_id}", "response_url": slack_app.slack.url})
    ts = str(int(time.time()))
    response = slack_app.client.http.post("/slack/commands", headers=forge(body, ts), body=body)
    assert (response.status_code, response.json_body) == (401, commands.UNAUTHORIZED)
    assert slack_app.invoker.threads == []
    assert slack_app.store.get_job(job.job_id).status is JobStatus.LAUNCHING


def test_without_a_signing_secret_every_command_is_refused(slack_app):
    from chalicelib import deps

    deps.override(**{f"secret:{deps.get_settings().slack_signing_secret}": ""})
    response = slack_app.command("list")
    assert (response.status_code, response.json_body) == (401, commands.NOT_CONFIGURED)


# --- users ------------------------------------------------------------------------------------
def test_an_unmapped_slack_user_is_refused_politely(slack_app):
    response = slack_app.command("list", user="U0NOBODY1")
    assert response.status_code == 200
    assert response.json_body == {
        "response_type": "ephemeral",
        "text": "Sorry, your Slack account is not linked to a jobplane user yet. "
        "Ask a jobplane admin to run `jobplane slack map U0NOBODY1 YOUR_JOBPLANE_USER`.",
    }


# --- fast commands, answered inline -------------------------------------------------------------
def test_list_answers_inline_with_the_users_own_jobs(slack_app):
    mine = slack_app.submit(slack_app.user, "mine")
    slack_app.submit("coyote", "theirs")
    response = slack_app.command("list")
    when = mine.created_at.strftime("%Y-%m-%d %H:%M UTC")
    assert response.json_body == {
        "response_type": "ephemeral",
        "text": f"Your latest 1 jobs:\n• `{mine.job_id}` *mine* LAUNCHING on local (submitted {when})",
    }
    assert slack_app.command("list succeeded").json_body["text"] == "No jobs with status SUCCEEDED yet."
    assert slack_app.command("list sleeping").json_body["text"] == (
        ":warning: unknown status 'SLEEPING' "
        "(status: one of QUEUED, LAUNCHING, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)"
    )


def test_status_answers_inline(slack_app):
    job = slack_app.submit(slack_app.user)
    slack_app.service.apply_event(JobEvent(job.job_id, JobStatus.RUNNING, EventSource.BACKEND, attempt=1))
    done = slack_app.service.apply_event(
        JobEvent(job.job_id, JobStatus.SUCCEEDED, EventSource.BACKEND, reason="exit 0", attempt=1)
    )
    response = slack_app.command(f"status {job.job_id}")
    took = commands.duration(done.started_at, done.finished_at)
    assert response.json_body == {
        "response_type": "ephemeral",
        "text": f"*train* (`{job.job_id}`): SUCCEEDED\n"
        f"Owner {slack_app.user} · local, 1 vCPU, 2 GB · attempt 1\n"
        f"Submitted {done.created_at:%Y-%m-%d %H:%M} UTC · started {done.started_at:%Y-%m-%d %H:%M} UTC"
        f" · duration {took} · est. cost unknown (attempt 1: backend 'local' has no prices in the catalog)\n"
        "Reason: exit 0",
    }


def test_status_of_another_users_job_is_not_found(slack_app):
    job = slack_app.submit("coyote")
    assert slack_app.command(f"status {job.job_id}").json_body == {
        "response_type": "ephemeral",
        "text": f":warning: no job '{job.job_id}'",
    }


def test_vm_says_dev_vms_are_not_enabled(slack_app):
    for text in ("vm list", "vm start", "vm"):
        assert slack_app.command(text).json_body == {
            "response_type": "ephemeral",
            "text": "Dev VMs are not enabled in this deployment.",
        }


def test_an_unknown_command_gets_the_help(slack_app):
    assert slack_app.command("launch rockets").json_body == {"response_type": "ephemeral", "text": HELP}


# --- slow commands: acknowledged at once, answered through response_url ----------------------------
def test_cancel_is_acknowledged_then_answered_at_the_response_url(slack_app):
    job = slack_app.submit(slack_app.user)
    start = time.monotonic()
    response = slack_app.command(f"cancel {job.job_id}")
    assert time.monotonic() - start < 3
    assert response.json_body == {
        "response_type": "ephemeral",
        "text": f"Working on `/jobplane cancel {job.job_id}`; the result will follow here.",
    }
    slack_app.invoker.join()
    assert slack_app.slack.bodies(RESPONSE_PATH) == [
        {"response_type": "ephemeral", "text": f"Cancel requested for *train* (`{job.job_id}`): now CANCELLING."}
    ]
    assert slack_app.store.get_job(job.job_id).status is JobStatus.CANCELLING


def test_submit_renders_the_template_and_a_retried_worker_submits_once(slack_app):
    response = slack_app.command("submit blobs-softmax epochs=3 name=quick-run")
    assert response.json_body["text"] == (
        "Working on `/jobplane submit blobs-softmax epochs=3 name=quick-run`; the result will follow here."
    )
    slack_app.invoker.join()
    (job,) = slack_app.service.list(Principal(slack_app.user))[0]
    assert job.spec.to_dict()["command"] == [
        "python",
        "-m",
        "examples.train_blobs",
        "--epochs",
        "3",
        "--epoch-seconds",
        "0.2",
    ]
    assert job.spec.to_dict()["env"] == {"LR": "0.1"}
    first = {"response_type": "ephemeral", "text": f"Submitted *quick-run* as `{job.job_id}` on local: LAUNCHING."}
    assert slack_app.slack.bodies(RESPONSE_PATH) == [first]
    # Lambda may run an Event invocation again: the trigger_id keeps it to one job.
    payload = {
        "words": ["submit", "blobs-softmax", "epochs=3", "name=quick-run"],
        "user": slack_app.user,
        "response_url": f"{slack_app.slack.url}{RESPONSE_PATH}",
        "trigger_id": "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c",
    }
    result = slack_app.client.lambda_.invoke("slack_worker", payload).payload
    assert result["sent"] is True
    assert result["text"] == f"Already submitted *quick-run* as `{job.job_id}` on local: LAUNCHING."
    assert len(slack_app.service.list(Principal(slack_app.user))[0]) == 1


def test_a_bad_template_parameter_is_explained_at_the_response_url(slack_app):
    slack_app.command("submit blobs-softmax epochz=3")
    slack_app.invoker.join()
    assert slack_app.slack.bodies(RESPONSE_PATH) == [
        {
            "response_type": "ephemeral",
            "text": ":warning: template 'blobs-softmax' has no parameter 'epochz' "
            "(epochz: parameters: epochs, lr, name)",
        }
    ]


def test_a_response_url_that_is_down_is_given_up_on_without_raising(slack_app):
    slack_app.slack.script(RESPONSE_PATH, *[(503, b"unavailable", {})] * 10)
    job = slack_app.submit(slack_app.user)
    url = slack_app.slack.url + RESPONSE_PATH
    payload = {"words": ["cancel", job.job_id], "user": slack_app.user, "response_url": url}
    start = time.monotonic()
    result = slack_app.client.lambda_.invoke("slack_worker", payload).payload
    assert time.monotonic() - start < 2.5
    assert result["sent"] is False
    assert result["detail"].startswith("gave up after ")
    assert slack_app.store.get_job(job.job_id).status is JobStatus.CANCELLING


def test_a_command_that_cannot_be_started_is_answered_not_crashed(slack_env, caplog):
    from chalicelib.notify.invoke import Invoker

    class Broken(Invoker):
        def invoke(self, payload):
            raise RuntimeError("AccessDeniedException: lambda:InvokeFunction")

    settings, stores = slack_env
    map_slack_user(stores["slack"], "U0BROKEN1", "broken-user")
    body = urlencode({"user_id": "U0BROKEN1", "text": "cancel abc", "response_url": "https://hooks.slack.com/c/1"})
    ts = "1700000000"
    status, answer = commands.handle_slash_command(
        body.encode(),
        sign(body, ts),
        signing_secret=SECRET,
        store=stores["slack"],
        service=None,
        settings=settings,
        invoker=Broken(),
        clock=FixedClock(int(ts)),
    )
    assert (status, answer) == (
        200,
        {"response_type": "ephemeral", "text": ":warning: jobplane could not start this command; please try again."},
    )
    assert "could not be started" in caplog.text


def test_a_request_without_a_form_body_is_refused_as_unsigned(slack_app):
    for headers in ({}, {"Content-Type": "application/json"}):
        response = slack_app.client.http.post("/slack/commands", headers=headers, body=b"{}")
        assert (response.status_code, response.json_body) == (401, commands.UNAUTHORIZED)


@pytest.fixture
def gce_devvms(gcp_settings, fake_gcp):
    """deps with the GCE deployment's dev VM service (the API's) on the fake Compute API."""
    from chalicelib import deps
    from chalicelib.devvms import DevVmService, devvm_provider
    from chalicelib.store.devvms import InMemoryDevVmStore

    deps.reset()
    deps.override(settings=gcp_settings, devvm_service=DevVmService(InMemoryDevVmStore(), gcp_settings, devvm_provider))
    yield fake_gcp, deps.get_devvm_service_if_enabled
    deps.reset()


def test_vm_commands_create_list_stop_and_start_a_gce_dev_vm(gce_devvms, gcp_settings):
    fake, devvms = gce_devvms
    alice = commands.Context(Principal("alice"), None, gcp_settings, devvms=devvms)
    bob = commands.Context(Principal("bob"), None, gcp_settings, devvms=devvms)

    def run(ctx, text):
        entry, args = commands.resolve(text.split(), devvms)
        return entry, commands.execute(entry, ctx, args)["text"]

    entry, text = run(alice, "vm start notebook backend=gce gpu_type=T4 spot=true idle_minutes=20")
    assert entry.slow  # it calls Compute Engine: answered through response_url
    assert text.startswith("Created `") and "*notebook* RUNNING on gce (n1-standard-8; stops after 20 idle min" in text
    vm_id = text.split("`")[1]
    [(zone, name)] = list(fake.instances)
    assert name == f"jpdev-{vm_id}" and fake.instances[(zone, name)]["scheduling"]["provisioningModel"] == "SPOT"

    entry, text = run(alice, "vm list")
    assert not entry.slow and text.startswith("Your dev VMs:\n• `" + vm_id)
    assert run(bob, "vm list")[1].startswith("No dev VMs yet")
    assert run(bob, f"vm stop {vm_id}")[1] == f":warning: no instance {vm_id!r}"

    _, text = run(alice, f"vm stop {vm_id}")
    assert text.startswith(f"Stopped `{vm_id}`") and text.endswith(": stopped by alice from Slack")
    assert fake.instances[(zone, name)]["status"] == "TERMINATED"
    _, text = run(alice, f"vm start {vm_id}")
    assert text.startswith(f"Started `{vm_id}`") and "RUNNING" in text
    assert fake.instances[(zone, name)]["status"] == "RUNNING"


def test_vm_start_with_a_bad_value_names_the_field(gce_devvms, gcp_settings):
    fake, devvms = gce_devvms
    ctx = commands.Context(Principal("alice"), None, gcp_settings, devvms=devvms)
    for words, field in (("vm start nb idle_minutes=soon", "idle_minutes"), ("vm start nb gpu_type=A10G", "gpu_type")):
        entry, args = commands.resolve(words.split(), devvms)
        text = commands.execute(entry, ctx, args)["text"]
        assert text.startswith(":warning: ") and f"({field}: " in text, text
    assert fake.instances == {}
