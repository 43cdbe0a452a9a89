"""jobplane's Python SDK: `from jobplane import Client`; typed results, one exception per kind of failure."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from jobplane import client as http
from jobplane.sdk_errors import AmbiguousJob, NotConfigured, NotFound, SpecError, WaitTimeout

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
ENDPOINT_SETTLED = frozenset({"IN_SERVICE", "FAILED", "DELETED"})
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
LIST_PAGE = 100  # the API's largest page: a name or prefix lookup reads the fewest pages


def _typed(cls, body: dict[str, Any]):
    """A result dataclass from the API's JSON: the fields it knows, and the whole answer as `raw`."""
    known = {f.name for f in fields(cls)} - {"raw"}
    return cls(**{k: body.get(k) for k in known}, raw=body)


# --- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """A job as GET /jobs/{id} shows it (`raw` holds every field of the answer)."""

    job_id: str
    name: str
    owner: str
    status: str
    backend: str
    attempt: int | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    failure_kind: str | None
    failure_reason: str | None
    planner_reason: str | None
    status_reason: str | None
    cost_estimate_usd: float | None
    native_id: str | None
    region: str | None
    artifacts_uri: str | None
    metrics: dict[str, Any] | None
    spec: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


@dataclass(frozen=True)
class JobEvent:
    """One status change in a job's history."""

    at: str
    to: str
    reason: str
    source: str
    native_status: str | None
    attempt: int | None
    from_status: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> JobEvent:
        return _typed(cls, {**body, "from_status": body.get("from")})


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_token: str | None


@dataclass(frozen=True)
class LogChunk:
    """A slice of a job's output; `note` says why there is none yet."""

    text: str
    next_offset: int | str
    complete: bool
    note: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Artifact:
    """A file the job wrote to $JOBPLANE_OUTPUT_DIR, with a presigned download URL."""

    key: str
    size: int
    last_modified: str | None
    url: str
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Artifacts:
    artifacts_uri: str
    items: list[Artifact]


@dataclass(frozen=True)
class DryRun:
    """What submit would do: the backend, why, the failover order, and the provider request it would send."""

    backend: str
    planner_reason: str
    candidates: list[str] | None
    region: str | None
    request: dict[str, Any] | None
    request_note: str | None
    spec: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    name: str
    owner: str
    status: str
    backend: str
    url: str | None
    version: int | None
    model_uri: str | None
    handler: str | None
    invocations: int | None
    idle_minutes: int | None
    cost_per_hour_usd: float | None
    cost_estimate_usd: float | None
    plan_reason: str | None
    failure_reason: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Token:
    token_id: str
    user: str
    admin: bool
    created_at: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)


