"""The `jobplane` command: submit and follow jobs, manage tokens, run the local stack."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from jobplane import __version__
from jobplane.client import ApiError, Client
from jobplane.local.state import read_state, state_dir

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
STATUS_STYLE = {
    "QUEUED": "yellow",
    "LAUNCHING": "cyan",
    "RUNNING": "blue",
    "CANCELLING": "magenta",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "bright_black",
}


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


class CliError(Exception):
    pass


def _client(args) -> Client:
    local = read_state(state_dir(args.local_dir))
    api = args.api or os.environ.get("JOBPLANE_API") or (local or {}).get("api")
    token = args.token or os.environ.get("JOBPLANE_TOKEN") or (local or {}).get("admin_token")
    if not api:
        raise CliError("no API address: pass --api, set JOBPLANE_API, or start `jobplane local up` here")
    if not token:
        raise CliError("no token: pass --token, set JOBPLANE_TOKEN (see `jobplane token create`)")
    return Client(api, token)


# --- jobs ----------------------------------------------------------------------------------
def cmd_submit(args) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    client = _client(args)
    out = _console()
    # A spec's workdir is relative to the spec file; --workdir (and a spec from stdin) to the current folder.
    base = Path.cwd() if args.file == "-" else Path(args.file).resolve().parent
    text, is_yaml = with_uploaded_code(
        client, text, base, args.workdir, lambda line: out.print(line, markup=False, soft_wrap=True)
    )
    job = client.submit(text, idempotency_key=args.idempotency_key, yaml=is_yaml)
    out.print(f"submitted [bold]{job['name']}[/] as [bold]{job['job_id']}[/] on {job['backend']} ({job['status']})")
    if not args.wait:
        return 0
    job = _follow(client, job["job_id"], args.interval, args.timeout)
    out.print()
    _print_job(job)
    return 0 if job["status"] == "SUCCEEDED" else 1


def with_uploaded_code(client: Client, text: str, base: Path, workdir: str | None, say=print) -> tuple[str, bool]:
    """The spec to submit: with a workdir (the spec's or --workdir), packed, uploaded unless the store has that
    digest already, and replaced by code_uri + code_sha256. Returns (text, is_yaml)."""
    import yaml

    from chalicelib.jobs.spec import _yaml_loader

    try:
        document = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return text, True  # the API says what is wrong with it
    named = document.get("workdir") if isinstance(document, dict) else None
    if workdir is None and named is None:
        return text, True
    if not isinstance(document, dict):
        raise CliError("--workdir needs a spec that is a mapping")
    if workdir is not None:
        folder = Path(workdir).resolve()
    elif isinstance(named, str) and named.strip():
        folder = (base / named).resolve()
    else:
        raise CliError("workdir: must be a folder path (relative to the spec file)")
    from jobplane.pack import PackError, pack

    try:
        packed = pack(folder)
    except PackError as exc:
        raise CliError(str(exc)) from None
    answer = client.code_upload(packed.sha256, packed.size)
    if answer["exists"]:
        say(f"code: {folder} ({len(packed.files)} files, {packed.size} bytes) is unchanged: nothing uploaded")
    else:
        client.put_code(answer["upload"], packed.data)
        say(f"code: {folder} ({len(packed.files)} files, {packed.size} bytes) uploaded to {answer['code_uri']}")
    document = {k: v for k, v in document.items() if k != "workdir"}
    document.update(code_uri=answer["code_uri"], code_sha256=packed.sha256)
    return json.dumps(document), False


def _follow(client: Client, job_id: str, interval: float, timeout: float | None) -> dict:
    """Poll the job, with a live display of its status, elapsed time, history and log tail."""
    from rich.live import Live

    started = time.monotonic()
    offset, tail = 0, []
    job = client.get(job_id)
    with Live(_progress(job, [], tail, 0), console=_console(), refresh_per_second=4, transient=False) as live:
        while True:
            job = client.get(job_id)
            try:
                chunk = client.logs(job_id, offset)
                offset = chunk["next_offset"]
                tail = (tail + chunk["text"].splitlines())[-8:]
            except ApiError:
                pass
            live.update(_progress(job, client.events(job_id), tail, time.monotonic() - started))
            if job["status"] in TERMINAL:
                return job
            if timeout and time.monotonic() - started > timeout:
                raise CliError(f"job {job_id} still {job['status']} after {timeout:.0f}s (it keeps running)")
            time.sleep(interval)


def _progress(job: dict, events: list[dict], tail: list[str], elapsed: float):
    from rich.console import Group
    from rich.spinner import Spinner
    from rich.text import Text

    status = job["status"]
    header = Text.assemble(
        (f"{job['name']} ", "bold"),
        (status, STATUS_STYLE.get(status, "")),
        f"  {elapsed:5.1f}s  {job['backend']}  {job['job_id']}",
    )
    lines = [Text(f"  {e['at'][11:19]}  {e['from'] or '-':>10} -> {e['to']:<10} {e['reason']}") for e in events]
    logs = [Text("  | " + line, style="dim") for line in tail]
    top = header if status in TERMINAL else Spinner("dots", text=header)
    return Group(top, *lines, *logs)


def _print_job(job: dict, events: list[dict] | None = None) -> None:
    from rich.table import Table

    out = _console()
    table = Table(show_header=False, box=None)
    for key in (
        "job_id",
        "name",
        "owner",
        "status",
        "backend",
        "native_id",
        "attempt",
        "planner_reason",
        "created_at",
        "started_at",
        "finished_at",
        "failure_kind",
        "failure_reason",
        "cost_estimate_usd",
        "status_reason",
    ):
        value = job.get(key)
        if value is not None:
            style = STATUS_STYLE.get(str(value), "") if key == "status" else ""
            table.add_row(key, f"[{style}]{value}[/]" if style else str(value))
    out.print(table)
    if job.get("metrics"):
        from chalicelib.jobs.metrics import format_value

        out.print("metrics:")
        for key, value in sorted(job["metrics"].items()):
            out.print(f"  {key}  {format_value(value)}", markup=False)
    if events:
        out.print("history:")
        for e in events:
            out.print(f"  {e['at']}  {e['from'] or '-':>10} -> {e['to']:<10} [{e['source']}] {e['reason']}")


def cmd_list(args) -> int:
    from rich.table import Table

    body = _client(args).list(args.status.upper() if args.status else None, args.limit, args.next_token)
    table = Table("JOB ID", "NAME", "OWNER", "STATUS", "BACKEND", "CREATED", "COST $")
    for job in body["jobs"]:
        status = job["status"]
        cost = job.get("cost_estimate_usd")
        table.add_row(
            job["job_id"],
            job["name"],
            job["owner"],
            f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
            job["backend"],
            job["created_at"][:19],
            "-" if cost is None else f"{cost:.2f}",
        )
    out = _console()
    out.print(table)
    if body.get("next_token"):
        out.print(f"more: --next-token {body['next_token']}")
    return 0


def cmd_status(args) -> int:
    client = _client(args)
    if args.json:
        print(json.dumps(client.get(args.job_id), indent=2))
        return 0
    _print_job(client.get(args.job_id), client.events(args.job_id))
    return 0


def cmd_metrics(args) -> int:
    from rich.table import Table

    from chalicelib.jobs.metrics import format_value

    body = _client(args).metrics(args.job_id)
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    series = body["series"]
    if not series:
        _console().print(f"{args.job_id}: no metrics reported (JOBPLANE_METRICS lines) yet")
        return 0
    keys = sorted(series)
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for seq, value in series[key]:
            rows.setdefault(int(seq), {})[key] = value
    table = Table("SEQ", *(k.upper() for k in keys))
    for seq in sorted(rows):
        table.add_row(str(seq), *(format_value(rows[seq][k]) if k in rows[seq] else "" for k in keys))
    out = _console()
    out.print(table)
    if body.get("malformed_lines"):
        out.print(f"{body['malformed_lines']} malformed JOBPLANE_METRICS lines were ignored")
    return 0


def cmd_cancel(args) -> int:
    job = _client(args).cancel(args.job_id)
    _console().print(f"{job['job_id']}: {job['status']}")
    return 0


def cmd_artifacts(args) -> int:
    client = _client(args)
    items, cursor = [], None
    while True:
        page = client.artifacts(args.job_id, cursor)
        items += page["artifacts"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    out = _console()
    if not args.download:
        from rich.table import Table

        table = Table("KEY", "SIZE", "MODIFIED", title=page["artifacts_uri"])
        for item in items:
            table.add_row(item["key"], str(item["size"]), (item["last_modified"] or "-")[:19])
        out.print(table)
        return 0
    target = Path(args.download).resolve()
    # Every key is checked before anything is written: a key may not leave the folder.
    places = [(item, safe_destination(target, item["key"])) for item in items]
    for item, dest in places:
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download(item["url"], dest)
        out.print(f"{item['key']} ({item['size']} bytes) -> {dest}", markup=False, soft_wrap=True)
    out.print(f"{len(places)} files from {page['artifacts_uri']} in {target}", markup=False, soft_wrap=True)
    return 0


def safe_destination(folder: Path, key: str) -> Path:
    """Where an artifact's key lands below `folder`; a key that would escape it (/, .., a drive) is refused."""
    parts = key.replace("\\", "/").split("/")
    if not key or key.startswith("/") or any(p in ("..", "") for p in parts) or ":" in parts[0]:
        raise CliError(f"refusing artifact key {key!r}: it would be written outside {folder}")
    dest = (folder / Path(*parts)).resolve()
    if folder != dest and folder not in dest.parents:
        raise CliError(f"refusing artifact key {key!r}: it would be written outside {folder}")
    return dest


def cmd_logs(args) -> int:
    client = _client(args)
    offset: int | str = 0
    said = None
    node = getattr(args, "node", None)
    while True:
        # --node N: that node's output alone (a multi-node job); without it every node's, merged
        chunk = client.logs(args.job_id, offset) if node is None else client.logs(args.job_id, offset, node=node)
        if chunk["text"]:
            sys.stdout.write(chunk["text"])
            sys.stdout.flush()
        note = chunk.get("note")
        if note and note != said and not chunk["text"]:
            # Why there is nothing to print (not started, not shipped yet): once per change, on stderr.
            print(f"jobplane: {note}", file=sys.stderr, flush=True)
            said = note
        offset = chunk["next_offset"]  # a byte count or an opaque cursor: passed back unchanged
        if not args.follow or (chunk["complete"] and not chunk["text"]):
            return 0
        if not chunk["text"]:
            time.sleep(1.0)


# --- dev VMs -----------------------------------------------------------------------------------
def cmd_vm_start(args) -> int:
    client = _client(args)
    if args.vm_id:
        vm = client.vm_start(args.vm_id)
    else:
        if not args.name:
            raise CliError("give a VM id to restart, or --name to create a new dev VM")
        body = {
            "name": args.name,
            "gpus": args.gpus,
            "spot": args.spot,
            "idle_minutes": args.idle_minutes,
            "max_hours": args.max_hours,
        }
        # Left out, the deployment decides: its first dev VM backend, and that backend's GPU type.
        body.update({k: v for k, v in (("backend", args.backend), ("gpu_type", args.gpu_type)) if v})
        vm = client.vm_create(body)
    _console().print(
        f"{vm['vm_id']} {vm['name']}: {vm['status']} on {vm['backend']} ({vm.get('instance_type') or '-'}, "
        f"stops after {vm['idle_minutes']} idle min or {vm['max_hours']:g} h)"
    )
    return 0


def cmd_vm_stop(args) -> int:
    vm = _client(args).vm_stop(args.vm_id)
    _console().print(f"{vm['vm_id']} {vm['name']}: {vm['status']}")
    return 0


def cmd_vm_list(args) -> int:
    from rich.table import Table

    table = Table("VM ID", "NAME", "OWNER", "STATUS", "BACKEND", "TYPE", "IDLE MIN", "MAX H", "STARTED", "STOP REASON")
    for vm in _client(args).vm_list():
        table.add_row(
            vm["vm_id"],
            vm["name"],
            vm["owner"],
            vm["status"],
            vm["backend"],
            vm.get("instance_type") or "-",
            str(vm["idle_minutes"]),
            f"{vm['max_hours']:g}",
            (vm.get("started_at") or "-")[:19],
            vm.get("stop_reason") or "",
        )
    _console().print(table)
    return 0


# --- inference endpoints -------------------------------------------------------------------
def _endpoint_line(e: dict) -> str:
    rate = e.get("cost_per_hour_usd")
    cost = f"${rate:,.2f}/h, ${e.get('cost_estimate_usd') or 0:,.2f} so far" if rate is not None else "cost unknown"
    return f"{e['endpoint_id']} {e['name']}: {e['status']} on {e['backend']} at {e.get('url') or '-'} ({cost})"


def _wait_endpoint(client: Client, endpoint: dict, timeout: float, interval: float = 0.5) -> dict:
    deadline = time.monotonic() + timeout
    while endpoint["status"] in ("CREATING", "UPDATING") and time.monotonic() < deadline:
        time.sleep(interval)
        endpoint = client.endpoint_get(endpoint["endpoint_id"])
    return endpoint


def cmd_endpoint_deploy(args) -> int:
    client = _client(args)
    if args.file:
        path = Path(args.file)
        text = sys.stdin.read() if args.file == "-" else path.read_text()
        base = Path.cwd() if args.file == "-" else path.resolve().parent
        say = lambda line: _console().print(line, markup=False, soft_wrap=True)  # noqa: E731
        text, is_yaml = with_uploaded_code(client, text, base, args.workdir, say)
        if not is_yaml:
            document = json.loads(text)
            document.pop("code_sha256", None)  # an endpoint's code is named by its URI alone
            text = json.dumps(document)
    elif args.from_job:
        body = {
            "name": args.name or f"job-{args.from_job[:8]}",
            "model": {"from_job": args.from_job},
            "handler": args.handler,
            "backend": args.backend,
            "idle_minutes": args.idle_minutes,
        }
        text, is_yaml = json.dumps(body), False
    else:
        raise CliError("give an endpoint spec FILE, or --from-job JOB_ID --handler serve.py")
    endpoint = client.endpoint_create(text, yaml=is_yaml)
    if args.wait:
        endpoint = _wait_endpoint(client, endpoint, args.timeout)
    _console().print(_endpoint_line(endpoint), markup=False)
    if endpoint.get("plan_reason"):
        _console().print(f"  backend: {endpoint['plan_reason']}", markup=False)
    if endpoint["status"] == "FAILED":
        _console().print(f"  failed: {endpoint.get('failure_reason')}", markup=False)
        return 1
    return 0


def cmd_endpoint_list(args) -> int:
    from rich.table import Table

    endpoints = _client(args).endpoint_list()
    if args.json:
        print(json.dumps(endpoints, indent=2))
        return 0
    table = Table("ENDPOINT ID", "NAME", "OWNER", "STATUS", "BACKEND", "INVOCATIONS", "LAST INVOKED", "$/H", "URL")
    for e in endpoints:
        rate = e.get("cost_per_hour_usd")
        table.add_row(
            e["endpoint_id"],
            e["name"],
            e["owner"],
            e["status"],
            e["backend"],
            str(e["invocations"]),
            (e.get("last_invoked_at") or "-")[:19],
            "-" if rate is None else f"{rate:,.2f}",
            e.get("url") or "-",
        )
    _console().print(table)
    return 0


def cmd_endpoint_status(args) -> int:
    client = _client(args)
    endpoint = client.endpoint_get(args.endpoint_id)
    out = _console()
    out.print(_endpoint_line(endpoint), markup=False)
    for key in ("model_uri", "handler", "version", "invocations", "idle_minutes", "plan_reason", "failure_reason"):
        if endpoint.get(key) not in (None, ""):
            out.print(f"  {key}: {endpoint[key]}", markup=False)
    if endpoint.get("deleted_reason"):
        out.print(f"  deleted: {endpoint['deleted_reason']} (by {endpoint.get('deleted_by')})", markup=False)
    for event in client.endpoint_events(args.endpoint_id):
        out.print(
            f"  {event['at'][:19]}  {event['from'] or '-':>10} -> {event['to']:<10} {event['reason']}", markup=False
        )
    return 0


def cmd_endpoint_invoke(args) -> int:
    body = sys.stdin.buffer.read()
    answer = _client(args).endpoint_invoke(args.endpoint_id, body)
    print(json.dumps(answer, indent=2))
    return 0


def cmd_endpoint_update(args) -> int:
    change = {"handler": args.handler, "idle_minutes": args.idle_minutes}
    if args.from_job:
        change["model"] = {"from_job": args.from_job}
    elif args.model_uri:
        change["model"] = {"uri": args.model_uri}
    change = {k: v for k, v in change.items() if v is not None}
    client = _client(args)
    endpoint = client.endpoint_update(args.endpoint_id, change)
    if args.wait:
        endpoint = _wait_endpoint(client, endpoint, args.timeout)
    _console().print(_endpoint_line(endpoint) + f" v{endpoint['version']}", markup=False)
    return 0 if endpoint["status"] != "FAILED" else 1


def cmd_endpoint_delete(args) -> int:
    endpoint = _client(args).endpoint_delete(args.endpoint_id)
    _console().print(_endpoint_line(endpoint), markup=False)
    return 0


# --- tokens --------------------------------------------------------------------------------
def _admin_settings(args):
    """The deployment's settings, for admin commands that act on tables directly (tokens, Slack users)."""
    from chalicelib.config import Settings

    local = read_state(state_dir(args.local_dir))
    env = dict(os.environ)
    if local:
        env.update(local["env"])
        env.setdefault("AWS_ACCESS_KEY_ID", "local")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "local")
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    return Settings.from_env(env)


