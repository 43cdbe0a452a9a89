"""The embedded AWS: moto, its writes applied one at a time and journaled to disk before they are acknowledged."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import inspect
import io
import json
import logging
import os
import re
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

log = logging.getLogger("jobplane.local")

# DynamoDB calls that change nothing; every other DynamoDB call is journaled, so a call moto
# learns later is kept by default (replaying a read would be harmless, dropping a write is not).
DYNAMODB_READS = frozenset(
    {
        "GetItem",
        "BatchGetItem",
        "Query",
        "Scan",
        "TransactGetItems",
        "DescribeTable",
        "ListTables",
        "DescribeTimeToLive",
        "ListTagsOfResource",
        "DescribeContinuousBackups",
        "DescribeLimits",
        "DescribeEndpoints",
        "ListBackups",
        "DescribeBackup",
        "DescribeGlobalTable",
        "ListGlobalTables",
        "DescribeKinesisStreamingDestination",
        "DescribeTableReplicaAutoScaling",
        "ListExports",
        "ListImports",
    }
)
BLOB_BYTES = 64 * 1024  # bodies this large go to content-addressed files, not into the journal's lines
COMPACT_MIN_BYTES = 8 * 1024 * 1024  # the journal is folded into the snapshot once it outgrows both
# Transport headers that say how a request travelled, not what it asked for.
DROPPED_HEADERS = frozenset(
    {
        "HTTP_CONNECTION",
        "HTTP_KEEP_ALIVE",
        "HTTP_TRANSFER_ENCODING",
        "HTTP_EXPECT",
        "HTTP_CONTENT_LENGTH",
        "HTTP_ACCEPT_ENCODING",
        "HTTP_USER_AGENT",
        "HTTP_AMZ_SDK_INVOCATION_ID",
        "HTTP_AMZ_SDK_REQUEST",
    }
)
_REQUEST_KEYS = frozenset({"REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "RAW_URI", "CONTENT_TYPE"})
_SCOPE = re.compile(r"Credential=[^/,\s]*/[^/]*/[^/]*/([^/]+)/")
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class StateLocked(RuntimeError):
    """Another process holds the state folder's journal."""


