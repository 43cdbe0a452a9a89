"""A small, real training job: softmax regression with mini-batch SGD on generated data (numpy only)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def make_data(n: int, classes: int, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around random centres: separable enough to learn, noisy enough to be honest."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, size=(classes, dims))
    labels = rng.integers(0, classes, size=n)
    features = centres[labels] + rng.normal(0, 1.6, size=(n, dims))
    return features.astype(np.float64), labels


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def evaluate(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    p = softmax(x @ w + b)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    acc = float((p.argmax(axis=1) == y).mean())
    return loss, acc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=float(os.environ.get("LR", "0.1")))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--dims", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epoch-seconds", type=float, default=0.0, help="pause per epoch, to watch progress")
    args = parser.parse_args()

    out = Path(os.environ.get("JOBPLANE_OUTPUT_DIR", "outputs"))
    out.mkdir(parents=True, exist_ok=True)
    x, y = make_data(args.samples, args.classes, args.dims, args.seed)
    split = int(0.8 * len(y))
    xtr, ytr, xva, yva = x[:split], y[:split], x[split:], y[split:]
    mean, std = xtr.mean(axis=0), xtr.std(axis=0) + 1e-8
    xtr, xva = (xtr - mean) / std, (xva - mean) / std

    rng = np.random.default_rng(args.seed + 1)
    w = rng.normal(0, 0.01, size=(args.dims, args.classes))
    b = np.zeros(args.classes)
    print(
        f"training softmax regression: {len(ytr)} train / {len(yva)} val samples, "
        f"{args.classes} classes, {args.epochs} epochs, lr={args.lr}",
        flush=True,
    )
    started = time.time()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(ytr))
        for start in range(0, len(order), args.batch_size):
            idx = order[start : start + args.batch_size]
            p = softmax(xtr[idx] @ w + b)
            p[np.arange(len(idx)), ytr[idx]] -= 1.0
            w -= args.lr * xtr[idx].T @ p / len(idx)
            b -= args.lr * p.mean(axis=0)
        train_loss, train_acc = evaluate(w, b, xtr, ytr)
        val_loss, val_acc = evaluate(w, b, xva, yva)
        # jobplane's metrics contract: one JSON object of numbers per line, read on every backend.
        epoch_metrics = {
            "epoch": epoch,
            "train_loss": round(train_loss, 4),
            "train_accuracy": round(train_acc, 4),
            "val_loss": round(val_loss, 4),
            "val_accuracy": round(val_acc, 4),
        }
        print(f"JOBPLANE_METRICS {json.dumps(epoch_metrics)}", flush=True)
        if args.epoch_seconds:
            time.sleep(args.epoch_seconds)

    metrics = {
        "val_loss": round(val_loss, 4),
        "val_accuracy": round(val_acc, 4),
        "train_accuracy": round(train_acc, 4),
        "epochs": args.epochs,
        "seconds": round(time.time() - started, 3),
    }
    np.savez(out / "model.npz", w=w, b=b, mean=mean, std=std)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"JOBPLANE_METRICS {json.dumps({'seconds': metrics['seconds']})}", flush=True)
    print(f"model written to {out / 'model.npz'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
