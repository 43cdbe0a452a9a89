"""`jobplane local up`: moto, the Chalice app, the local backend and the event sources, in one process."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobplane.local.sinks import INVOKE_PREFIX, UnknownFunction, start_invoke_server, start_slack_sink
from jobplane.local.state import state_file, write_state

log = logging.getLogger("jobplane.local")
ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
UPLOAD_BUCKET = "jobplane-local-uploads"
UPLOAD_QUEUE = "jobplane-local-uploads"
WEBHOOK_SECRET = "jobplane/local/slack-webhook-url"  # noqa: S105 - the name of a secret
# API workers: the app holds the GIL for most of a request, so more threads only add switching;
# they also stay below the emulator's 16, which every API request calls several times.
API_THREADS = 8


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalStack:
    def __init__(
        self,
        directory: Path,
        host: str = "127.0.0.1",
        api_port: int = 8000,
        reconcile_seconds: float = 10.0,
        echo: Callable[[str], None] = print,
        backends: str | None = None,
    ) -> None:
        self.directory = directory
        self.host = host
        self.api_port = api_port
        self.reconcile_seconds = reconcile_seconds
        self.echo = echo
        # The backends it runs: local processes, and the AWS ones against the embedded AWS.
        self.backends = backends or os.environ.get("JOBPLANE_BACKENDS") or "local"
        self.vms = None
        self.workers = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._servers: list[Any] = []
        self.state: dict[str, Any] = {}

    # --- start -------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        from jobplane.local.emulator import start_moto
        from jobplane.local.server import Server

        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))  # app.py lives at the repository root, like in a Chalice project
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # it holds the admin token and the journal of every table
        from chalicelib.jobs.spec import MAX_BODY_BYTES

        # The API's port is taken first: a busy port fails before the journal is replayed.
        self._api = _Deferred()
        self.api_server = Server(
            self._api, self.host, self.api_port, threads=API_THREADS, max_body=MAX_BODY_BYTES, name="api"
        )
        self._servers.append(self.api_server)
        self.api_port = self.api_server.server_address[1]
        self.moto, aws = start_moto(self.host, state=self.directory / "aws")
        self.slack_log = self.directory / "slack.log"
        self.slack_log.write_text("")
        slack = start_slack_sink(self.host, self._on_slack)
        invoke = start_invoke_server(self.host, self.invoke, self._authorize_invoke)
        self._servers += [slack, invoke]
        functions = f"http://{self.host}:{invoke.server_address[1]}"
        # The stack's own process is the "Lambda": its environment is what the functions read.
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": "local",
                "AWS_SESSION_TOKEN": "local",
                "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL": aws,
                "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
                "JOBPLANE_STAGE": "local",
                "JOBPLANE_BACKENDS": self.backends,
                "JOBPLANE_LOCAL_STATE_DIR": str(self.directory / "jobs"),
                "JOBPLANE_LOCAL_EVENT_URL": f"{functions}{INVOKE_PREFIX}on_job_state_change/invocations",
                "JOBPLANE_SLACK_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "JOBPLANE_UPLOAD_BUCKET": UPLOAD_BUCKET,
            }
        )
        os.environ.pop("AWS_PROFILE", None)
        from chalicelib import deps
        from chalicelib.backends import names
        from jobplane.local.cloud import cloud_backends, unsupported_backends

        # Before the settings: they would ask for a Google project first. Unknown names are theirs to refuse.
        others = unsupported_backends(n for n in (p.strip() for p in self.backends.split(",")) if n in names())
        if others:
            raise StackError(
                f"the local stack emulates AWS only: {', '.join(others)} cannot run in it "
                "(JOBPLANE_BACKENDS / --backends: local, the AWS backends, and kubernetes on KUBECONFIG's cluster)"
            )
        deps.reset()
        settings = deps.get_settings()
        deps.create_tables()
        self._provision(
            aws, f"http://{self.host}:{slack.server_address[1]}/services/T000/B000/local", settings.artifacts_bucket
        )
        if cloud_backends(settings):
            settings = self._provision_cloud(settings, aws)
        import app as app_module

        self.app = app_module.app
        self._tokens = deps.get_token_store()
        admin_token = self._admin_token(self._tokens)
        # Runners that outlived the last stack report to the address written here.
        jobs = self.directory / "jobs"
        jobs.mkdir(mode=0o700, exist_ok=True)
        url_file = jobs / "event-url"
        _write_private(url_file, os.environ["JOBPLANE_LOCAL_EVENT_URL"])
        # ... and stage their jobs' files through the embedded S3 at its address of this life.
        _write_private(jobs / "aws-endpoint", aws)
        if "local" in settings.enabled_backends:
            from chalicelib.backends import get_backend

            get_backend("local", settings).stack_key()  # made now, so it exists before the first job
        # Taken before the API opens: records replayed from the journal were notified in their
        # first life, and every write from here on comes after this point.
        stream_start = self._stream_positions(settings.jobs_table)
        vms = self._start_vms(settings, aws) if "ec2" in settings.enabled_backends else None
        self._start_api()
        self._spawn("reconcile-schedule", self._schedule_loop)
        self._spawn("dynamodb-stream", self._stream_loop, settings.jobs_table, stream_start)
        self._spawn("s3-notifications", self._sqs_loop)
        self.state = {
            "pid": os.getpid(),
            "api": f"http://{self.host}:{self.api_port}",
            "dashboard": f"http://{self.host}:{self.api_port}/",
            "aws_endpoint": aws,
            "functions": functions,
            "slack_sink": f"http://{self.host}:{slack.server_address[1]}",
            "slack_log": str(self.slack_log),
            "admin_token": admin_token,
            "upload_bucket": UPLOAD_BUCKET,
            "artifacts_bucket": settings.artifacts_bucket,
            "state_dir": str(self.directory),
            "restored": self.moto.replayed,
            "backends": list(settings.enabled_backends),
            "api_processes": [os.getpid(), *(self.workers.pids if self.workers else [])],
            "vms": vms,
            "env": settings.to_env(),
            "started_at": _now(),
        }
        write_state(self.directory, self.state)
        return self.state

    def _admin_token(self, store) -> str:
        """The local admin token survives restarts with the tables (a new one each start would pile up)."""
        from chalicelib.auth import create_token, hash_token

        path = self.directory / "admin-token"
        try:
            token = path.read_text().strip()
        except OSError:
            token = ""
        if token and store.get_token(hash_token(token)) is not None:
            return token
        token = create_token(store, "local-admin", admin=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        return token

    def _provision(self, aws: str, sink_url: str, artifacts_bucket: str) -> None:
        import boto3

        kw = {"region_name": REGION, "endpoint_url": aws}
        boto3.client("secretsmanager", **kw).create_secret(Name=WEBHOOK_SECRET, SecretString=sink_url)
        sqs = boto3.client("sqs", **kw)
        self.queue_url = sqs.create_queue(QueueName=UPLOAD_QUEUE)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        s3 = boto3.client("s3", **kw)
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        # The artifact store: packed code, job outputs and checkpoints (restored from the journal after a restart).
        for bucket in (UPLOAD_BUCKET, artifacts_bucket):
            if bucket not in existing:
                s3.create_bucket(Bucket=bucket)  # else restored from the journal, with its objects
        s3.put_bucket_notification_configuration(
            Bucket=UPLOAD_BUCKET,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]
            },
        )

    def _provision_cloud(self, settings, aws: str):
        """The AWS backends' resources in the emulator; the settings that name them join the environment."""
        from chalicelib import deps
        from jobplane.local.cloud import provision

        done = provision(settings, aws, REGION)
        os.environ.update(done.env)
        deps.reset()
        return deps.get_settings()

    def _start_vms(self, settings, aws: str) -> dict[str, int]:
        """ec2 jobs' fake VMs: the ones of the last stack adopted, then a poll for new instances."""
        from chalicelib.backends.local.backend import run_as_user
        from jobplane.local.vms import VmError, VmHost

        try:
            host = VmHost(
                self.directory / "vms", aws, REGION, settings.stage, ACCOUNT, run_as_user(settings.local_run_as)
            )
            host.check()
        except VmError as exc:
            raise StackError(str(exc)) from None
        adopted = host.adopt()
        self.vms = host
        self._spawn("ec2-vms", host.loop, self._stop)
        return adopted

    def _start_api(self) -> None:
        """The API on its bound socket: served by worker processes (JOBPLANE_LOCAL_API_PROCESSES, by
        default one per core), so a burst of requests is not held to this process's GIL, which the
        embedded AWS needs; with 0, by this process."""
        from chalice.config import Config

        from chalicelib.jobs.spec import MAX_BODY_BYTES
        from jobplane.local.server import ChaliceWSGI
        from jobplane.local.workers import Workers, processes_from_env

        try:
            count = processes_from_env()
        except ValueError as exc:
            raise StackError(str(exc)) from None
        config = Config.create(chalice_stage="local", app_name="jobplane", project_dir=os.getcwd())
        self._api.app = ChaliceWSGI(self.app, config)
        if not count:
            self.api_server.start()
            return
        self.workers = Workers(self.api_server.socket, count, API_THREADS, MAX_BODY_BYTES, ROOT)
        self._spawn("api-workers", self._watch_workers)

    def _watch_workers(self) -> None:
        while not self._stop.wait(1.0):
            self.workers.watch()

    def _spawn(self, name: str, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # --- functions, as a cloud would call them ------------------------------------------------
    def invoke(self, name: str, payload: Any) -> Any:
        from chalice.local import LambdaContext

        handler = self.app.handler_map.get(name)
        if handler is None:
            known = ", ".join(sorted(self.app.handler_map))
            raise UnknownFunction(f"Function not found: {name} (the stack's functions: {known})")
        return handler(payload, LambdaContext(name, memory_size=512))

    def _authorize_invoke(self, authorization: str, name: str, payload: Any) -> str | None:
        """An admin token calls any function; a runner only reports local job states (signatures: the backend)."""
        from chalicelib.auth import hash_token

        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            record = self._tokens.get_token(hash_token(token.strip()))
            if record is not None and record.admin:
                return None
            return "the bearer token is not an admin token of this stack"
        if name == "on_job_state_change" and isinstance(payload, dict) and payload.get("source") == "jobplane.local":
            return None
        return f"invoking {name} needs an admin token (Authorization: Bearer ...); `jobplane local invoke` sends it"

    def _safe_invoke(self, name: str, payload: Any) -> Any:
        try:
            return self.invoke(name, payload)
        except Exception:  # an event source keeps polling after a failed invocation, as Lambda's do
            log.exception("%s failed", name)
            return None

    def _schedule_loop(self) -> None:
        rule = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/jobplane-local-reconcile"
        while not self._stop.wait(self.reconcile_seconds):
            self._safe_invoke(
                "reconcile",
                {
                    "version": "0",
                    "id": str(uuid.uuid4()),
                    "detail-type": "Scheduled Event",
                    "source": "aws.events",
                    "account": ACCOUNT,
                    "time": _now(),
                    "region": REGION,
                    "resources": [rule],
                    "detail": {},
                },
            )

    def _stream_positions(self, table: str) -> dict[str, str]:
        """One iterator per existing shard, after its last record (LATEST)."""
        import boto3

        streams = boto3.client("dynamodbstreams", region_name=REGION)
        arn = streams.list_streams(TableName=table)["Streams"][0]["StreamArn"]
        return {
            shard["ShardId"]: streams.get_shard_iterator(
                StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="LATEST"
            )["ShardIterator"]
            for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        }

    def _stream_loop(self, table: str, iterators: dict[str, str]) -> None:
        """Read the jobs table's stream and call `notify` with Lambda's DynamoDB event shape."""
        import boto3

        streams = boto3.client("dynamodbstreams", region_name=REGION)
        arn = streams.list_streams(TableName=table)["Streams"][0]["StreamArn"]
        while not self._stop.is_set():
            for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
                sid = shard["ShardId"]
                if sid not in iterators:  # a shard born while we run: all of it is new
                    iterators[sid] = streams.get_shard_iterator(
                        StreamArn=arn, ShardId=sid, ShardIteratorType="TRIM_HORIZON"
                    )["ShardIterator"]
            for sid, iterator in list(iterators.items()):
                if not iterator:
                    continue
                page = streams.get_records(ShardIterator=iterator, Limit=100)
                iterators[sid] = page.get("NextShardIterator")
                records = page.get("Records", [])
                if records:
                    for record in records:
                        record["eventSourceARN"] = arn
                        ddb = record.get("dynamodb", {})
                        if isinstance(ddb.get("ApproximateCreationDateTime"), datetime):
                            ddb["ApproximateCreationDateTime"] = ddb["ApproximateCreationDateTime"].timestamp()
                    self._safe_invoke("notify", {"Records": records})
            self._stop.wait(0.5)

    def _sqs_loop(self) -> None:
        """S3 -> SQS notifications -> `on_upload` with the S3 event, as the Lambda trigger delivers it."""
        import boto3

        sqs = boto3.client("sqs", region_name=REGION)
        while not self._stop.is_set():
            messages = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            for message in messages:
                try:
                    event = json.loads(message["Body"])
                except ValueError:
                    event = {}
                if "Records" in event:  # skip s3:TestEvent
                    result = self._safe_invoke("on_upload", event)
                    if result is None:
                        continue  # left on the queue: it comes back after the visibility timeout
                    self.echo(f"[on_upload] {json.dumps(result, default=str)}")
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def _on_slack(self, message: dict[str, Any]) -> None:
        with open(self.slack_log, "a") as fh:
            fh.write(json.dumps(message) + "\n")
        self.echo(f"[slack] {message.get('text', '')}")

    # --- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        # Local jobs are left running, as they are after a crash: their runners are independent
        # and the next start adopts them (cancel a job to stop it).
        self._stop.set()
        if self.workers is not None:
            self.workers.stop()  # first: what they are serving needs the embedded AWS
        for server in self._servers:
            server.shutdown()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.vms is not None:
            self.vms.close()  # the VMs go on; their aws calls wait for the next stack
        if getattr(self, "moto", None):
            self.moto.stop()
        if self.state:  # only the stack that wrote it removes it
            state_file(self.directory).unlink(missing_ok=True)

    def wait(self) -> None:
        while not self._stop.wait(0.5):
            pass


class StackError(RuntimeError):
    """The stack cannot start as configured; the message says why and what to change."""


def _write_private(path: Path, text: str) -> None:
    """Replace `path` whole with `text`, readable by the stack's user only."""
    tmp = path.with_suffix(".tmp")
    with os.fdopen(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class _Deferred:
    """The API's WSGI app, bound to its port before the app exists (so a busy port fails first)."""

    app = None

    def __call__(self, environ, start_response):
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "application/json"), ("Retry-After", "1")])
            return [b'{"error": {"code": "starting", "message": "the local stack is starting", "details": []}}']
        return self.app(environ, start_response)
