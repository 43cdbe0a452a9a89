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

    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (a pipe, a file): full values, never cut to 80 columns.
    width = None if stream.isatty() else 1_000_000
    return Console(stderr=stderr, highlight=False, width=width, file=stream)


class CliError(Exception):
    pass


def _client(args) -> Client:
    """The HTTP client: --api/--token, else --profile's, else $JOBPLANE_API/$JOBPLANE_TOKEN, else the default
    profile, else the local stack running from this folder."""
    from jobplane.sdk import read_profile

    profile_name = getattr(args, "profile", None)
    profile = read_profile(profile_name)
    chosen = profile if profile_name or os.environ.get("JOBPLANE_PROFILE") else {}
    fallback = {} if chosen else profile
    local_dir = getattr(args, "local_dir", None) or profile.get("local_dir")
    local = read_state(state_dir(local_dir)) or {}
    api = getattr(args, "api", None) or chosen.get("api") or os.environ.get("JOBPLANE_API") or fallback.get("api")
    token = (
        getattr(args, "token", None)
        or chosen.get("token")
        or os.environ.get("JOBPLANE_TOKEN")
        or fallback.get("token")
        or local.get("admin_token")
    )
    api = api or local.get("api")
    if not api:
        raise CliError(
            "no API address: pass --api, set JOBPLANE_API, add a profile to "
            f"{_config_path()}, or start `jobplane local up` here"
        )
    if not token:
        raise CliError("no token: pass --token, set JOBPLANE_TOKEN or a profile's token (see `jobplane token create`)")
    return Client(api, token, timeout=float(chosen.get("timeout") or fallback.get("timeout") or 30.0))


def _config_path() -> Path:
    from jobplane.sdk import config_path

    return config_path()


def _output(args, default: str = "table") -> str:
    """--output, with the older --json as its alias."""
    chosen = getattr(args, "output", None)
    if chosen:
        return chosen
    return "json" if getattr(args, "json", False) else default


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def _read_spec_arg(path: str):
    """(text, base folder, name) of a spec argument: a file, or - for stdin."""
    from jobplane.sdk import read_spec

    if path == "-":
        return sys.stdin.read(), Path.cwd(), "stdin"
    return read_spec(Path(path))


# --- jobs ----------------------------------------------------------------------------------
def cmd_submit(args) -> int:
    from jobplane.sdk import parse_spec_text

    text, base, source = _read_spec_arg(args.file)
    parse_spec_text(text, source)  # YAML errors and duplicate keys, with their line, before any request
    client = _client(args)
    output = _output(args)
    # What was uploaded: with the prose of a table; on stderr when stdout is for a script (json, ids).
    said = _console(stderr=output != "table" or args.dry_run)
    say = lambda line: said.print(line, markup=False, soft_wrap=True)  # noqa: E731
    # A spec's workdir is relative to the spec file; --workdir (and a spec from stdin) to the current folder.
    text, is_yaml = with_uploaded_code(client, text, base, args.workdir, say)
    if args.dry_run:
        return _print_dry_run(client.submit(text, yaml=is_yaml, dry_run=True), output)
    job = client.submit(text, idempotency_key=args.idempotency_key, yaml=is_yaml)
    out = _console()
    if output == "json" and not args.wait:
        _print_json(job)
    elif output == "ids":
        print(job["job_id"], flush=True)
    elif output == "table":
        out.print(f"submitted [bold]{job['name']}[/] as [bold]{job['job_id']}[/] on {job['backend']} ({job['status']})")
    if not args.wait:
        return 0
    try:
        if output == "table":
            job = _follow(client, job["job_id"], args.interval, args.timeout)
        else:
            job = _sdk_of(client).wait(job["job_id"], args.timeout, args.interval).raw
    except KeyboardInterrupt:
        _console(stderr=True).print(
            f"stopped waiting: job {job['job_id']} keeps running; follow it with "
            f"`jobplane logs {job['job_id']} --follow` or `jobplane status {job['job_id']}`",
            markup=False,
            soft_wrap=True,
        )
        return 130
    if output == "table":
        out.print()
        _print_job(job)
    elif output == "json":
        _print_json(job)
    return 0 if job["status"] == "SUCCEEDED" else 1