# --- the journal ---------------------------------------------------------------------------
class Journal:
    """snapshot.jsonl (state as requests, generation G) + journal-G.jsonl (writes since), both replayable.

    Each line is `crc32 json`; a torn last line (a crash mid-write) fails its check and is cut
    off. Only lines that were fsynced were ever acknowledged, so nothing acknowledged is cut.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)  # the tables hold token hashes and every job's spec
        self.blobs = directory / "blobs"
        self.blobs.mkdir(exist_ok=True, mode=0o700)
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StateLocked(f"another jobplane local stack is using the state folder {directory.parent}") from None
        self.generation = 0
        self.snapshot_bytes = 0
        self._fd: int | None = None
        self._tail_bytes = 0
        self._written = 0  # bytes ever appended by this process (a logical clock for group commit)
        self._synced = 0
        self._sync_lock = threading.Lock()

    @property
    def snapshot_path(self) -> Path:
        return self.dir / "snapshot.jsonl"

    def _journal_path(self, generation: int) -> Path:
        return self.dir / f"journal-{generation}.jsonl"

    # reading
    def entries(self) -> Iterator[dict]:
        """Every stored request in order: the snapshot's, then the journal's valid prefix."""
        if self.snapshot_path.exists():
            with open(self.snapshot_path, "rb") as fh:
                header = _decode(fh.readline())
                if header is None or "generation" not in header:
                    raise RuntimeError(f"{self.snapshot_path} is damaged: its header line fails its checksum")
                self.generation = int(header["generation"])
                self.snapshot_bytes = self.snapshot_path.stat().st_size
                for number, line in enumerate(fh, start=2):
                    entry = _decode(line)
                    if entry is None:
                        # A snapshot is renamed into place only once complete and fsynced.
                        raise RuntimeError(f"{self.snapshot_path} line {number} fails its checksum")
                    yield entry
        path = self._journal_path(self.generation)
        good = 0
        if path.exists():
            with open(path, "rb") as fh:
                for line in fh:
                    entry = _decode(line)
                    if entry is None:
                        log.warning("journal %s: dropping a torn last write (never acknowledged)", path.name)
                        break
                    good += len(line)
                    yield entry
            if good != path.stat().st_size:
                with open(path, "r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
        self._tail_bytes = good
        for stale in self.dir.glob("journal-*.jsonl"):
            if stale != path:
                stale.unlink()  # folded into the snapshot by a compaction that finished

    # writing
    def open(self) -> None:
        self._fd = os.open(self._journal_path(self.generation), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _fsync_dir(self.dir)

    def append(self, entry: dict) -> int:
        """Write one entry (the caller holds the apply lock, so order is apply order); returns its sync mark."""
        line = _encode(self._externalize(entry))
        os.write(self._fd, line)
        self._written += len(line)
        self._tail_bytes += len(line)
        return self._written

    @property
    def mark(self) -> int:
        return self._written

    def sync(self, mark: int) -> None:
        """Return once everything up to `mark` is on disk; one fsync serves every writer waiting for it."""
        if self._synced >= mark:
            return
        with self._sync_lock:
            if self._synced >= mark:
                return
            target = self._written
            os.fsync(self._fd)
            self._synced = target

    def _externalize(self, entry: dict) -> dict:
        if len(entry.get("body", "")) <= BLOB_BYTES:
            return entry
        rest = {k: v for k, v in entry.items() if k != "body"}
        return {**rest, "blob": self.put_blob(base64.b64decode(entry["body"]))}

    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blobs / digest
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            with _private(tmp) as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.blobs)
        return digest

    def blob(self, digest: str) -> bytes:
        return (self.blobs / digest).read_bytes()

    def needs_compaction(self) -> bool:
        return self._tail_bytes > max(COMPACT_MIN_BYTES, self.snapshot_bytes)

    def compact(self, entries: Iterable[dict]) -> None:
        """Replace snapshot + journal by a snapshot of `entries` (the caller holds the apply lock)."""
        generation = self.generation + 1
        tmp = self.dir / "snapshot.tmp"
        keep: set[str] = set()
        with _private(tmp) as fh:
            fh.write(_encode({"generation": generation, "written_at": time.time()}))
            for entry in entries:
                entry = self._externalize(entry)
                if "blob" in entry:
                    keep.add(entry["blob"])
                fh.write(_encode(entry))
            fh.flush()
            os.fsync(fh.fileno())
        new_fd = os.open(self._journal_path(generation), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.replace(tmp, self.snapshot_path)  # the switch: from here on, generation + 1 is what replays
        _fsync_dir(self.dir)
        with self._sync_lock:
            old_fd, self._fd = self._fd, new_fd
            self._synced = self._written  # everything written so far is in the fsynced snapshot
        if old_fd is not None:
            os.close(old_fd)
        self._journal_path(self.generation).unlink(missing_ok=True)
        self.generation = generation
        self.snapshot_bytes = self.snapshot_path.stat().st_size
        self._tail_bytes = 0
        for blob in self.blobs.iterdir():
            if blob.name not in keep:
                blob.unlink()

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        os.close(self._lock_fd)


def _encode(entry: dict) -> bytes:
    data = json.dumps(entry, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(data), data)


def _decode(line: bytes) -> dict | None:
    if not line.endswith(b"\n") or len(line) < 10:
        return None
    crc, data = line[:8], line[9:-1]
    try:
        if int(crc, 16) != zlib.crc32(data):
            return None
        return json.loads(data)
    except ValueError:
        return None


def _private(path: Path):
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- requests as data ----------------------------------------------------------------------
def _service(environ: dict) -> str | None:
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target.startswith("DynamoDB_"):
        return "dynamodb"
    if target:
        return "other"
    found = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", "")) or _SCOPE.search(
        environ.get("QUERY_STRING", "").replace("%2F", "/")
    )
    return found.group(1) if found else None


def _durable(environ: dict) -> bool:
    """Only DynamoDB and S3 are journaled: their names are the caller's, so a replay rebuilds the same
    tables, items, buckets and keys. SQS and Secrets Manager are provisioned afresh at each start."""
    service = _service(environ)
    if service == "dynamodb":
        return True
    return service == "s3" and environ["REQUEST_METHOD"] in ("PUT", "POST", "DELETE")


def _is_write(environ: dict) -> bool:
    if _service(environ) == "dynamodb":
        return environ["HTTP_X_AMZ_TARGET"].partition(".")[2] not in DYNAMODB_READS
    return True


def _capture(environ: dict, body: bytes) -> dict:
    env = {
        key: value
        for key, value in environ.items()
        if isinstance(value, str) and (key.startswith("HTTP_") or key in _REQUEST_KEYS) and key not in DROPPED_HEADERS
    }
    return {"env": env, "body": base64.b64encode(body).decode()}


def _environ(entry: dict, body: bytes) -> dict[str, Any]:
    return {
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        **entry["env"],
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
    }


def _call(app, entry: dict, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request straight into the WSGI app, with no socket (replay and snapshots)."""
    seen: dict[str, Any] = {}

    def start_response(status, headers, exc_info=None):  # noqa: ARG001 - the WSGI signature
        seen["status"], seen["headers"] = int(status.split()[0]), {k.lower(): v for k, v in headers}

    out = b"".join(app(_environ(entry, body), start_response))
    return seen["status"], seen["headers"], out


