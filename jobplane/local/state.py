"""Where a running local stack says how to reach it (.jobplane/local.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_DIR = ".jobplane"


def state_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("JOBPLANE_LOCAL_DIR") or DEFAULT_DIR).resolve()


def state_file(directory: Path) -> Path:
    return directory / "local.json"


def read_state(directory: Path) -> dict[str, Any] | None:
    """The running stack's addresses, or None when no stack is running from this directory."""
    try:
        data = json.loads(state_file(directory).read_text())
    except (OSError, ValueError):
        return None
    pid = data.get("pid")
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        pass
    return data


def write_state(directory: Path, data: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = state_file(directory)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)  # it holds the admin token
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)