# --- configuration ---------------------------------------------------------------------------
def config_path() -> Path:
    """$JOBPLANE_CONFIG, else $XDG_CONFIG_HOME/jobplane/config.toml, else ~/.config/jobplane/config.toml."""
    if os.environ.get("JOBPLANE_CONFIG"):
        return Path(os.environ["JOBPLANE_CONFIG"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "jobplane" / "config.toml"


def read_profile(name: str | None = None, path: Path | None = None) -> dict[str, Any]:
    """A profile's table of the config file: `name`, else $JOBPLANE_PROFILE, else `default` (empty if absent).

    A profile named explicitly (argument or $JOBPLANE_PROFILE) must exist; a bad file is an error naming it."""
    import tomllib

    path = path or config_path()
    wanted = name or os.environ.get("JOBPLANE_PROFILE")
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if wanted:
            raise NotConfigured(f"profile {wanted!r} asked for, but there is no config file at {path}") from None
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, IsADirectoryError) as exc:
        raise NotConfigured(f"{path}: not a valid TOML config file ({exc})") from None
    profiles = document.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise NotConfigured(f"{path}: [profiles] must be a table of profiles ([profiles.NAME])")
    chosen = wanted or document.get("default_profile") or "default"
    if chosen not in profiles:
        if wanted or document.get("default_profile"):
            have = ", ".join(sorted(profiles)) or "none"
            raise NotConfigured(f"no profile {chosen!r} in {path} (profiles: {have})")
        return {}
    profile = profiles[chosen]
    unknown = set(profile) - {"api", "token", "token_file", "local_dir", "timeout"}
    if unknown:
        raise NotConfigured(
            f"{path}: profile {chosen!r} has unknown keys {', '.join(sorted(unknown))} "
            "(known: api, token, token_file, local_dir, timeout)"
        )
    if "token_file" in profile and "token" not in profile:
        token_file = Path(profile["token_file"]).expanduser()
        try:
            profile = {**profile, "token": token_file.read_text().strip()}
        except OSError as exc:
            raise NotConfigured(f"profile {chosen!r}: cannot read token_file {token_file} ({exc.strerror})") from None
    return {**profile, "name": chosen}


def _local_stack(local_dir: str | None) -> dict[str, Any] | None:
    from jobplane.local.state import read_state, state_dir

    return read_state(state_dir(local_dir))


# --- spec files ------------------------------------------------------------------------------
def read_spec(spec: str | os.PathLike | dict) -> tuple[str, Path, str]:
    """(text, the folder a workdir is relative to, a name for messages) of a spec given as a path, text or dict.

    A str naming an existing file, or ending in .yaml/.yml/.json, is a path; any other str is the spec's text."""
    if isinstance(spec, dict):
        return json.dumps(spec), Path.cwd(), "the spec"
    if (
        isinstance(spec, str)
        and "\n" not in spec
        and (spec.endswith((".yaml", ".yml", ".json")) or Path(spec).exists())
    ):
        spec = Path(spec)
    if isinstance(spec, os.PathLike):
        path = Path(spec)
        if path.is_dir():
            raise SpecError(f"{path} is a folder, not a spec file", "give the YAML or JSON file inside it")
        try:
            return path.read_text(), path.resolve().parent, str(path)
        except FileNotFoundError:
            raise SpecError(f"{path}: no such spec file", "check the path (or use - for stdin)") from None
        except UnicodeDecodeError:
            raise SpecError(f"{path}: not a text file (a spec is YAML or JSON, UTF-8)") from None
        except OSError as exc:
            raise SpecError(f"{path}: cannot read it ({exc.strerror})") from None
    if isinstance(spec, str):
        return spec, Path.cwd(), "the spec"
    raise TypeError(f"a spec is a path, YAML/JSON text or a dict, not {type(spec).__name__}")


def parse_spec_text(text: str, source: str = "the spec") -> Any:
    """The spec's document, as the API would read it; YAML errors and duplicate keys name the line and column."""
    import yaml

    from chalicelib.jobs.spec import _yaml_loader

    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicate_pairs)
    except ValueError:
        pass
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{source}: invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: invalid YAML: {str(exc).splitlines()[0]}") from None


def _refuse_duplicate_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")  # read again as YAML, which names the key and its line
    return dict(pairs)


def validate_spec(spec: str | os.PathLike | dict):
    """The typed JobSpec the API would accept, checked here without a server (raises SpecError / ValidationError)."""
    from chalicelib.jobs.spec import parse_spec

    text, _, source = read_spec(spec)
    return parse_spec(parse_spec_text(text, source))