def _sdk_of(client: Client):
    from jobplane.sdk import Client as Sdk

    return Sdk(transport=client)


def _print_dry_run(plan: dict, output: str) -> int:
    if output == "json":
        _print_json(plan)
        return 0
    if output == "ids":
        print(plan["backend"])
        return 0
    out = _console()
    out.print(f"dry run: nothing was stored or launched; this job would run on {plan['backend']}", markup=False)
    out.print(f"  why: {plan['planner_reason']}", markup=False, soft_wrap=True)
    out.print(f"  candidates, in failover order: {', '.join(plan.get('candidates') or [])}", markup=False)
    if plan.get("region"):
        out.print(f"  region: {plan['region']}", markup=False)
    request = plan.get("request")
    if request is None:
        out.print(f"  request: {plan.get('request_note')}", markup=False, soft_wrap=True)
        return 0
    for call in request["calls"]:
        out.print(f"{request['service']} {call['operation']}:", markup=False)
        out.print(json.dumps(call["request"], indent=2, default=str), markup=False, soft_wrap=True)
    return 0


def cmd_validate(args) -> int:
    from chalicelib.errors import ValidationError
    from chalicelib.jobs.spec import parse_spec
    from jobplane.sdk import parse_spec_text

    text, _, source = _read_spec_arg(args.file)
    document = parse_spec_text(text, source)
    try:
        spec = parse_spec(document)
    except ValidationError as exc:
        err = _console(stderr=True)
        err.print(f"{source}: {exc.message}", markup=False, soft_wrap=True)
        for detail in exc.details[1:]:
            err.print(f"  - {detail.get('field')}: {detail.get('message')}", markup=False, soft_wrap=True)
        return 1
    res = spec.resources
    gpus = f"{res.gpus} x {res.gpu_type or 'GPU'}" if res.gpus else "no GPU"
    where = spec.backend or "auto"
    _console().print(
        f"{source}: a valid job spec: {spec.name!r}, backend {where}, {gpus}, at most "
        f"{spec.max_runtime_minutes} min (`jobplane submit --dry-run {args.file}` shows where it would run)",
        markup=False,
        soft_wrap=True,
    )
    return 0


def with_uploaded_code(
    client: Client, text: str, base: Path, workdir: str | None, say=print, job: bool = True
) -> tuple[str, bool]:
    """The spec to submit: with a workdir (the spec's or --workdir), packed, uploaded unless the store has that
    digest already, and replaced by code_uri + code_sha256. Returns (text, is_yaml). A job spec's backend
    picks the store (Cloud Storage for vertex and gce); an endpoint spec's code goes where it always did."""
    import yaml

    from chalicelib.jobs.spec import _yaml_loader
    from jobplane.sdk import upload_code
    from jobplane.sdk_errors import SpecError

    try:
        document = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return text, True  # the API says what is wrong with it
    try:
        return upload_code(client, text, document, base, workdir, say, job=job)
    except SpecError as exc:
        raise CliError(str(exc)) from None


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
    from rich.markup import escape
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
    spent = job.get("cost")
    if spent:
        table.add_row("cost", escape(spent["text"]) + ("" if spent.get("final") else " so far"))
    out.print(table)
    if spent and spent.get("attempts"):
        out.print("cost by attempt:")
        for a in spent["attempts"]:
            out.print(f"  {_attempt_cost(a)}", markup=False)
    if job.get("metrics"):
        from chalicelib.jobs.metrics import format_value

        out.print("metrics:")
        for key, value in sorted(job["metrics"].items()):
            out.print(f"  {key}  {format_value(value)}", markup=False)
    if events:
        out.print("history:")
        for e in events:
            out.print(f"  {e['at']}  {e['from'] or '-':>10} -> {e['to']:<10} [{e['source']}] {e['reason']}")


