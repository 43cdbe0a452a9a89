"""Convert the dated price snapshot (CSVs + SOURCES.md) into chalicelib/pricing/data/*.json."""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chalicelib.pricing.tables import DATA_DIR, Row, Table, write_table  # noqa: E402

EC2_SOURCES = {
    "on_demand": "SkyPilot catalog (skypilot-org/skypilot-catalog catalogs/v8/aws/vms.csv @ e385a0d); "
    "every value equals instances.vantage.sh data of 2026-01-21 (tsaol/aws-gpu @ 7412fd2)",
    "spot": "SkyPilot catalog @ e385a0d: lowest price among the region's zones; undated, between 2025-08 and "
    "about 2026-01; spot prices change by zone and by hour",
}
EC2_NOTES = (
    "Linux, list prices. read_at is the date the on-demand figures were confirmed; the snapshot itself is "
    "undated. eu-west-1 has no g6, g6e, p4de or p5 rows."
)
GCE_SOURCES = {
    "on_demand": "SkyPilot catalog (skypilot-org/skypilot-catalog catalogs/v8/gcp/vms.csv @ 8427bbf), undated: "
    "on or after 2025-11-27",
    "spot": "SkyPilot catalog @ 8427bbf (spot is per region; GCP may change it once a day)",
}
GCE_NOTES = (
    "machine rows for a2/a3/g2 exclude their bundled GPUs (accelerator + count say which); a VM is machine + "
    "accelerators. Accelerator rows are the price of `count` GPUs. read_at is the earliest date the snapshot "
    "can be from."
)
# SOURCES.md §2 "Suspect rows": copied as published, never used for a cost.
GCE_SUSPECT = {
    ("nvidia-h100-80gb", "us-central1"): "4.20 per GPU against 9.80 in us-east4; looks like a discounted SKU",
    ("nvidia-a100-80gb", "us-central1"): "on-demand below its own spot price",
    ("nvidia-tesla-a100", "europe-west4"): "about half of every other region",
    ("nvidia-a100-80gb", "europe-west4"): "on-demand below its own spot price",
    ("nvidia-h200-141gb", "europe-west4"): "spot about equal to on-demand",
    ("nvidia-h200-141gb", "us-central1"): "disagrees with europe-west4 by 2x",
}
SAGEMAKER_SOURCES = {"on_demand": "see each row (SOURCES.md §3)"}
SAGEMAKER_NOTES = (
    "us-east-1 training instance types. Confidence per row: A = AWS Price List, us-east-1, Train usage type, "
    "dated; B = a SageMaker table in a named repository, component or region not stated, or older; C = weak. "
    "Managed spot training bills the on-demand rate for BillableTimeInSeconds, so there is no spot column."
)
_A_BULK = "(A) AWS bulk price file AmazonSageMaker of 2026-09-24, us-east-1, Train usage type"
_B_2021 = "(B) goerlitz/nlp-classification notebooks/10kGNAD/sagemaker/README.md @ b753c52 (component not stated)"
_B_2025 = "(B) JHUAPL-DTC-TA2/wiki docs/sagemaker_instances.md @ 2b48144 (Studio apps)"
_C_USW2 = "(C) AWS Price List, us-west-2, Studio-JupyterLab, effective 2026-09-01 (public excerpt)"
# instance type -> (read_at, source, suspect): SOURCES.md §3, row by row.
SAGEMAKER_ROWS = {
    "ml.m5.large": ("2026-08-11", "(A) AWS Price List Query API, USE1-Train:ml.m5.large (public excerpt)", None),
    "ml.m5.xlarge": ("2026-09-24", _A_BULK, None),
    "ml.g4dn.xlarge": ("2026-09-24", _A_BULK, None),
    "ml.g4dn.2xlarge": ("2021-11-29", _B_2021, None),
    "ml.g4dn.4xlarge": ("2025-04-29", _B_2025, None),
    "ml.g4dn.8xlarge": ("2025-04-29", _B_2025, None),
    "ml.g4dn.12xlarge": ("2021-11-29", _B_2021, None),
    "ml.g4dn.16xlarge": ("2021-11-29", _B_2021, None),
    "ml.g5.xlarge": ("2026-09-24", _A_BULK, None),
    "ml.g5.2xlarge": ("2026-08-20", "(A) aws pricing get-products, USE1-Train:ml.g5.2xlarge (public excerpt)", None),
    "ml.g5.4xlarge": ("2025-04-29", _B_2025, None),
    "ml.g5.8xlarge": ("2026-09-01", _C_USW2, None),
    "ml.g5.12xlarge": ("2026-09-01", _C_USW2, None),
    "ml.g5.16xlarge": (
        "2026-12-01",
        "(C) ZindiAfrica/AI-for-Equity-Challenges-Getting-Started-with-AWS-Resources sagemaker_instance_pricing.md",
        "undated, us-east-2, and the same table lists EC2 prices for other rows",
    ),
    "ml.g5.24xlarge": ("2026-09-01", _C_USW2, None),
    "ml.g5.48xlarge": ("2026-09-01", _C_USW2, None),
    "ml.p3.2xlarge": ("2025-04-29", _B_2025, None),
    "ml.p3.8xlarge": ("2025-04-29", _B_2025, None),
    "ml.p3.16xlarge": ("2021-11-29", _B_2021, None),
    "ml.p4d.24xlarge": ("2026-09-01", _C_USW2 + "; after the June 2025 price cut", None),
    "ml.p5.48xlarge": ("2026-09-01", _C_USW2 + "; after the June 2025 price cut", None),
}
VERTEX_NOTES = (
    "Vertex AI custom training bills the Compute Engine machine and accelerators plus a Vertex premium; no "
    "authoritative table of that premium was found (SOURCES.md §4), so every Vertex price is unknown"
)