def cmd_token_create(args) -> int:
    from chalicelib.auth import create_token
    from chalicelib.store.tokens import DynamoTokenStore

    print(create_token(DynamoTokenStore(_admin_settings(args)), args.user, admin=args.admin))
    return 0


def cmd_token_list(args) -> int:
    from rich.table import Table

    tokens = _client(args).token_list(args.user)
    if args.json:
        print(json.dumps(tokens, indent=2))
        return 0
    table = Table("TOKEN ID", "USER", "ADMIN", "CREATED")
    for t in tokens:
        table.add_row(t["token_id"], t["user"], "yes" if t["admin"] else "", t["created_at"][:19])
    _console().print(table)
    return 0


def cmd_token_revoke(args) -> int:
    revoked = _client(args).token_revoke(args.token_id)
    print(f"revoked token {revoked['token_id']} of {revoked['user']}: requests with it now get 401")
    return 0


def cmd_slack_map(args) -> int:
    from chalicelib.notify.users import map_slack_user
    from chalicelib.store.slack import DynamoSlackStore

    map_slack_user(DynamoSlackStore(_admin_settings(args)), args.slack_user_id, args.user)
    _console().print(f"Slack user {args.slack_user_id} acts as jobplane user {args.user}")
    return 0


# --- prices --------------------------------------------------------------------------------
def cmd_prices_refresh(args) -> int:
    from chalicelib.pricing import refresh

    only = [p.strip() for p in args.only.split(",") if p.strip()]
    if not only or set(only) - set(refresh.REFRESHABLE):
        raise CliError(f"--only takes a comma-separated list of {', '.join(refresh.REFRESHABLE)}, got {args.only!r}")
    api_key = args.gcp_api_key or os.environ.get("JOBPLANE_GCP_API_KEY")
    if "gce" in only and not api_key and not args.gcp_endpoint:
        raise CliError("gce prices need a Cloud Billing Catalog API key: --gcp-api-key or $JOBPLANE_GCP_API_KEY")
    aws = bool({"ec2", "sagemaker"} & set(only))
    reports = refresh.refresh(
        Path(args.output) if args.output else refresh.DATA_DIR,
        providers=only,
        pricing_client=refresh.aws_client("pricing", refresh.PRICING_REGION) if aws else None,
        ec2_client_for=lambda region: refresh.aws_client("ec2", region),
        gcp_base_url=args.gcp_endpoint or refresh.GCP_BILLING_URL,
        gcp_api_key=api_key,
    )
    out = _console()
    for report in reports:
        out.print(report.line(), markup=False)
        for problem in report.unknown:
            out.print(f"  unknown: {problem}", markup=False)
    return 0