def _attempt_cost(a: dict) -> str:
    """'attempt 1  ec2 g5.xlarge spot in us-east-1  $0.4523/h x 1.500 h = $0.68 (prices of 2026-01-21)'."""
    head = f"attempt {a['attempt']}  {a['priced']}"
    if a.get("usd") is None:
        return f"{head}  unknown ({a.get('reason') or 'no price'})"
    rate = f"${a['usd_per_hour']:,.4f}/h" if a.get("usd_per_hour") is not None else "no rate"
    dated = f" (prices of {a['prices_of']})" if a.get("prices_of") else ""
    note = f"; {a['reason']}" if a.get("reason") else ""
    state = "" if a.get("final") else ", so far"
    return f"{head}  {rate} x {a['hours']:.3f} h = ${a['usd']:,.2f}{dated}{state}{note}"


def _emit(args, items: list[dict], id_key: str, columns: dict, title: str | None = None) -> None:
    """A listing as --output asks: a table (COLUMN: value of an item), the API's JSON, or the ids alone."""
    output = _output(args)
    if output == "json":
        _print_json(items)
        return
    if output == "ids":
        for item in items:
            print(item[id_key])
        return
    from rich.table import Table

    table = Table(*columns, title=title)
    for item in items:
        table.add_row(*(render(item) for render in columns.values()))
    _console().print(table)


def _cost(value) -> str:
    return "-" if value is None else f"{value:.2f}"


JOB_COLUMNS = {
    "JOB ID": lambda j: j["job_id"],
    "NAME": lambda j: j["name"],
    "OWNER": lambda j: j["owner"],
    "STATUS": lambda j: f"[{STATUS_STYLE.get(j['status'], '')}]{j['status']}[/]",
    "BACKEND": lambda j: j["backend"],
    "CREATED": lambda j: (j.get("created_at") or "-")[:19],
    "COST $": lambda j: _cost(j.get("cost_estimate_usd")),
}


def cmd_list(args) -> int:
    body = _client(args).list(args.status.upper() if args.status else None, args.limit, args.next_token)
    _emit(args, body["jobs"], "job_id", JOB_COLUMNS)
    if body.get("next_token"):
        # On stderr: stdout stays the listing alone (JSON, ids) for a script.
        print(f"more: --next-token {body['next_token']}", file=sys.stderr)
    return 0


def _job_id(args, client: Client | None = None) -> str:
    """The job the command names: its id, a unique id prefix (4+ characters) or a unique name."""
    return _sdk_of(client or _client(args)).resolve(args.job_id)


def cmd_status(args) -> int:
    client = _client(args)
    job_id = _job_id(args, client)
    output = _output(args)
    if output == "json":
        _print_json(client.get(job_id))
    elif output == "ids":
        print(job_id)
    else:
        _print_job(client.get(job_id), client.events(job_id))
    return 0


def cmd_metrics(args) -> int:
    from rich.table import Table

    from chalicelib.jobs.metrics import format_value

    client = _client(args)
    job_id = _job_id(args, client)
    body = client.metrics(job_id)
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    series = body["series"]
    if not series:
        _console().print(f"{job_id}: no metrics reported (JOBPLANE_METRICS lines) yet")
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
    client = _client(args)
    job = client.cancel(_job_id(args, client))
    _console().print(f"{job['job_id']}: {job['status']}")
    return 0


