"""Safe quoting for generated VM scripts (GCE startup scripts, EC2 user data): values stay data."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(value: str) -> str:
    """One bash word that is exactly `value`: single quotes, each ' written as '\\''.

    Inside single quotes bash expands nothing ($(...), backticks, $VAR, \\, newlines stay literal);
    only NUL cannot be represented, so it is refused.
    """
    text = str(value)
    if "\x00" in text:
        raise ValueError("a shell value cannot contain a NUL byte")
    return "'" + text.replace("'", "'\\''") + "'"


def assign(name: str, value: str | int) -> str:
    """`NAME='value'` (integers unquoted); the name itself is checked, never quoted."""
    if not _NAME.match(name):
        raise ValueError(f"not a shell variable name: {name!r}")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{name}: a shell value is a str or an int")
    return f"{name}={value}" if isinstance(value, int) else f"{name}={quote(value)}"


def array(name: str, values: Iterable[str]) -> str:
    """`NAME=('a' 'b' ...)`: an argument list that reaches exec unsplit and unexpanded via "${NAME[@]}"."""
    if not _NAME.match(name):
        raise ValueError(f"not a shell variable name: {name!r}")
    return f"{name}=(" + " ".join(quote(v) for v in values) + ")"


def env_array(name: str, env: Mapping[str, str]) -> str:
    """`NAME=('K=v' ...)` for `docker run --env` / `env`; keys must be variable names."""
    for key in env:
        if not _NAME.match(key):
            raise ValueError(f"not an environment variable name: {key!r}")
    return array(name, (f"{k}={v}" for k, v in env.items()))
