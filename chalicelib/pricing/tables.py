"""The catalog's file format: one JSON table per provider, read and written here only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
# Providers with a table file; `local` has none (its price is a setting).
TABLE_PROVIDERS = ("ec2", "sagemaker", "gce", "vertex")


@dataclass(frozen=True)
class Row:
    """One priced item: an instance type, a machine type or an accelerator in one region.

    `on_demand` / `spot` are USD per hour, or None when the catalog has no price (never 0 for
    "missing"). `read_at` / `source` override the table's when this row came from elsewhere;
    `suspect` says why a published number must not be used. GCE and Vertex rows also carry
    `kind` (machine | accelerator), the machine's shape (`vcpus`, `memory_gib`), and
    `accelerator` + `count`: for a machine, the GPUs bundled with it; for an accelerator row,
    how many GPUs the price is for.
    """

    sku: str
    region: str
    on_demand: float | None
    spot: float | None = None
    read_at: date | None = None
    source: str | None = None
    suspect: str | None = None
    kind: str | None = None
    vcpus: float | None = None
    memory_gib: float | None = None
    accelerator: str | None = None
    count: int | None = None


@dataclass(frozen=True)
class Table:
    """A provider's prices with the date they were read and where each purchase option came from."""

    provider: str
    read_at: date
    sources: dict[str, str]
    notes: str
    rows: tuple[Row, ...] = field(default_factory=tuple)


_ROW_FIELDS = (
    "sku",
    "region",
    "kind",
    "on_demand",
    "spot",
    "vcpus",
    "memory_gib",
    "accelerator",
    "count",
    "read_at",
    "source",
    "suspect",
)


def _row_to_json(row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _ROW_FIELDS:
        value = getattr(row, name)
        if name in ("on_demand", "spot"):
            out[name] = value  # null is meaningful: an unknown price
        elif value is not None:
            out[name] = value.isoformat() if isinstance(value, date) else value
    return out


def _row_from_json(raw: dict[str, Any]) -> Row:
    values = dict(raw)
    if values.get("read_at"):
        values["read_at"] = date.fromisoformat(values["read_at"])
    return Row(**values)


def read_table(path: Path) -> Table:
    raw = json.loads(path.read_text())
    return Table(
        provider=raw["provider"],
        read_at=date.fromisoformat(raw["read_at"]),
        sources=dict(raw["sources"]),
        notes=raw.get("notes", ""),
        rows=tuple(_row_from_json(r) for r in raw["rows"]),
    )


def write_table(table: Table, directory: Path) -> Path:
    """Write `table` as directory/<provider>.json, one row per line so a refresh diffs readably."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{table.provider}.json"
    header = {
        "provider": table.provider,
        "read_at": table.read_at.isoformat(),
        "sources": table.sources,
        "notes": table.notes,
    }
    lines = [json.dumps(header, indent=1)[:-2] + ',\n "rows": [']
    rows = sorted(table.rows, key=lambda r: (r.kind or "", r.sku, r.region, r.count or 0))
    lines.append(",\n".join("  " + json.dumps(_row_to_json(r), separators=(",", ":")) for r in rows))
    lines.append(" ]\n}\n")
    path.write_text("\n".join(lines))
    return path