def cmd_artifacts(args) -> int:
    client = _client(args)
    found = _sdk_of(client).artifacts(_job_id(args, client))
    items = [a.raw for a in found.items]
    out = _console()
    if not args.download:
        columns = {
            "KEY": lambda a: a["key"],
            "SIZE": lambda a: str(a["size"]),
            "MODIFIED": lambda a: (a["last_modified"] or "-")[:19],
        }
        _emit(args, items, "key", columns, title=found.artifacts_uri)
        return 0
    target = Path(args.download).resolve()
    # Every key is checked before anything is written: a key may not leave the folder.
    places = [(item, safe_destination(target, item["key"])) for item in items]
    for item, dest in places:
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download(item["url"], dest)
        out.print(f"{item['key']} ({item['size']} bytes) -> {dest}", markup=False, soft_wrap=True)
    out.print(f"{len(places)} files from {found.artifacts_uri} in {target}", markup=False, soft_wrap=True)
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
    said = None
    try:
        # --node N: that node's output alone (a multi-node job); without it every node's, merged
        node = getattr(args, "node", None)
        for chunk in _sdk_of(client).log_chunks(_job_id(args, client), follow=args.follow, node=node):
            if chunk.text:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
            elif chunk.note and chunk.note != said:
                # Why there is nothing to print (not started, not shipped yet): once per change, on stderr.
                print(f"jobplane: {chunk.note}", file=sys.stderr, flush=True)
                said = chunk.note
    except KeyboardInterrupt:
        return 130  # Ctrl-C is how a --follow ends before the job does: nothing to say
    return 0


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
    columns = {
        "VM ID": lambda vm: vm["vm_id"],
        "NAME": lambda vm: vm["name"],
        "OWNER": lambda vm: vm["owner"],
        "STATUS": lambda vm: vm["status"],
        "BACKEND": lambda vm: vm["backend"],
        "TYPE": lambda vm: vm.get("instance_type") or "-",
        "IDLE MIN": lambda vm: str(vm["idle_minutes"]),
        "MAX H": lambda vm: f"{vm['max_hours']:g}",
        "STARTED": lambda vm: (vm.get("started_at") or "-")[:19],
        "STOP REASON": lambda vm: vm.get("stop_reason") or "",
    }
    _emit(args, _client(args).vm_list(), "vm_id", columns)
    return 0


# --- inference endpoints -------------------------------------------------------------------
def _endpoint_line(e: dict) -> str:
    rate = e.get("cost_per_hour_usd")
    cost = f"${rate:,.2f}/h, ${e.get('cost_estimate_usd') or 0:,.2f} so far" if rate is not None else "cost unknown"
    if rate is None and e.get("cost_unknown_reason"):
        cost += f": {e['cost_unknown_reason']}"
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
        from jobplane.sdk import parse_spec_text

        text, base, source = _read_spec_arg(args.file)
        parse_spec_text(text, source)
        say = lambda line: _console().print(line, markup=False, soft_wrap=True)  # noqa: E731
        text, is_yaml = with_uploaded_code(client, text, base, args.workdir, say, job=False)
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
    columns = {
        "ENDPOINT ID": lambda e: e["endpoint_id"],
        "NAME": lambda e: e["name"],
        "OWNER": lambda e: e["owner"],
        "STATUS": lambda e: e["status"],
        "BACKEND": lambda e: e["backend"],
        "INVOCATIONS": lambda e: str(e["invocations"]),
        "LAST INVOKED": lambda e: (e.get("last_invoked_at") or "-")[:19],
        "$/H": lambda e: "-" if e.get("cost_per_hour_usd") is None else f"{e['cost_per_hour_usd']:,.2f}",
        "URL": lambda e: e.get("url") or "-",
    }
    _emit(args, _client(args).endpoint_list(), "endpoint_id", columns)
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

    local = read_state(state_dir(getattr(args, "local_dir", None)))
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
    columns = {
        "TOKEN ID": lambda t: t["token_id"],
        "USER": lambda t: t["user"],
        "ADMIN": lambda t: "yes" if t["admin"] else "",
        "CREATED": lambda t: t["created_at"][:19],
    }
    _emit(args, _client(args).token_list(args.user), "token_id", columns)
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
# --- budgets and the cost report ------------------------------------------------------------
def cmd_budget_set(args) -> int:
    body = {"limit_usd": args.limit_usd, "on_exceed": args.on_exceed, "hard": args.hard}
    body.update({"owner": args.owner} if args.owner else {"label": args.label})
    budget = _client(args).budget_set(body)
    hard = ", hard: running jobs are stopped at 100 %" if budget["hard"] else ""
    print(f"budget {budget['budget_id']}: ${budget['limit_usd']:,.2f} a month, {budget['on_exceed']} past it{hard}")
    return 0