# --- local stack ---------------------------------------------------------------------------
def cmd_local_up(args) -> int:
    import signal

    from jobplane.local.stack import LocalStack

    directory = state_dir(args.local_dir)
    if read_state(directory):
        raise CliError(f"a local stack is already running from {directory}")
    out = _console()
    stack = LocalStack(
        directory,
        api_port=args.port,
        reconcile_seconds=args.reconcile_seconds,
        echo=lambda line: out.print(line, markup=False),
        backends=args.backends,
    )

    def _stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    # Both ways of asking it to stop, even when SIGINT was inherited as ignored (a CI worker, nohup).
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        state = stack.start()
    except BaseException as exc:
        stack.stop()
        if isinstance(exc, KeyboardInterrupt):
            return 130
        from chalicelib.errors import ConfigError
        from jobplane.local.emulator import StateLocked
        from jobplane.local.server import port_in_use
        from jobplane.local.stack import StackError

        if port_in_use(exc):
            # Short enough for one 80-column line: a second stack is the usual cause.
            raise CliError(f"port {args.port} is already in use (another local up?); pass --port N") from None
        if isinstance(exc, StateLocked | StackError | ConfigError):
            raise CliError(str(exc)) from None
        raise
    try:
        restored = state["restored"]
        out.print(
            f"[bold green]jobplane local stack up[/]: API {state['api']}, embedded AWS "
            f"{state['aws_endpoint']}, functions {state['functions']}, uploads s3://{state['upload_bucket']}"
        )
        out.print(
            f"dashboard [bold]{state['dashboard']}[/]: sign in with a token from "
            f"`jobplane token create YOUR_NAME` (run in this folder while the stack is up)"
        )
        out.print(
            f"state folder {state['state_dir']}: {restored['applied']} stored writes restored "
            f"in {restored['seconds']:.2f}s; it survives Ctrl-C, kill -9 and reboots"
        )
        backends = state["backends"]
        vms = state.get("vms")
        line = f"backends {', '.join(backends)}"
        if vms is not None:
            line += (
                f"; ec2 jobs run their user data as local processes (fake VMs in {state['state_dir']}/vms: "
                f"{vms['running']} running adopted, {vms['restored']} instances restored)"
            )
        out.print(line, markup=False)
        out.print("Ctrl-C stops the stack; running local jobs keep running and are adopted at the next start.")
        stack.wait()
    except KeyboardInterrupt:
        pass
    finally:
        out.print("stopping the local stack ...")
        stack.stop()
    return 0