# --- the client ------------------------------------------------------------------------------
class Client:
    """jobplane's API from Python. Jobs are named by id, a unique id prefix, a unique name, or a Job."""

    def __init__(self, api: str | None = None, token: str | None = None, timeout: float = 30.0, *, transport=None):
        if transport is None:
            if not api:
                raise NotConfigured(
                    "no API address", "pass api=, set JOBPLANE_API, add a profile, or run `jobplane local up` here"
                )
            if not token:
                raise NotConfigured("no token", "pass token=, set JOBPLANE_TOKEN (see `jobplane token create`)")
            transport = http.Client(api, token, timeout=timeout)
        #: the HTTP layer: one method per route, the API's JSON as it is
        self.http = transport

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def from_env(cls, local_dir: str | None = None) -> Client:
        """$JOBPLANE_API and $JOBPLANE_TOKEN, else the local stack running from this folder (.jobplane)."""
        local = _local_stack(local_dir or os.environ.get("JOBPLANE_LOCAL_DIR")) or {}
        return cls(
            os.environ.get("JOBPLANE_API") or local.get("api"),
            os.environ.get("JOBPLANE_TOKEN") or local.get("admin_token"),
        )

    @classmethod
    def from_config(cls, profile: str | None = None, path: str | os.PathLike | None = None) -> Client:
        """A profile of ~/.config/jobplane/config.toml (`profile`, else $JOBPLANE_PROFILE, else `default`)."""
        settings = read_profile(profile, Path(path) if path else None)
        local = _local_stack(settings.get("local_dir")) if settings.get("local_dir") else None
        return cls(
            settings.get("api") or (local or {}).get("api"),
            settings.get("token") or (local or {}).get("admin_token"),
            timeout=float(settings.get("timeout", 30.0)),
        )

    # --- jobs --------------------------------------------------------------------------------
    def submit(
        self,
        spec: str | os.PathLike | dict,
        wait: bool = False,
        timeout: float | None = None,
        *,
        idempotency_key: str | None = None,
        workdir: str | os.PathLike | None = None,
        on_upload: Callable[[str], None] | None = None,
    ) -> Job:
        """Submit a spec (a path, YAML/JSON text, or a dict); a workdir is packed and uploaded first.

        With wait=True, returns the job once it has ended (a FAILED job is returned, not raised)."""
        text, is_yaml = self._prepared(spec, workdir, on_upload)
        job = _typed(Job, self.http.submit(text, idempotency_key=idempotency_key, yaml=is_yaml))
        return self.wait(job, timeout) if wait else job

    def dry_run(self, spec: str | os.PathLike | dict, *, workdir: str | os.PathLike | None = None) -> DryRun:
        """What submit would do, without storing or launching anything (the code is uploaded if it has a workdir)."""
        text, is_yaml = self._prepared(spec, workdir, None)
        return _typed(DryRun, self.http.submit(text, yaml=is_yaml, dry_run=True))

    def _prepared(self, spec, workdir, say) -> tuple[str, bool]:
        text, base, source = read_spec(spec)
        document = parse_spec_text(text, source)
        return upload_code(self.http, text, document, base, None if workdir is None else str(workdir), say)

    def get(self, job: str | Job) -> Job:
        return _typed(Job, self.http.get(self.resolve(job)))

    def pages(self, status: str | None = None, page_size: int = 20, next_token: str | None = None) -> Iterator[JobPage]:
        """The caller's jobs, newest first, a page at a time (each page is one request)."""
        while True:
            body = self.http.list(status.upper() if status else None, page_size, next_token)
            next_token = body.get("next_token")
            yield JobPage([_typed(Job, j) for j in body["jobs"]], next_token)
            if not next_token:
                return

    def list(self, status: str | None = None, page_size: int = 20, limit: int | None = None) -> Iterator[Job]:
        """The caller's jobs, newest first; pages are fetched as the iteration reaches them."""
        count = 0
        for page in self.pages(status, page_size):
            for job in page.jobs:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield job

    def resolve(self, job: str | Job) -> str:
        """A job's id from its id, a unique id prefix or a unique name; AmbiguousJob lists the candidates."""
        if isinstance(job, Job):
            return job.job_id
        ref = str(job).strip()
        if JOB_ID_RE.fullmatch(ref):
            return ref
        matches: dict[str, str] = {}
        for candidate in self.list(page_size=LIST_PAGE):
            if candidate.name == ref or (len(ref) >= 4 and candidate.job_id.startswith(ref.lower())):
                matches[candidate.job_id] = candidate.name
        if len(matches) == 1:
            return next(iter(matches))
        if not matches:
            raise NotFound(
                404,
                {"error": {"code": "not_found", "message": f"no job of yours has the id, id prefix or name {ref!r}"}},
            )
        raise AmbiguousJob(ref, [f"{job_id} ({name})" for job_id, name in matches.items()])

    def wait(
        self,
        job: str | Job,
        timeout: float | None = None,
        interval: float = 1.0,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job ends and return it; WaitTimeout after `timeout` seconds (the job keeps running)."""
        job_id = self.resolve(job)
        started = time.monotonic()
        while True:
            current = _typed(Job, self.http.get(job_id))
            if on_update is not None:
                on_update(current)
            if current.terminal:
                return current
            if timeout is not None and time.monotonic() - started >= timeout:
                raise WaitTimeout(current, timeout)
            time.sleep(interval)

    def events(self, job: str | Job) -> list[JobEvent]:
        return [JobEvent.from_api(e) for e in self.http.events(self.resolve(job))]

    def cancel(self, job: str | Job) -> Job:
        return _typed(Job, self.http.cancel(self.resolve(job)))

    def metrics(self, job: str | Job) -> dict[str, Any]:
        """{"metrics": latest, "series": {key: [[seq, value], ...]}, ...} as GET /jobs/{id}/metrics answers."""
        return self.http.metrics(self.resolve(job))

    def log_chunks(
        self, job: str | Job, follow: bool = False, interval: float = 1.0, node: int | None = None
    ) -> Iterator[LogChunk]:
        """The job's output as the API slices it; with follow, until the job has ended and all is read.
        `node`: one node's output of a multi-node job (None: every node's, merged)."""
        job_id = self.resolve(job)
        offset: int | str = 0
        while True:
            answer = self.http.logs(job_id, offset) if node is None else self.http.logs(job_id, offset, node=node)
            chunk = _typed(LogChunk, answer)
            yield chunk
            offset = chunk.next_offset  # a byte count or an opaque cursor: passed back unchanged
            if not follow or (chunk.complete and not chunk.text):
                return
            if not chunk.text:
                time.sleep(interval)

    def logs(
        self, job: str | Job, follow: bool = True, interval: float = 1.0, node: int | None = None
    ) -> Iterator[str]:
        """The job's output line by line (without the newline); with follow, until the job has ended."""
        partial = ""
        for chunk in self.log_chunks(job, follow, interval, node=node):
            *lines, partial = (partial + chunk.text).split("\n")
            yield from lines
        if partial:
            yield partial

    def artifacts(self, job: str | Job) -> Artifacts:
        """Every file the job wrote to $JOBPLANE_OUTPUT_DIR (all pages), each with a download URL."""
        job_id = self.resolve(job)
        items: list[Artifact] = []
        cursor = None
        while True:
            page = self.http.artifacts(job_id, cursor)
            items += [_typed(Artifact, a) for a in page["artifacts"]]
            cursor = page.get("next_cursor")
            if not cursor:
                return Artifacts(page["artifacts_uri"], items)

    def download(self, artifact: Artifact, target: str | os.PathLike) -> int:
        """Fetch one artifact into `target` (a file path); returns the bytes written."""
        return self.http.download(artifact.url, target)

    # --- endpoints ----------------------------------------------------------------------------
    def create_endpoint(
        self, spec: str | os.PathLike | dict, *, workdir: str | os.PathLike | None = None, wait: bool = False
    ) -> Endpoint:
        text, base, source = read_spec(spec)
        document = parse_spec_text(text, source)
        text, is_yaml = upload_code(self.http, text, document, base, None if workdir is None else str(workdir), None)
        if not is_yaml:
            document = json.loads(text)
            document.pop("code_sha256", None)  # an endpoint's code is named by its URI alone
            text = json.dumps(document)
        endpoint = _typed(Endpoint, self.http.endpoint_create(text, yaml=is_yaml))
        return self.wait_endpoint(endpoint) if wait else endpoint

    def endpoints(self) -> list[Endpoint]:
        return [_typed(Endpoint, e) for e in self.http.endpoint_list()]

    def get_endpoint(self, endpoint: str | Endpoint) -> Endpoint:
        return _typed(Endpoint, self.http.endpoint_get(_endpoint_id(endpoint)))

    def invoke(self, endpoint: str | Endpoint, payload: Any) -> Any:
        """Send `payload` (anything JSON) to the endpoint's handler; returns its JSON answer."""
        return self.http.endpoint_invoke(_endpoint_id(endpoint), json.dumps(payload).encode())

    def update_endpoint(self, endpoint: str | Endpoint, wait: bool = False, **change: Any) -> Endpoint:
        """Roll out a change (model, handler, code_uri, idle_minutes); the old version serves until it is ready."""
        updated = _typed(Endpoint, self.http.endpoint_update(_endpoint_id(endpoint), change))
        return self.wait_endpoint(updated) if wait else updated

    def delete_endpoint(self, endpoint: str | Endpoint) -> Endpoint:
        return _typed(Endpoint, self.http.endpoint_delete(_endpoint_id(endpoint)))

    def wait_endpoint(self, endpoint: str | Endpoint, timeout: float = 120.0, interval: float = 0.5) -> Endpoint:
        """Poll while CREATING or UPDATING, at most `timeout` seconds; returns the endpoint as it then is."""
        current = endpoint if isinstance(endpoint, Endpoint) else self.get_endpoint(endpoint)
        deadline = time.monotonic() + timeout
        while current.status in ("CREATING", "UPDATING") and time.monotonic() < deadline:
            time.sleep(interval)
            current = self.get_endpoint(current)
        return current

    # --- tokens ---------------------------------------------------------------------------------
    def tokens(self, user: str | None = None) -> list[Token]:
        """Your tokens by id (never the token itself); an admin's: everyone's, or `user`'s."""
        return [_typed(Token, t) for t in self.http.token_list(user)]

    def revoke_token(self, token_id: str) -> Token:
        return _typed(Token, self.http.token_revoke(token_id))