_UPLOAD_ID = re.compile(r"<UploadId>([^<]+)</UploadId>")


class _Persistent:
    """WSGI middleware over moto: applies DynamoDB calls and S3 writes one at a time, and journals
    each one that succeeded before its response leaves.

    moto checks a condition and writes without a lock, so two concurrent conditional writes could
    both pass; DynamoDB applies each one atomically, and so do we. SQS long polls bypass the lock.
    """

    def __init__(self, app, journal: Journal | None) -> None:
        self.app = app
        self.journal = journal
        self.lock = threading.Lock()
        self._compacting = False

    def __call__(self, environ, start_response):
        if not _durable(environ):
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        # A chunked body has no length; werkzeug then marks its input as ending at the body's end.
        if length:
            body = environ["wsgi.input"].read(length)
        elif environ.get("wsgi.input_terminated"):
            body = environ["wsgi.input"].read()
        else:
            body = b""
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        seen: dict[str, Any] = {}

        def capture(status, headers, exc_info=None):
            seen["status"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        with self.lock:
            # The body is built inside the lock: moto may produce it lazily.
            result = list(self.app(environ, capture))
            if self.journal is None:
                return result
            if 200 <= seen.get("status", 500) < 300 and _is_write(environ):
                entry = _capture(environ, body)
                if environ["REQUEST_METHOD"] == "POST" and "uploads" in environ.get("QUERY_STRING", ""):
                    found = _UPLOAD_ID.search(b"".join(result).decode("utf-8", "replace"))
                    if found:
                        entry["upload_id"] = found.group(1)
                self.journal.append(entry)
            mark = self.journal.mark
            compact = self.journal.needs_compaction() and not self._compacting
            if compact:
                self._compacting = True
        # A read waits too: no one may see a write that a crash could still take back.
        self.journal.sync(mark)
        if compact:
            threading.Thread(target=self.compact, name="journal-compaction", daemon=True).start()
        return result

    # replay and compaction --------------------------------------------------------------------
    def replay(self) -> dict[str, Any]:
        """Apply the stored requests to this (empty) moto; returns what was done, for the banner and bench."""
        assert self.journal is not None
        started = time.perf_counter()
        applied = failed = 0
        uploads: dict[str, str] = {}  # moto draws new multipart upload ids; later parts follow the new one
        for entry in self.journal.entries():
            body = self.journal.blob(entry["blob"]) if "blob" in entry else base64.b64decode(entry.get("body", ""))
            env = entry["env"]
            for old, new in uploads.items():
                if old in env.get("QUERY_STRING", ""):
                    env = {**env, "QUERY_STRING": env["QUERY_STRING"].replace(old, new)}
                    env["RAW_URI"] = env.get("RAW_URI", "").replace(old, new)
            status, _, out = _call(self.app, {**entry, "env": env}, body)
            if 200 <= status < 300:
                applied += 1
                if "upload_id" in entry:
                    found = _UPLOAD_ID.search(out.decode("utf-8", "replace"))
                    if found:
                        uploads[entry["upload_id"]] = found.group(1)
            else:
                failed += 1
                log.warning("replay: %s %s answered %s", env.get("REQUEST_METHOD"), _op(env), status)
        self.journal.open()
        stats = {"applied": applied, "failed": failed, "seconds": time.perf_counter() - started}
        if self.journal.needs_compaction():
            with self.lock:
                self._compact_locked()
        return stats

    def compact(self) -> None:
        try:
            with self.lock:
                self._compact_locked()
        except Exception:  # the journal stays valid; the next write tries again
            log.exception("journal compaction failed")
        finally:
            self._compacting = False

    def _compact_locked(self) -> None:
        started = time.perf_counter()
        self.journal.compact(_Snapshot(self.app).entries())
        log.info("journal compacted in %.2fs", time.perf_counter() - started)


def _op(env: dict) -> str:
    return env.get("HTTP_X_AMZ_TARGET") or env.get("RAW_URI") or env.get("PATH_INFO", "")


# --- snapshots: the live state, read back through moto's own API, as requests that rebuild it ----
def _auth(service: str) -> str:
    # moto routes by the credential scope and does not check signatures.
    scope = f"local/20260101/us-east-1/{service}/aws4_request"
    return f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=0"


def _ddb(op: str, payload: dict) -> dict:
    env = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/",
        "RAW_URI": "/",
        "CONTENT_TYPE": "application/x-amz-json-1.0",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_X_AMZ_TARGET": f"DynamoDB_20120810.{op}",
        "HTTP_AUTHORIZATION": _auth("dynamodb"),
    }
    return {"env": env, "body": base64.b64encode(json.dumps(payload).encode()).decode()}