def cmd_local_invoke(args) -> int:
    import requests

    local = read_state(state_dir(args.local_dir))
    if not local:
        raise CliError("no local stack is running here: start one with `jobplane local up`")
    payload = sys.stdin.read()
    url = f"{local['functions']}/2015-03-31/functions/{args.function}/invocations"
    # Functions take raw events a cloud would send: only an admin may feed them.
    token = args.token or os.environ.get("JOBPLANE_TOKEN") or local.get("admin_token")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    resp = requests.post(url, data=payload.encode(), headers=headers, timeout=60)
    print(resp.text)
    return 0 if resp.status_code == 200 and "errorType" not in resp.text[:200] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobplane", description="Serverless control plane for ML training jobs")
    parser.add_argument("--version", action="version", version=f"jobplane {__version__}")
    parser.add_argument("--api", help="API address (default: $JOBPLANE_API, else the running local stack)")
    parser.add_argument("--token", help="bearer token (default: $JOBPLANE_TOKEN, else the local stack's admin)")
    parser.add_argument("--local-dir", help="local stack state folder (default: $JOBPLANE_LOCAL_DIR or .jobplane)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", help="submit a job spec (YAML or JSON file, or - for stdin)")
    p.add_argument("file")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; exit 0 only on SUCCEEDED")
    p.add_argument("--idempotency-key")
    p.add_argument("--workdir", help="pack and upload this folder as the job's code (instead of the spec's workdir)")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("list", help="list jobs, newest first")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--next-token")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("status", help="show one job and its history")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("metrics", help="a job's metric series (JOBPLANE_METRICS lines), one row per line")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("artifacts", help="list the files a job wrote to $JOBPLANE_OUTPUT_DIR, or download them")
    p.add_argument("job_id")
    p.add_argument("--download", metavar="DIR", help="fetch every file into DIR, keeping its relative path")
    p.set_defaults(func=cmd_artifacts)

    p = sub.add_parser("logs", help="print a job's output")
    p.add_argument("job_id")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument(
        "--node", type=int, metavar="RANK", help="one node's output of a multi-node job (default: all, merged)"
    )
    p.set_defaults(func=cmd_logs)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    p = token.add_parser("create", help="create a token for USER and print it (alone) on stdout")
    p.add_argument("user")
    p.add_argument("--admin", action="store_true")
    p.set_defaults(func=cmd_token_create)
    p = token.add_parser("list", help="your tokens (an admin's: everyone's, or --user's), by id, never the token")
    p.add_argument("--user")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_token_list)
    p = token.add_parser("revoke", help="revoke a token by the id `token list` shows (or a unique prefix)")
    p.add_argument("token_id")
    p.set_defaults(func=cmd_token_revoke)

    vm = sub.add_parser("vm", help="dev VMs: GPU boxes that stop themselves").add_subparsers(
        dest="vm_command", required=True
    )
    p = vm.add_parser("start", help="create a dev VM (--name ...) or start a stopped one (VM_ID)")
    p.add_argument("vm_id", nargs="?")
    p.add_argument("--name")
    p.add_argument("--backend", help="ec2 or gce (default: the deployment's first dev VM backend)")
    p.add_argument("--gpu-type", help="default: the backend's (A10G on ec2, L4 on gce)")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--spot", action="store_true")
    p.add_argument("--idle-minutes", type=int, default=30)
    p.add_argument("--max-hours", type=float, default=8)
    p.set_defaults(func=cmd_vm_start)
    p = vm.add_parser("stop", help="stop a dev VM (its disk is kept)")
    p.add_argument("vm_id")
    p.set_defaults(func=cmd_vm_stop)
    p = vm.add_parser("list", help="your dev VMs")
    p.set_defaults(func=cmd_vm_list)

    ep = sub.add_parser("endpoint", help="inference endpoints: serve a trained model behind your handler")
    endpoint = ep.add_subparsers(dest="endpoint_command", required=True)
    p = endpoint.add_parser("deploy", help="deploy an endpoint spec FILE, or --from-job ID --handler serve.py")
    p.add_argument("file", nargs="?")
    p.add_argument("--from-job", help="serve this SUCCEEDED job's artifacts")
    p.add_argument("--handler", default="serve.py", help="the handler file (in the model's files or the job's code)")
    p.add_argument("--name")
    p.add_argument("--backend", default="auto")
    p.add_argument("--idle-minutes", type=int, default=60, help="delete after this long without invocations; 0 never")
    p.add_argument("--workdir", help="pack and upload this folder as the endpoint's code (holding the handler)")
    p.add_argument("--wait", action="store_true", help="wait until it is IN_SERVICE (or FAILED)")
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(func=cmd_endpoint_deploy)
    p = endpoint.add_parser("list", help="your endpoints")
    p.add_argument("--json", action="store_true", help="the API's JSON instead of a table")
    p.set_defaults(func=cmd_endpoint_list)
    p = endpoint.add_parser("status", help="one endpoint and its history")
    p.add_argument("endpoint_id")
    p.set_defaults(func=cmd_endpoint_status)
    p = endpoint.add_parser("invoke", help="send the JSON on stdin, print the handler's answer")
    p.add_argument("endpoint_id")
    p.set_defaults(func=cmd_endpoint_invoke)
    p = endpoint.add_parser("update", help="roll out a new model or handler")
    p.add_argument("endpoint_id")
    p.add_argument("--handler")
    p.add_argument("--from-job")
    p.add_argument("--model-uri")
    p.add_argument("--idle-minutes", type=int)
    p.add_argument("--wait", action="store_true")
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(func=cmd_endpoint_update)
    p = endpoint.add_parser("delete", help="delete an endpoint")
    p.add_argument("endpoint_id")
    p.set_defaults(func=cmd_endpoint_delete)

    slack = sub.add_parser("slack", help="Slack administration").add_subparsers(dest="slack_command", required=True)
    p = slack.add_parser("map", help="let a Slack member act as a jobplane user in /jobplane commands")
    p.add_argument("slack_user_id")
    p.add_argument("user")
    p.set_defaults(func=cmd_slack_map)

    prices = sub.add_parser("prices", help="the price catalog (admin)").add_subparsers(
        dest="prices_command", required=True
    )
    p = prices.add_parser(
        "refresh", help="rebuild the price catalog from the AWS Price List and Cloud Billing Catalog APIs"
    )
    p.add_argument("--output", help="folder for the catalog's JSON tables (default: the package's own)")
    p.add_argument("--only", default="ec2,sagemaker,gce", help="providers to rebuild (default: all three)")
    p.add_argument("--gcp-api-key", help="Cloud Billing Catalog API key (default: $JOBPLANE_GCP_API_KEY)")
    p.add_argument("--gcp-endpoint", help=argparse.SUPPRESS)  # a loopback fake in tests
    p.set_defaults(func=cmd_prices_refresh)

    local = sub.add_parser("local", help="the local stack").add_subparsers(dest="local_command", required=True)
    p = local.add_parser("up", help="run the whole control plane here until Ctrl-C")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--reconcile-seconds", type=float, default=10.0)
    p.add_argument(
        "--backends",
        help="backends to run, comma separated: local and the AWS ones (sagemaker, aws-batch, ecs, ec2) "
        "against the embedded AWS (default: $JOBPLANE_BACKENDS, else local)",
    )
    p.set_defaults(func=cmd_local_up)
    p = local.add_parser("invoke", help="feed a raw event (stdin) to a function by name")
    p.add_argument("function")
    p.set_defaults(func=cmd_local_invoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ApiError as exc:
        _console(stderr=True).print(f"[red]error[/]: {exc}", markup=True)
        return 2
    except CliError as exc:
        _console(stderr=True).print(f"[red]error[/]: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from chalicelib.errors import JobplaneError

        if not isinstance(exc, JobplaneError):
            raise
        details = "".join(f"\n  - {d.get('field')}: {d.get('message')}" for d in exc.details)
        _console(stderr=True).print(f"[red]error[/]: {exc.message}{details}", markup=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