def _endpoint_id(endpoint: str | Endpoint) -> str:
    return endpoint.endpoint_id if isinstance(endpoint, Endpoint) else endpoint


def upload_code(
    transport, text: str, document: Any, base: Path, workdir: str | None, say=None, job: bool = True
) -> tuple[str, bool]:
    """The spec to send: with a workdir (the spec's or `workdir`), packed, uploaded unless the store has that
    digest already, and replaced by code_uri + code_sha256. Returns (text, is_yaml). A job spec's backend
    picks the store (Cloud Storage for vertex and gce); an endpoint spec's code goes where it always did."""
    named = document.get("workdir") if isinstance(document, dict) else None
    if workdir is None and named is None:
        return text, True
    if not isinstance(document, dict):
        raise SpecError("--workdir needs a spec that is a mapping")
    if workdir is not None:
        folder = Path(workdir).resolve()
    elif isinstance(named, str) and named.strip():
        folder = (base / named).resolve()
    else:
        raise SpecError("workdir: must be a folder path (relative to the spec file)")
    from jobplane.pack import PackError, pack

    try:
        packed = pack(folder)
    except PackError as exc:
        raise SpecError(str(exc)) from None
    backend = document.get("backend") if job else None
    answer = transport.code_upload(packed.sha256, packed.size, backend if isinstance(backend, str) else None)
    if answer["exists"]:
        line = f"code: {folder} ({len(packed.files)} files, {packed.size} bytes) is unchanged: nothing uploaded"
    else:
        transport.put_code(answer["upload"], packed.data)
        line = f"code: {folder} ({len(packed.files)} files, {packed.size} bytes) uploaded to {answer['code_uri']}"
    if say is not None:
        say(line)
    document = {k: v for k, v in document.items() if k != "workdir"}
    document.update(code_uri=answer["code_uri"], code_sha256=packed.sha256)
    return json.dumps(document), False