def _s3(method: str, bucket: str, key: str = "", query: str = "", headers: dict | None = None, body=b"") -> dict:
    path = f"/{bucket}" + (f"/{key}" if key else "")
    raw = quote(path, safe="/~") + (f"?{query}" if query else "")
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path.encode().decode("latin-1"),
        "RAW_URI": raw,
        "QUERY_STRING": query,
        "HTTP_HOST": "127.0.0.1",
        "HTTP_AUTHORIZATION": _auth("s3"),
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in (headers or {}).items()},
    }
    if headers and "content-type" in headers:
        env["CONTENT_TYPE"] = headers["content-type"]
    return {"env": env, "body": base64.b64encode(body).decode()}


class _Snapshot:
    """Reads DynamoDB (every table, whatever its name) and S3 (every bucket) out of a live moto."""

    # Object headers that are part of what was stored, not of how it was served.
    OBJECT_HEADERS = ("content-type", "content-encoding", "content-disposition", "content-language", "cache-control")

    def __init__(self, app) -> None:
        self.app = app

    def _get(self, entry: dict) -> bytes:
        status, _, out = _call(self.app, entry, base64.b64decode(entry["body"]))
        if not 200 <= status < 300:
            raise RuntimeError(f"snapshot read {_op(entry['env'])} answered {status}: {out[:200]!r}")
        return out

    def _ddb(self, op: str, payload: dict) -> dict:
        return json.loads(self._get(_ddb(op, payload)))

    def entries(self) -> Iterator[dict]:
        yield from self._dynamodb()
        yield from self._buckets()

    def _dynamodb(self) -> Iterator[dict]:
        names: list[str] = []
        start: dict = {}
        while True:
            page = self._ddb("ListTables", start)
            names += page.get("TableNames", [])
            if not page.get("LastEvaluatedTableName"):
                break
            start = {"ExclusiveStartTableName": page["LastEvaluatedTableName"]}
        for name in names:
            table = self._ddb("DescribeTable", {"TableName": name})["Table"]
            yield _ddb("CreateTable", _create_table(table))
            ttl = self._ddb("DescribeTimeToLive", {"TableName": name}).get("TimeToLiveDescription", {})
            if ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
                spec = {"Enabled": True, "AttributeName": ttl["AttributeName"]}
                yield _ddb("UpdateTimeToLive", {"TableName": name, "TimeToLiveSpecification": spec})
            tags = self._ddb("ListTagsOfResource", {"ResourceArn": table["TableArn"]}).get("Tags", [])
            if tags:
                yield _ddb("TagResource", {"ResourceArn": table["TableArn"], "Tags": tags})
            scan: dict = {"TableName": name}
            while True:
                page = self._ddb("Scan", scan)
                items = page.get("Items", [])
                for i in range(0, len(items), 25):  # BatchWriteItem's limit
                    puts = [{"PutRequest": {"Item": item}} for item in items[i : i + 25]]
                    yield _ddb("BatchWriteItem", {"RequestItems": {name: puts}})
                if not page.get("LastEvaluatedKey"):
                    break
                scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _xml(self, entry: dict) -> ElementTree.Element:
        return ElementTree.fromstring(self._get(entry))  # noqa: S314 - moto's own output, in this process

    def _buckets(self) -> Iterator[dict]:
        for bucket in self._xml(_list_buckets()).iter(f"{_S3_NS}Bucket"):
            name = bucket.findtext(f"{_S3_NS}Name")
            region = self._xml(_s3("GET", name, query="location")).text
            body = b""
            if region and region != "us-east-1":
                body = (
                    f'<CreateBucketConfiguration xmlns="{_S3_NS[1:-1]}">'
                    f"<LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
                ).encode()
            yield _s3("PUT", name, body=body)
            versioning = self._get(_s3("GET", name, query="versioning"))
            if b"<Status>" in versioning:
                yield _s3("PUT", name, query="versioning", body=versioning)
            notification = self._get(_s3("GET", name, query="notification"))
            if len(ElementTree.fromstring(notification)):  # noqa: S314 - as above
                yield _s3("PUT", name, query="notification", body=notification)
            token = ""
            while True:
                query = "list-type=2" + (f"&continuation-token={quote(token, safe='')}" if token else "")
                page = self._xml(_s3("GET", name, query=query))
                for item in page.iter(f"{_S3_NS}Contents"):
                    key = item.findtext(f"{_S3_NS}Key")
                    yield self._object(name, key)
                token = page.findtext(f"{_S3_NS}NextContinuationToken") or ""
                if not token:
                    break

    def _object(self, bucket: str, key: str) -> dict:
        status, headers, body = _call(self.app, _s3("GET", bucket, key))
        if status != 200:
            raise RuntimeError(f"snapshot read s3://{bucket}/{key} answered {status}")
        kept = {k: v for k, v in headers.items() if k in self.OBJECT_HEADERS or k.startswith("x-amz-meta-")}
        return _s3("PUT", bucket, key, headers=kept, body=body)