def cmd_budget_list(args) -> int:
    from rich.table import Table

    budgets = _client(args).budget_list()
    if args.json:
        print(json.dumps(budgets, indent=2))
        return 0
    table = Table("BUDGET", "MONTH", "SPENT $", "LIMIT $", "%", "ON EXCEED", "HARD", "JOBS")
    for b in budgets:
        table.add_row(
            b["budget_id"],
            b["month"],
            f"{b['spent_usd']:,.2f}",
            f"{b['limit_usd']:,.2f}",
            f"{b['percent']:.0f}",
            b["on_exceed"],
            "yes" if b["hard"] else "",
            str(b["jobs"]),
        )
    _console().print(table)
    return 0


def cmd_budget_delete(args) -> int:
    budget = _client(args).budget_delete(args.budget_id)
    print(f"deleted budget {budget['budget_id']}")
    return 0


def _hours(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {int(seconds % 60):02d}s"


def _usd(value) -> str:
    return "-" if value is None else f"{value:,.2f}"


def cmd_cost(args) -> int:
    from rich.table import Table

    report = _client(args).cost(args.by, args.since)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    out = _console()
    table = Table("NAME", "LAUNCHED", "DURATION", "RESOURCES", "STATUS", "$/HOUR", "COST $", title="jobs")
    for row in report["rows"]:
        rate = row["hourly_price_usd"]
        table.add_row(
            row["name"],
            row["launched"][:16].replace("T", " "),
            _hours(row["duration_seconds"]),
            f"{row['backend']}, {row['resources']}",
            row["status"],
            "-" if rate is None else f"{rate:,.4f}",
            _usd(row["cost_usd"]),
        )
    out.print(table)
    if report.get("groups") is not None:
        groups = Table(report["by"].upper(), "JOBS", "HOURS", "COST $", title=f"by {report['by']}")
        for g in report["groups"]:
            groups.add_row(g["key"], str(g["jobs"]), f"{g['hours']:,.2f}", _usd(g["cost_usd"]))
        out.print(groups)
    total = report["total"]
    unpriced = f" ({total['unpriced_jobs']} without a price, not counted)" if total["unpriced_jobs"] else ""
    more = "; the 1,000 newest shown" if report["rows_truncated"] else ""
    out.print(
        f"total since {report['since'][:10]} ({report['scope']}): {total['jobs']} jobs, {total['hours']:,.2f} h, "
        f"${total['cost_usd']:,.2f}{unpriced}{more}",
        markup=False,
    )
    return 0


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

    try:  # what the [local] extra installs: a missing one is named, with the install that brings it
        import chalice  # noqa: F401
        import moto  # noqa: F401

        from jobplane.local import emulator, server  # noqa: F401
    except ModuleNotFoundError as exc:
        missing = (exc.name or "?").split(".")[0]
        raise CliError(f"the local stack needs {missing}: pip install 'jobplane[local]'") from None
    from jobplane.local.stack import LocalStack

    directory = state_dir(getattr(args, "local_dir", None))
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

    local = read_state(state_dir(getattr(args, "local_dir", None)))
    if not local:
        raise CliError("no local stack is running here: start one with `jobplane local up`")
    payload = sys.stdin.read()
    url = f"{local['functions']}/2015-03-31/functions/{args.function}/invocations"
    # Functions take raw events a cloud would send: only an admin may feed them.
    token = getattr(args, "token", None) or os.environ.get("JOBPLANE_TOKEN") or local.get("admin_token")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    try:
        resp = requests.post(url, data=payload.encode(), headers=headers, timeout=60)
    except requests.exceptions.RequestException:
        raise CliError(f"the local stack's functions at {local['functions']} do not answer: is it still up?") from None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "errorType" in body:
        if resp.status_code != 200:  # the stack refused the call (no such function, not an admin token)
            raise CliError(f"{body.get('errorMessage')}")
        # Lambda's shape of a failed invocation: the handler's own exception, where it was raised.
        trace = body.get("stackTrace") or []
        where = f" ({trace[-1].strip().splitlines()[0]})" if trace else ""
        print(f"error: {args.function} raised {body['errorType']}: {body.get('errorMessage')}{where}", file=sys.stderr)
        return 1
    print(resp.text)
    return 0 if resp.status_code == 200 else 1


def cmd_completion(args) -> int:
    print(completion_script(build_parser(), args.shell))
    return 0


def _walk(parser: argparse.ArgumentParser, path: str, subs: dict[str, list[str]], opts: dict[str, list[str]]):
    opts[path] = sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs[path] = list(action.choices)
            for name, child in action.choices.items():
                _walk(child, f"{path} {name}", subs, opts)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A completion script for bash or zsh (through bashcompinit), made from the parser itself."""
    subs: dict[str, list[str]] = {}
    opts: dict[str, list[str]] = {}
    _walk(parser, "jobplane", subs, opts)

    def table(name: str, values: dict[str, list[str]]) -> str:
        rows = "".join(f'        ["{k}"]="{" ".join(v)}"\n' for k, v in values.items())
        return f"    local -A {name}=(\n{rows}    )\n"

    body = (
        "_jobplane() {\n"
        + table("subs", subs)
        + table("opts", opts)
        + '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" path="jobplane" w i\n'
        + '    case "$prev" in\n'
        + '        --output|-o) COMPREPLY=($(compgen -W "json table ids" -- "$cur")); return ;;\n'
        + '        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")); return ;;\n'
        + "    esac\n"
        + "    for ((i = 1; i < COMP_CWORD; i++)); do\n"
        + '        w="${COMP_WORDS[i]}"\n'
        + '        if [[ " ${subs[$path]} " == *" $w "* ]]; then path="$path $w"; fi\n'
        + "    done\n"
        + '    if [[ "$cur" == -* ]]; then\n'
        + '        COMPREPLY=($(compgen -W "${opts[$path]}" -- "$cur"))\n'
        + '    elif [[ -n "${subs[$path]}" ]]; then\n'
        + '        COMPREPLY=($(compgen -W "${subs[$path]}" -- "$cur"))\n'
        + "    else\n"
        + '        COMPREPLY=($(compgen -f -- "$cur"))\n'
        + "    fi\n"
        + "}\n"
        + "complete -o default -F _jobplane jobplane\n"
    )
    if shell == "zsh":
        return "#compdef jobplane\nautoload -U +X bashcompinit && bashcompinit\n" + body
    return '# bash completion for jobplane: eval "$(jobplane completion bash)"\n' + body


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobplane", description="Serverless control plane for ML training jobs")
    parser.add_argument("--version", action="version", version=f"jobplane {__version__}")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", help="submit a job spec (YAML or JSON file, or - for stdin)")
    p.add_argument("file")
    _output_option(p)
    p.add_argument(
        "--dry-run", action="store_true", help="show the backend, why, and the provider request; submit nothing"
    )
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; exit 0 only on SUCCEEDED")
    p.add_argument("--idempotency-key")
    p.add_argument("--workdir", help="pack and upload this folder as the job's code (instead of the spec's workdir)")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("validate", help="check a job spec file here, without a server (exit 1 if it is not valid)")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("list", help="list jobs, newest first")
    _output_option(p)
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--next-token")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("status", help="show one job and its history")
    p.add_argument("job_id", metavar="JOB", help="a job id, a unique id prefix (4+ characters) or a unique name")
    _output_option(p)
    p.add_argument("--json", action="store_true", help="same as --output json")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("metrics", help="a job's metric series (JOBPLANE_METRICS lines), one row per line")
    p.add_argument("job_id", metavar="JOB", help="a job id, a unique id prefix (4+ characters) or a unique name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id", metavar="JOB", help="a job id, a unique id prefix (4+ characters) or a unique name")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("artifacts", help="list the files a job wrote to $JOBPLANE_OUTPUT_DIR, or download them")
    p.add_argument("job_id", metavar="JOB", help="a job id, a unique id prefix (4+ characters) or a unique name")
    _output_option(p)
    p.add_argument("--download", metavar="DIR", help="fetch every file into DIR, keeping its relative path")
    p.set_defaults(func=cmd_artifacts)

    p = sub.add_parser("logs", help="print a job's output")
    p.add_argument("job_id", metavar="JOB", help="a job id, a unique id prefix (4+ characters) or a unique name")
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
    _output_option(p)
    p.add_argument("--json", action="store_true", help="same as --output json")
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
    _output_option(p)
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
    _output_option(p)
    p.add_argument("--json", action="store_true", help="same as --output json")
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

    budget = sub.add_parser("budget", help="monthly budgets per owner or label (admin)").add_subparsers(
        dest="budget_command", required=True
    )
    p = budget.add_parser("set", help="set a monthly budget: `budget set --owner alice 500`")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--owner", help="the user whose jobs it covers")
    who.add_argument("--label", help="KEY=VALUE of a job label it covers, e.g. team=vision")
    p.add_argument("limit_usd", type=float, help="USD a month")
    p.add_argument("--on-exceed", choices=["refuse", "hold"], default="refuse", help="a submission past it")
    p.add_argument("--hard", action="store_true", help="at 100 %%, stop the running jobs it covers")
    p.set_defaults(func=cmd_budget_set)
    p = budget.add_parser("list", help="every budget with this month's spend")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_budget_list)
    p = budget.add_parser("delete", help="delete a budget by the id `budget list` shows (owner:alice)")
    p.add_argument("budget_id")
    p.set_defaults(func=cmd_budget_delete)
    p = sub.add_parser("cost", help="what jobs cost (like `sky cost-report`): yours, or everyone's for an admin")
    p.add_argument("--by", choices=["owner", "backend", "label", "month"])
    p.add_argument("--since", help="YYYY-MM-DD (UTC); default the first day of this month")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cost)

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

    p = sub.add_parser("completion", help='print a shell completion script: eval "$(jobplane completion bash)"')
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=cmd_completion)
    _everywhere(parser)
    return parser


def _global_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a value given before the subcommand is not overwritten by the subcommand's unset default.
    none = argparse.SUPPRESS
    parser.add_argument(
        "--api", default=none, help="API address (default: the profile's, $JOBPLANE_API, the local stack)"
    )
    parser.add_argument("--token", default=none, help="bearer token (default: the profile's, $JOBPLANE_TOKEN)")
    parser.add_argument("--profile", default=none, help="a profile of ~/.config/jobplane/config.toml")
    parser.add_argument(
        "--local-dir", default=none, help="local stack state folder (default: $JOBPLANE_LOCAL_DIR or .jobplane)"
    )


def _output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "-o", choices=["table", "json", "ids"], help="table (default), the API's JSON, or ids alone"
    )


def _everywhere(parser: argparse.ArgumentParser) -> None:
    """The global options on every subcommand too: `jobplane list --api URL` as well as `jobplane --api URL list`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _global_options(child)
                _everywhere(child)


def _fail(message: str, hint: str | None = None) -> int:
    text = f"{message}; {hint}" if hint else message
    print(f"error: {text}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    from jobplane.sdk_errors import JobplaneError as SdkError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SdkError as exc:
        return _fail(exc.message, exc.hint)
    except CliError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `jobplane list | head`: the reader left; say nothing more (and nothing at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        from chalicelib.errors import JobplaneError

        if not isinstance(exc, JobplaneError):
            raise
        details = "".join(f"\n  - {d.get('field')}: {d.get('message')}" for d in exc.details)
        return _fail(f"{exc.message}{details}")


if __name__ == "__main__":
    sys.exit(main())
