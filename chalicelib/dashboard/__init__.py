"""The web dashboard: one static page that talks to the REST API with the user's token."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def page() -> str:
    return (Path(__file__).parent / "index.html").read_text(encoding="utf-8")