def _list_buckets() -> dict:
    entry = _s3("GET", "x")
    entry["env"].update({"PATH_INFO": "/", "RAW_URI": "/"})
    return entry


def _create_table(table: dict) -> dict:
    request: dict[str, Any] = {
        "TableName": table["TableName"],
        "KeySchema": table["KeySchema"],
        "AttributeDefinitions": table["AttributeDefinitions"],
    }
    on_demand = table.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"
    throughput = table.get("ProvisionedThroughput", {})

    def capacity(source: dict) -> dict:
        return {
            "ReadCapacityUnits": max(1, int(source.get("ReadCapacityUnits") or 1)),
            "WriteCapacityUnits": max(1, int(source.get("WriteCapacityUnits") or 1)),
        }

    if on_demand:
        request["BillingMode"] = "PAY_PER_REQUEST"
    else:
        request["ProvisionedThroughput"] = capacity(throughput)
    if table.get("GlobalSecondaryIndexes"):
        request["GlobalSecondaryIndexes"] = [
            {
                "IndexName": index["IndexName"],
                "KeySchema": index["KeySchema"],
                "Projection": index["Projection"],
                **({} if on_demand else {"ProvisionedThroughput": capacity(index.get("ProvisionedThroughput", {}))}),
            }
            for index in table["GlobalSecondaryIndexes"]
        ]
    if table.get("LocalSecondaryIndexes"):
        request["LocalSecondaryIndexes"] = [
            {"IndexName": index["IndexName"], "KeySchema": index["KeySchema"], "Projection": index["Projection"]}
            for index in table["LocalSecondaryIndexes"]
        ]
    stream = table.get("StreamSpecification") or {}
    if stream.get("StreamEnabled"):
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    return request


# --- a faster DynamoDB response serializer ---------------------------------------------------
def _fast_dynamodb_serializer():
    """moto 5.2 serializes every AttributeValue by walking its ten possible members through its
    generic, model-driven serializer: ~3 ms per item, most of a GET /jobs. An AttributeValue is
    already DynamoDB JSON once binaries are base64: this writes it directly, and hands anything
    unexpected back to moto's own path."""
    from moto.core.serialize import JSONSerializer

    class FastDynamoDBSerializer(JSONSerializer):
        def _serialize_type_structure(self, serialized, value, shape, key):
            if shape.name == "AttributeValue" and key:
                try:
                    serialized[key] = _attribute_value(value)
                    return
                except _Unexpected:
                    pass
            super()._serialize_type_structure(serialized, value, shape, key)

    return FastDynamoDBSerializer


class _Unexpected(Exception):
    """A value the fast path does not know; moto's generic serializer takes it."""


def _b64(value) -> str:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise _Unexpected
    return base64.b64encode(value).decode()


def _attribute_value(value):
    if not isinstance(value, dict) or len(value) != 1:
        raise _Unexpected
    ((kind, inner),) = value.items()
    if kind in ("S", "N"):
        if not isinstance(inner, str):
            raise _Unexpected
        return {kind: inner}
    if kind in ("SS", "NS"):
        return {kind: [str(v) for v in inner]}
    if kind in ("BOOL", "NULL"):
        return {kind: inner}
    if kind == "B":
        return {"B": _b64(inner)}
    if kind == "BS":
        return {"BS": [_b64(v) for v in inner]}
    if kind == "M":
        return {"M": {k: _attribute_value(v) for k, v in inner.items()}}
    if kind == "L":
        return {"L": [_attribute_value(v) for v in inner]}
    raise _Unexpected


def _install_fast_serializer() -> None:
    import moto.core.responses as responses

    if getattr(responses.get_serializer_class, "jobplane_fast", False):
        return
    generic, fast = responses.get_serializer_class, _fast_dynamodb_serializer()

    def get_serializer_class(service_name: str, protocol: str):
        if service_name == "dynamodb" and protocol == "json":
            return fast
        return generic(service_name, protocol)

    get_serializer_class.jobplane_fast = True
    responses.get_serializer_class = get_serializer_class


