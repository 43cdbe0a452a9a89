"""The endpoint handler for the model train.py writes: jobplane serves it unchanged on every backend.

preprocess cleans the request ("  Dog!! " -> "dog"), predict looks the label up in the trained counts, and
postprocess turns counts into a share and a readable answer."""

import json
import os


def load(model_dir):
    with open(os.path.join(model_dir, "model.json")) as fh:
        return json.load(fh)


def preprocess(request):
    text = str(request.get("text", ""))
    return {"label": "".join(ch for ch in text.lower() if ch.isalpha()), "raw": text}


def predict(model, inputs):
    counts = model["label_counts"]
    if inputs["label"] not in counts:
        raise KeyError(f"unknown label {inputs['label']!r}; the model knows {sorted(counts)}")
    return {"label": inputs["label"], "seen": counts[inputs["label"]], "total": sum(counts.values())}


def postprocess(outputs):
    share = outputs["seen"] / outputs["total"] if outputs["total"] else 0.0
    return {
        "label": outputs["label"],
        "share": round(share, 3),
        "answer": f"{outputs['label']}: seen {outputs['seen']} of {outputs['total']} times in training",
    }
