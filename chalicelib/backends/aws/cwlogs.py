"""Reading a job's CloudWatch Logs streams in order, one GetLogEvents page per call, as an opaque offset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from chalicelib.backends.aws.errors import aws_errors, error_code
from chalicelib.backends.base import LogChunk, Offset, bad_offset, decode_log_token, encode_log_token
from chalicelib.errors import BackendError

# (log group, stream name), in the order the job wrote them
Stream = tuple[str, str]
READ_ACTIONS = ("logs:DescribeLogStreams", "logs:GetLogEvents")


def log_group_arns(*groups: str) -> list[str]:
    """The ARNs GetLogEvents and DescribeLogStreams are authorized on, for these groups only."""
    return sorted(
        {arn for g in groups for arn in (f"arn:aws:logs:*:*:log-group:{g}", f"arn:aws:logs:*:*:log-group:{g}:*")}
    )


def prefixed_streams(client, group: str, prefix: str) -> list[Stream]:
    """The group's streams whose names start with `prefix`, by name (DescribeLogStreams pages)."""
    found: list[Stream] = []
    token = None
    while True:
        request: dict[str, Any] = {"logGroupName": group, "logStreamNamePrefix": prefix}
        if token:
            request["nextToken"] = token
        try:
            with aws_errors("logs", "DescribeLogStreams"):
                page = client.describe_log_streams(**request)
        except BackendError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return []  # the group is made with the first stream: nothing was written yet
            raise
        found.extend((group, s["logStreamName"]) for s in page.get("logStreams", []))
        token = page.get("nextToken")
        if not token:
            return sorted(found, key=lambda s: s[1])


def read_streams(client, streams: Callable[[], Sequence[Stream]], offset: Offset, limit: int) -> LogChunk:
    """The next events after `offset` across `streams` (listed lazily: only when a stream is done).

    The offset holds the stream's index and name and CloudWatch's nextForwardToken; CloudWatch answers
    the same token again when nothing new was written, which is how the end of a stream shows."""
    if offset in (0, ""):
        state: dict[str, Any] = {"i": 0, "s": None, "t": None}
    elif isinstance(offset, str):
        state = decode_log_token(offset)
        if not isinstance(state.get("i"), int) or set(state) != {"i", "s", "t"}:
            raise bad_offset("offset is not one this job's log gave")
    else:
        raise bad_offset("this job's log pages by cursor: pass the next_offset it returned, or 0")
    names = list(streams())
    index, text = state["i"], []
    # Stream names come from the provider each call; a cursor for a stream that is not there is stale.
    if state["s"] is not None and (index >= len(names) or names[index][1] != state["s"]):
        raise bad_offset("offset names a log stream this job does not have")
    events_wanted = max(1, min(10000, limit // 100))
    while index < len(names):
        group, name = names[index]
        request: dict[str, Any] = {
            "logGroupName": group,
            "logStreamName": name,
            "startFromHead": True,
            "limit": events_wanted,
        }
        if state["t"] and state["s"] == name:
            request["nextToken"] = state["t"]
        try:
            with aws_errors("logs", "GetLogEvents"):
                page = client.get_log_events(**request)
        except BackendError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            page = {"events": [], "nextForwardToken": request.get("nextToken")}  # not written to yet
        events = page.get("events", [])
        text.extend(e.get("message", "").rstrip("\n") + "\n" for e in events)
        forward = page.get("nextForwardToken")
        if events or index == len(names) - 1:
            state = {"i": index, "s": name, "t": forward}
            if events:
                break
            return LogChunk("".join(text), encode_log_token(state), True)
        index += 1  # this stream is read to its end and a later one exists: go on with it
        state = {"i": index, "s": None, "t": None}
    else:
        return LogChunk("", encode_log_token(state) if state["s"] else 0, True)
    return LogChunk("".join(text), encode_log_token(state), False)