def _install_fast_result_conversion() -> None:
    """moto 5.2 turns every DynamoDB result into plain values with a generic walk that asks each
    leaf (every string of every item) `hasattr(value, "to_json")`, an AttributeError raised and caught
    per leaf: a `GET /jobs` page spent about a third of the emulator's time there. This walk takes
    the exact plain types (str, numbers, bool, None, dict, list) and moto's DynamoType itself first,
    with moto's own rules for each, and hands anything else to moto's function unchanged."""
    import moto.dynamodb.responses as responses
    from moto.dynamodb.models.dynamo_type import DynamoType, LimitedSizeDict

    if getattr(responses.dynamo_to_dict, "jobplane_fast", False):
        return
    generic = responses.dynamo_to_dict
    leaves = frozenset({str, int, float, bool, type(None), bytes})
    # An item's attributes are a LimitedSizeDict (a dict that checks the 400 KB limit on writes);
    # moto walks it as a dict, since it has no to_json.
    dicts = frozenset({dict} | ({LimitedSizeDict} if not hasattr(LimitedSizeDict, "to_json") else set()))

    def convert(obj):
        cls = type(obj)
        if cls in leaves:
            return obj
        if cls in dicts:
            return {k: convert(v) for k, v in obj.items()}
        if cls is list:
            return [convert(v) for v in obj]
        if cls is DynamoType and obj.type not in ("B", "BS"):
            return {obj.type: convert(obj.value)}
        return generic(obj)  # binary values, datetimes, models with to_json: moto's own rules

    convert.jobplane_fast = True
    responses.dynamo_to_dict = convert


# --- transactions that copy what they touch -------------------------------------------------
_TXN = threading.local()


def _install_item_level_transactions() -> None:
    """moto 5.2's TransactWriteItems deep-copies every table it touches, to put it back if the
    transaction is cancelled: the cost of each write grows with the table (the history table grows with
    every transition), and the emulator applies writes one at a time, so every request waits for it.

    This keeps moto's own transaction logic and changes only its backup: while a transaction runs, the
    module's deepcopy of a Table hands back the live table, and an undo log taken beforehand holds a copy
    of each item the transaction names and each table's stream length. A cancelled transaction puts
    those items back and drops the stream records it wrote, as the table copy did."""
    import moto.dynamodb.models as models
    from moto.dynamodb.models.table import Table

    if getattr(models.DynamoDBBackend.transact_write_items, "jobplane_item_level", False):
        return
    real_copy = models.copy

    class _Copy:
        @staticmethod
        def deepcopy(value, memo=None):
            if isinstance(value, Table) and getattr(_TXN, "active", False):
                return value
            return real_copy.deepcopy(value, memo)

        def __getattr__(self, name):
            return getattr(real_copy, name)

    models.copy = _Copy()
    original = models.DynamoDBBackend.transact_write_items

    def transact_write_items(self, transact_items):
        undo = _undo_log(self, transact_items)
        _TXN.active = True
        try:
            return original(self, transact_items)
        except BaseException:
            _restore(self, undo)
            raise
        finally:
            _TXN.active = False

    transact_write_items.jobplane_item_level = True
    transact_write_items.moto_original = original  # bench/local_load.py times both
    models.DynamoDBBackend.transact_write_items = transact_write_items


def _undo_log(backend, transact_items) -> dict:
    """Per table: its stream length, and a copy of each named item as it is now (None: absent)."""
    import copy

    from moto.dynamodb.exceptions import MockValidationException

    undo: dict[str, dict] = {}
    for entry in transact_items:
        if not isinstance(entry, dict) or len(entry) != 1:
            continue  # moto refuses it before writing anything
        ((op_type, op),) = entry.items()
        table = backend.tables.get(op.get("TableName")) if isinstance(op, dict) else None
        if table is None:
            continue
        keys = op.get("Item") if op_type == "Put" else op.get("Key")
        try:
            hash_key, range_key = backend.get_keys_value(table, keys or {})
        except MockValidationException:
            continue  # moto refuses the malformed key itself, before any write
        saved = undo.setdefault(
            table.name, {"stream": len(table.stream_shard.items) if table.stream_shard else None, "items": {}}
        )
        current = table.get_item(hash_key, range_key)
        saved["items"].setdefault((hash_key, range_key), copy.deepcopy(current))
    return undo