def _num(text: str) -> float | None:
    return float(text) if text.strip() else None


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def ec2(snapshot: Path) -> Table:
    rows = [
        Row(r["instance_type"], r["region"], _num(r["on_demand_usd_per_hour"]), _num(r["spot_usd_per_hour"]))
        for r in _csv(snapshot / "ec2.csv")
    ]
    return Table("ec2", date(2026, 1, 21), EC2_SOURCES, EC2_NOTES, tuple(rows))


def gce(snapshot: Path) -> Table:
    raw = _csv(snapshot / "gce.csv")
    # Machine rows name SkyPilot's GPU type; the accelerator rows map it to the GCE accelerator name.
    names = {r["gpu_type"]: r["machine_type_or_accelerator"] for r in raw if r["kind"] == "accelerator"}
    rows = []
    for r in raw:
        sku, region = r["machine_type_or_accelerator"], r["region"]
        count = int(r["gpu_count"]) if r["gpu_count"] else None
        on_demand, spot = _num(r["on_demand_usd_per_hour"]), _num(r["spot_usd_per_hour"])
        if r["kind"] == "machine":
            rows.append(
                Row(
                    sku,
                    region,
                    on_demand,
                    spot,
                    kind="machine",
                    vcpus=float(r["vcpus"]),
                    memory_gib=float(r["memory_gib"]),
                    accelerator=names[r["gpu_type"]] if r["gpu_type"] else None,
                    count=count,
                )
            )
        else:
            rows.append(
                Row(
                    sku,
                    region,
                    on_demand,
                    spot,
                    kind="accelerator",
                    count=count,
                    suspect=GCE_SUSPECT.get((sku, region)),
                )
            )
    return Table("gce", date(2025, 11, 27), GCE_SOURCES, GCE_NOTES, tuple(rows))


def sagemaker(snapshot: Path) -> Table:
    rows = []
    for r in _csv(snapshot / "sagemaker_training.csv"):
        read_at, source, suspect = SAGEMAKER_ROWS[r["instance_type"]]
        rows.append(
            Row(
                r["instance_type"],
                r["region"],
                _num(r["on_demand_usd_per_hour"]),
                None,
                read_at=date.fromisoformat(read_at),
                source=source,
                suspect=suspect,
            )
        )
    # The table's date is its newest row's; each row shows its own.
    newest = max(r.read_at for r in rows if not r.suspect)
    return Table("sagemaker", newest, SAGEMAKER_SOURCES, SAGEMAKER_NOTES, tuple(rows))


def vertex(snapshot: Path) -> Table:
    header = (snapshot / "vertex_training.csv").read_text().strip()
    if _csv(snapshot / "vertex_training.csv"):
        raise SystemExit(f"vertex_training.csv has rows now ({header}): teach this importer their meaning first")
    return Table("vertex", date(2026, 12, 1), {}, VERTEX_NOTES, ())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("snapshot", type=Path, help="folder with ec2.csv, gce.csv, sagemaker_training.csv, ...")
    parser.add_argument("--output", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    for build in (ec2, gce, sagemaker, vertex):
        path = write_table(build(args.snapshot), args.output)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
