"""How far a calibration of each kind can take the test ECE of a cv folder's folds (binary tasks).

For each fold's raw ``best.pt``: the test ECE at ``T = 1``, with the calibration it stores (fitted
on its validation fold), and at the best temperature alone and the best temperature and bias
chosen *on the test split itself*. The last two are ceilings that no fit on validation can pass:
if the best ``T`` on test cannot halve the ECE, temperature scaling cannot meet issue 15's target
on that model, whatever the fit. All four come from one pass over the test split, as a histogram
of logits (bins 0.01 wide on [-17, 17], float32's sigmoid range), so they can differ from
``unetkit evaluate``'s exact figure in the third decimal.

    python benchmarks/calibration_ceiling.py runs/cv-bench/pet runs/cv-bench/isbi
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from unetkit.checkpoint import load_checkpoint, model_from_checkpoint
from unetkit.cli.scoring import saved_split_record
from unetkit.config import config_from_dict
from unetkit.data.registry import build_splits
from unetkit.inference.calibration import Calibration, logits_from_probabilities
from unetkit.inference.segmenter import Segmenter

EDGES = np.linspace(-17.0, 17.0, 3401)
CENTRES = (EDGES[:-1] + EDGES[1:]) / 2
TEMPERATURES = np.geomspace(0.25, 8.0, 121)
BIASES = np.linspace(-4.0, 4.0, 161)  # holds 0 exactly (index 80)
ECE_BINS = 15


def logit_histogram(run_dir: Path, batch_size: int) -> tuple[np.ndarray, Calibration]:
    """Counts ``(2, bins)`` of the test pixels' raw logits by target (background, foreground),
    and the calibration the fold stores."""
    path = run_dir / "checkpoints" / "best.pt"
    checkpoint = load_checkpoint(path)
    cfg = config_from_dict(checkpoint["config"])
    test = build_splits(cfg, split_record=saved_split_record(run_dir, checkpoint, cfg)).test
    segmenter = Segmenter.from_loaded(model_from_checkpoint(path), "cpu", batch_size)
    if not segmenter.task.is_binary:
        raise SystemExit(f"{path}: calibration_ceiling measures binary tasks only")
    counts = np.zeros((2, len(CENTRES)))
    for start in range(0, len(test), batch_size):
        loaded = [test.load(i) for i in range(start, min(start + batch_size, len(test)))]
        probs = segmenter.predict_proba([image for image, _ in loaded])
        for prob, (_, mask) in zip(probs, loaded, strict=True):
            logits = logits_from_probabilities(prob, segmenter.task)[0].numpy()
            for label in (0, 1):
                counts[label] += np.histogram(logits[mask == label], EDGES)[0]
    return counts, Calibration.from_dict(checkpoint.get("calibration"))


def ece_grid(counts: np.ndarray, temperature: float, biases: np.ndarray) -> np.ndarray:
    """The ECE of ``sigmoid(z / temperature + b)`` for each ``b`` (foreground reliability, 15
    equal-width bins), from the logit histogram ``counts``."""
    q = 1.0 / (1.0 + np.exp(-(CENTRES[None, :] / temperature + biases[:, None])))
    bins = np.minimum((q * ECE_BINS).astype(int), ECE_BINS - 1)
    keys = (bins + ECE_BINS * np.arange(len(biases))[:, None]).ravel()
    size = ECE_BINS * len(biases)
    total = counts.sum(0)
    confidence = np.bincount(keys, (q * total).ravel(), size)
    positives = np.bincount(keys, np.tile(counts[1], len(biases)), size)
    gaps = np.abs(positives - confidence).reshape(len(biases), ECE_BINS).sum(1)
    return gaps / total.sum()


def fold_row(name: str, counts: np.ndarray, stored: Calibration) -> dict[str, float]:
    """The four ECEs of one fold, with the ceilings' arguments."""
    grid = np.stack([ece_grid(counts, t, BIASES) for t in TEMPERATURES])
    best_t = int(grid[:, 80].argmin())
    best_tb = np.unravel_index(grid.argmin(), grid.shape)
    bias = np.array([stored.bias[0] if stored.bias else 0.0])
    row = {
        "raw": float(ece_grid(counts, 1.0, np.zeros(1))[0]),
        "stored": float(ece_grid(counts, stored.temperature, bias)[0]),
        "best_t": float(grid[best_t, 80]),
        "best_tb": float(grid[best_tb]),
    }
    print(
        f"| {name} | {row['raw']:.4f} | {stored.describe()}: {row['stored']:.4f} "
        f"({row['stored'] / row['raw']:.2f}) | T = {TEMPERATURES[best_t]:.2f}: "
        f"{row['best_t']:.4f} ({row['best_t'] / row['raw']:.2f}) | "
        f"T = {TEMPERATURES[best_tb[0]]:.2f}, bias {BIASES[best_tb[1]]:+.2f}: "
        f"{row['best_tb']:.4f} ({row['best_tb'] / row['raw']:.2f}) |"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cv_folders", nargs="+", type=Path)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    print("| fold | ECE at T = 1 | stored (after/before) | best T on test | best T, bias on test |")
    print("|---|---|---|---|---|")
    for folder in args.cv_folders:
        rows = []
        for fold in sorted(folder.glob("fold_*")):
            with torch.inference_mode():
                counts, stored = logit_histogram(fold, args.batch_size)
            rows.append(fold_row(f"{folder.name} {fold.name}", counts, stored))
        medians = {
            key: statistics.median(row[key] / row["raw"] for row in rows)
            for key in ("stored", "best_t", "best_tb")
        }
        print(
            f"| {folder.name}: median after/before | | {medians['stored']:.2f} | "
            f"{medians['best_t']:.2f} | {medians['best_tb']:.2f} |"
        )


if __name__ == "__main__":
    main()