def _restore(backend, undo: dict) -> None:
    for name, saved in undo.items():
        table = backend.tables.get(name)
        if table is None:
            continue
        for (hash_key, range_key), item in saved["items"].items():
            if range_key is not None:
                if item is None:
                    table.items.get(hash_key, {}).pop(range_key, None)
                else:
                    table.items[hash_key][range_key] = item
            elif item is None:
                table.items.pop(hash_key, None)
            else:
                table.items[hash_key] = item
        if saved["stream"] is not None and table.stream_shard is not None:
            del table.stream_shard.items[saved["stream"] :]


# --- queries that read what they ask for -----------------------------------------------------
_QUERY = threading.local()
#: moto's own query and comparison methods, kept for `moto_queries()`
_MOTO_QUERY_PARTS: dict[tuple[type, str], Any] = {}


@contextmanager
def moto_queries():
    """moto's own Query path while the block runs, in this process (bench/local_load.py compares)."""
    ours = {(owner, name): getattr(owner, name) for owner, name in _MOTO_QUERY_PARTS}
    for (owner, name), method in _MOTO_QUERY_PARTS.items():
        setattr(owner, name, method)
    try:
        yield
    finally:
        for (owner, name), method in ours.items():
            setattr(owner, name, method)


def _install_keyed_queries() -> None:
    """moto 5.2 answers every Query, of the table or of an index, by walking all of the table's items
    and comparing each key through `DynamoType.cast_value`, then sorting the matches the same way:
    ~320 ms for a 20-item page of an index over 10,000 items, with the emulator's lock held. Every
    `GET /jobs`, history read and reconcile query paid for the whole table.

    Two changes keep moto's query logic (sorting, paging, conditions, filters, projections) and give it
    less to do: while a query runs, `Table.all_items` hands it only the items whose partition key is the
    one asked for (the table's own items under that key; for an index, those carrying the value, compared
    as moto compares them); and comparisons of two strings, the keys jobplane uses, compare the strings
    (what `cast_value` returns for S) without building Decimals and type checks first."""
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    if getattr(Table.query, "jobplane_keyed", False):
        return
    query, all_items = Table.query, Table.all_items
    signature = inspect.signature(query)

    def keyed_query(self, *args, **kwargs):
        hint = _partition_hint(self, signature.bind(self, *args, **kwargs).arguments)
        _QUERY.hint = hint
        try:
            return query(self, *args, **kwargs)
        finally:
            _QUERY.hint = None

    def keyed_all_items(self):
        hint = getattr(_QUERY, "hint", None)
        if hint is None or hint[0] is not self:
            return all_items(self)
        _, attribute, value = hint
        if attribute is None:  # the table's own partition key: moto's items dict is keyed by it
            found = self.items.get(value)
            if found is None:
                return []
            return list(found.values()) if self.range_key_attr else [found]
        return [item for item in all_items(self) if _same(item.attrs.get(attribute), value)]

    keyed_query.jobplane_keyed = True
    _MOTO_QUERY_PARTS.update(
        {
            (Table, "query"): query,
            (Table, "all_items"): all_items,
            **{
                (DynamoType, n): getattr(DynamoType, n)
                for n in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__")
            },
        }
    )
    Table.query, Table.all_items = keyed_query, keyed_all_items

    eq, ne, lt, le, gt, ge, hash_ = (
        DynamoType.__eq__, DynamoType.__ne__, DynamoType.__lt__, DynamoType.__le__,
        DynamoType.__gt__, DynamoType.__ge__, DynamoType.__hash__,
    )  # fmt: skip

    def strings(a, b) -> bool:
        return a.type == "S" and getattr(b, "type", None) == "S"

    DynamoType.__eq__ = lambda a, b: a.value == b.value if strings(a, b) else eq(a, b)
    DynamoType.__ne__ = lambda a, b: a.value != b.value if strings(a, b) else ne(a, b)
    DynamoType.__lt__ = lambda a, b: a.value < b.value if strings(a, b) else lt(a, b)
    DynamoType.__le__ = lambda a, b: a.value <= b.value if strings(a, b) else le(a, b)
    DynamoType.__gt__ = lambda a, b: a.value > b.value if strings(a, b) else gt(a, b)
    DynamoType.__ge__ = lambda a, b: a.value >= b.value if strings(a, b) else ge(a, b)
    DynamoType.__hash__ = lambda a: hash(("S", a.value)) if a.type == "S" else hash_(a)


def _partition_hint(table, arguments: dict):
    """(table, attribute, value) naming the query's partition key, or None to let moto walk everything.

    attribute None: the table's own key (`hash_key`). An index query names its key in
    `hash_key_conditions`; a multi-attribute partition key (several conditions) is left to moto."""
    index_name = arguments.get("index_name")
    if not index_name:
        hash_key = arguments.get("hash_key")
        return (table, None, hash_key) if hash_key is not None else None
    conditions = arguments.get("hash_key_conditions") or []
    if len(conditions) != 1:
        return None
    attribute, value = conditions[0]
    return table, attribute, value


