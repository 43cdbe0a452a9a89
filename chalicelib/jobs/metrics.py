"""Job metrics (pure): `JOBPLANE_METRICS {json}` lines found in a job's output, a read position, bounded series."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

#: what starts a metrics line's payload; it may follow a prefix on the same line (a logger's timestamp)
MARKER = "JOBPLANE_METRICS"
#: a metric's name: what SageMaker's MetricDefinitions, CloudWatch and a URL all take as they are
KEY_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
#: keys read from one line (the first ones in the line's order); the rest of the line's keys are dropped
MAX_KEYS_PER_LINE = 32
#: keys one job may have; values of further new keys are dropped (the job record holds every latest value)
MAX_KEYS_PER_JOB = 64
#: points kept per key (evenly spaced over the whole run, see Series)
MAX_POINTS = 1000
#: a metrics line longer than this (its payload) is malformed; the part of a line kept between two reads
MAX_LINE_CHARS = 8192
_LINE_RE = re.compile(re.escape(MARKER) + r"[ \t]+(\{.*\})[ \t\r]*$")
# Where a line is found: the marker, then whitespace (so JOBPLANE_METRICS_DIR=... is not a metrics line).
_MARKED = re.compile(re.escape(MARKER) + r"[ \t]")


class Malformed(ValueError):
    """A line that says JOBPLANE_METRICS but carries no JSON object of numbers; counted and ignored."""


def _not_finite(_name: str) -> float:
    return math.nan  # NaN, Infinity, -Infinity (Python's json writes them): the key is dropped below


def parse_line(line: str) -> dict[str, float] | None:
    """The metrics of one output line; None when it is not a metrics line; Malformed when it is one but
    carries no usable JSON object (only finite numbers are kept: booleans, strings, NaN and inf are not)."""
    if not _MARKED.search(line):
        return None
    if len(line) > MAX_LINE_CHARS:
        raise Malformed(f"longer than {MAX_LINE_CHARS} characters")
    found = _LINE_RE.search(line)
    if found is None:
        raise Malformed("no JSON object after the marker")
    try:
        data = json.loads(found.group(1), parse_constant=_not_finite)
    except (ValueError, RecursionError) as exc:
        raise Malformed(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Malformed("not a JSON object")
    values: dict[str, float] = {}
    for key, value in data.items():
        if len(values) == MAX_KEYS_PER_LINE:
            break
        if not isinstance(key, str) or not KEY_RE.match(key):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        try:
            number = float(value)
        except OverflowError:  # an integer beyond a double's range
            continue
        if math.isfinite(number):
            values[key] = number
    if not values:
        raise Malformed("no key with a finite number")
    return values


@dataclass(frozen=True)
class Cursor:
    """How far jobplane has read a job's output for metrics: the attempt whose log it is and the offset in
    it (as the backend gives it), the metrics lines numbered so far over every attempt (a line's `seq` is
    its number), malformed lines seen, and the start of a line the last read ended inside."""

    offset: int | str = 0
    lines: int = 0
    malformed: int = 0
    carry: str = ""
    attempt: int = 1

    def for_attempt(self, attempt: int) -> Cursor:
        """Where reading goes on: here, or at the start of a later attempt's log (its seqs follow on)."""
        if attempt == self.attempt:
            return self
        return Cursor(0, self.lines, self.malformed, "", attempt)

    def to_text(self) -> str:
        data = {"offset": self.offset, "lines": self.lines, "malformed": self.malformed, "carry": self.carry}
        return json.dumps({**data, "attempt": self.attempt}, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_text(cls, text: str | None) -> Cursor | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(data["offset"], int(data["lines"]), int(data["malformed"]), data["carry"], int(data["attempt"]))


@dataclass(frozen=True)
class Found:
    """What one piece of output held: each metrics line's values with its seq, and where reading stopped."""

    cursor: Cursor
    lines: tuple[tuple[int, dict[str, float]], ...] = ()


def scan(cursor: Cursor, text: str, next_offset: int | str, *, final: bool = False) -> Found:
    """Read `text` (the output from cursor.offset to next_offset). A line it ends inside is carried to the
    next read, unless `final` (the job is over and its output read to the end)."""
    text = cursor.carry + text
    parts = text.split("\n")
    rest = "" if final else parts.pop()
    seq, malformed = cursor.lines, cursor.malformed
    found: list[tuple[int, dict[str, float]]] = []
    for line in parts:
        try:
            values = parse_line(line)
        except Malformed:
            malformed += 1
            continue
        if values is not None:
            seq += 1
            found.append((seq, values))
    # A line with no end in sight is kept only as far as a metrics line may go (past that it is malformed).
    carry = rest[: MAX_LINE_CHARS + 1]
    return Found(Cursor(next_offset, seq, malformed, carry, cursor.attempt), tuple(found))


def latest(current: dict[str, float], lines: tuple[tuple[int, dict[str, float]], ...]) -> dict[str, float]:
    """The latest value of each key after these lines; a key beyond MAX_KEYS_PER_JOB is not added."""
    merged = dict(current)
    for _seq, values in lines:
        for key, value in values.items():
            if key in merged or len(merged) < MAX_KEYS_PER_JOB:
                merged[key] = value
    return merged


def by_key(
    lines: tuple[tuple[int, dict[str, float]], ...], keys: set[str] | dict[str, float]
) -> dict[str, list[tuple[int, float]]]:
    """The (seq, value) points of each key, for the keys the job keeps (see latest())."""
    points: dict[str, list[tuple[int, float]]] = {}
    for seq, values in lines:
        for key, value in values.items():
            if key in keys:
                points.setdefault(key, []).append((seq, value))
    return points


@dataclass(frozen=True)
class Series:
    """One key's points, at most MAX_POINTS, evenly spaced over the run: every `stride`-th value is kept;
    when the series is full every other point is dropped and the stride doubles. `seen` counts the values
    given (kept or not), `last_seq` is the seq of the last one (a value at or before it was added already)."""

    points: tuple[tuple[int, float], ...] = field(default=())
    seen: int = 0
    stride: int = 1
    last_seq: int = 0

    def add(self, seq: int, value: float, max_points: int = MAX_POINTS) -> Series:
        if seq <= self.last_seq:
            return self  # read again after a lost race or a retried write: added already
        points = self.points
        stride = self.stride
        if self.seen % stride == 0:
            points = (*points, (seq, value))
            if len(points) > max_points:
                points = points[::2]
                stride *= 2
        return replace(self, points=points, seen=self.seen + 1, stride=stride, last_seq=seq)

    def extend(self, new: list[tuple[int, float]], max_points: int = MAX_POINTS) -> Series:
        series = self
        for seq, value in new:
            series = series.add(seq, value, max_points)
        return series

    def to_api(self) -> list[list[float]]:
        return [[seq, value] for seq, value in self.points]

    def to_dict(self) -> dict[str, Any]:
        points = [list(p) for p in self.points]
        return {"points": points, "seen": self.seen, "stride": self.stride, "last": self.last_seq}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Series:
        points = tuple((int(s), float(v)) for s, v in data["points"])
        return cls(points, int(data["seen"]), int(data["stride"]), int(data["last"]))


def sagemaker_regex(key: str) -> str:
    """A MetricDefinitions regex whose first group is `key`'s value on a JOBPLANE_METRICS line."""
    number = r"(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
    return MARKER + r"[ \t]+\{.*" + '"' + re.escape(key) + '"' + r"[ \t]*:[ \t]*" + number


def format_value(value: float) -> str:
    """A metric as people read it: 0.8731, 3, 1.2e-05."""
    return f"{value:.6g}"
