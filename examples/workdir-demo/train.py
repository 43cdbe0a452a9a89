"""A job that uses every part of the contract: its own code (this folder), two named inputs, checkpoints, outputs."""

import json
import os
import sys
from pathlib import Path

inputs = Path(os.environ["JOBPLANE_INPUT_DIR"])
checkpoint = Path(os.environ["JOBPLANE_CHECKPOINT_DIR"]) / "epoch.json"
outputs = Path(os.environ["JOBPLANE_OUTPUT_DIR"])
epochs = int(sys.argv[sys.argv.index("--epochs") + 1]) if "--epochs" in sys.argv else 3

rows = [line.split(",") for f in sorted((inputs / "samples").rglob("*.csv")) for line in f.read_text().split()]
labels = (inputs / "labels" / "labels.txt").read_text().split()
vocab = Path("vocab.txt").read_text().split()  # written by the spec's setup step, in this same folder
start = json.loads(checkpoint.read_text())["epoch"] if checkpoint.exists() else 0
print(f"{len(rows)} samples, {len(labels)} labels, {len(vocab)} vocabulary words; starting at epoch {start + 1}")
counts = {label: 0 for label in labels}
for epoch in range(start + 1, epochs + 1):
    for _, label in rows:
        counts[label] = counts.get(label, 0) + 1
    checkpoint.write_text(json.dumps({"epoch": epoch}))
    print(f"epoch {epoch}/{epochs} done", flush=True)
(outputs / "model.json").write_text(json.dumps({"label_counts": counts, "epochs": epochs}, indent=2))
(outputs / "report").mkdir(exist_ok=True)
(outputs / "report" / "summary.txt").write_text(f"trained on {len(rows)} samples for {epochs} epochs\n")