def _same(found, value) -> bool:
    # moto's own test in its index loop: a present, equal value
    return bool(found) and not (found != value)


# --- the server ----------------------------------------------------------------------------
def _serve(app, host: str, port: int):
    """moto's WSGI app on waitress: keep-alive connections and a bounded pool of workers.

    moto's own server (werkzeug's) closes every connection after one response, so each of the several
    SDK calls an API request makes paid a TCP connect and a new server thread; waitress keeps the SDKs'
    pooled connections open. The backlog is deep: a burst must queue, not be reset."""
    from waitress.channel import HTTPChannel
    from waitress.server import create_server
    from waitress.task import WSGITask

    class Task(WSGITask):
        def build_response_header(self):
            # waitress capitalizes every response header name; S3 sends user metadata in the spelling it was
            # stored with (lowercase), and the SDKs hand that spelling back as the metadata's keys.
            spelled = {n.lower(): n for n, _ in self.response_headers if n.lower().startswith("x-amz-meta-")}
            head = super().build_response_header()
            for name in spelled.values():
                capitalized = "-".join(part.capitalize() for part in name.split("-"))
                head = head.replace(f"\r\n{capitalized}: ".encode("latin-1"), f"\r\n{name}: ".encode("latin-1"))
            return head

    class Channel(HTTPChannel):
        task_class = Task

    def raw_uri(environ, start_response):
        # moto reads the request target as sent from werkzeug's RAW_URI (S3 keys keep their %2F);
        # waitress calls it REQUEST_URI.
        environ.setdefault("RAW_URI", environ.get("REQUEST_URI", ""))
        return app(environ, start_response)

    server = create_server(
        raw_uri,
        host=host,
        port=port,
        threads=EMULATOR_THREADS,
        backlog=1024,
        connection_limit=1000,
        channel_timeout=120,
        cleanup_interval=10,
        max_request_body_size=EMULATOR_MAX_BODY,
        ident="jobplane-emulator",
        expose_tracebacks=False,
    )
    server.channel_class = Channel
    thread = threading.Thread(target=server.run, name="moto", daemon=True)
    thread.start()
    return _WaitressServer(server, thread)


EMULATOR_THREADS = 16
EMULATOR_MAX_BODY = 5 * 1024**3  # S3's single PUT limit: workdir archives and artifacts go through it


class _WaitressServer:
    """The waitress server with the socketserver-style surface the Emulator uses."""

    def __init__(self, server, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread
        self.server_address = (server.effective_host, server.effective_port)

    def shutdown(self) -> None:
        server = self._server
        server.task_dispatcher.shutdown(timeout=5)

        def close_all():
            for channel in list(server._map.values()):
                channel.close()

        if self._thread.is_alive():
            server.trigger.pull_trigger(close_all)
            self._thread.join(timeout=5)
        else:
            close_all()

    def server_close(self) -> None:
        pass  # shutdown() closed the listening socket with the rest of waitress's map


@dataclass
class Emulator:
    """A running embedded AWS: its server, its middleware, and what the replay did."""

    server: Any
    persistent: _Persistent
    replayed: dict[str, Any]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.persistent.journal is not None:
            with self.persistent.lock:
                self.persistent.journal.close()
                self.persistent.journal = None


def start_moto(host: str = "127.0.0.1", port: int = 0, state: Path | None = None) -> tuple[Emulator, str]:
    """Start the emulator on a free loopback port; returns (emulator, endpoint URL).

    With `state`, DynamoDB and S3 are rebuilt from the journal there before the port opens, and
    every write is journaled; without, everything lives in memory (tests, benchmarks).
    The SDKs in this process get placeholder credentials: a process that runs the emulator never
    signs anything with a real account's keys.
    """
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "emulator",
            "AWS_SECRET_ACCESS_KEY": "emulator",
            "AWS_SESSION_TOKEN": "emulator",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request drowns everything
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    _install_fast_serializer()
    _install_fast_result_conversion()
    _install_item_level_transactions()
    _install_keyed_queries()
    journal = Journal(state) if state is not None else None
    persistent = _Persistent(DomainDispatcherApplication(create_backend_app), journal)
    try:
        replayed = persistent.replay() if journal is not None else {"applied": 0, "failed": 0, "seconds": 0.0}
        server = _serve(persistent, host, port)
    except BaseException:
        if journal is not None:
            journal.close()
        raise
    bound_host, bound_port = server.server_address[:2]
    return Emulator(server, persistent, replayed), f"http://{bound_host}:{bound_port}"
