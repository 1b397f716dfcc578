"""Does bf16 cost accuracy? The same Pet run trained in fp32 and in bf16, and one checkpoint
evaluated in both.

    python benchmarks/precision_parity.py --epochs 8 --out runs/parity

1. ``unetkit train`` on the Oxford-IIIT Pet subset (binary) twice with the same seed, data order,
   epochs and recipe (``--plan off``, U-Net base width 16 at 128 px), once with ``--precision fp32
   --no-channels-last``, once with ``--precision bf16 --channels-last``; each is evaluated on the
   298 official test images at original resolution in fp32. Target: test foreground IoU within
   1 point.
2. The fp32-trained ``best.pt`` evaluated by ``unetkit evaluate`` in fp32 and in bf16 +
   channels-last. Target: within 0.2 points.

Only the pooled pixel metrics are computed (``eval.instances/boundary/threshold_free=false``), and
the mean seconds per epoch of each training is printed beside them.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford_pet_subset"
FAST_EVAL = ["eval.instances=false", "eval.boundary=false", "eval.threshold_free=false",
             "eval.report=false"]  # fmt: skip
EXACT = ["--precision", "fp32", "--no-channels-last"]
BF16 = ["--precision", "bf16", "--channels-last"]


def unetkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "unetkit", *args], check=True, stdout=subprocess.DEVNULL)


def train(out: Path, precision: list[str], epochs: int, data_root: Path) -> None:
    """One fixed-recipe run (its own test evaluation keeps the run's exact precision; the
    comparison below evaluates every checkpoint again, in fp32)."""
    unetkit("train", "--dataset", "oxford-pet", "--data-root", str(data_root), "--mode", "binary",
            "--plan", "off", "--img-size", "128", "128", "--epochs", str(epochs), "--seed", "0",
            "--out", str(out), "--no-progress", *precision, "model.options.base_width=16",
            *FAST_EVAL)  # fmt: skip


def evaluate(checkpoint: Path, out: Path, precision: list[str]) -> float:
    unetkit("evaluate", "--checkpoint", str(checkpoint), "--out", str(out), "--no-progress",
            *precision, *FAST_EVAL)  # fmt: skip
    return json.loads((out / "metrics.json").read_text())["dataset"]["foreground_iou"]


def seconds_per_epoch(run: Path) -> float:
    with open(run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    return sum(float(r["seconds"]) for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default="runs/parity")
    parser.add_argument("--data-root", type=Path, default=DATA)
    args = parser.parse_args()
    out = Path(args.out)
    for name, precision in (("fp32", EXACT), ("bf16", BF16)):
        train(out / name, precision, args.epochs, args.data_root)
    scores = {
        name: evaluate(out / name / "checkpoints" / "best.pt", out / f"{name}-eval-fp32", EXACT)
        for name in ("fp32", "bf16")
    }
    best = out / "fp32" / "checkpoints" / "best.pt"
    bf16_inference = evaluate(best, out / "fp32-eval-bf16", BF16)
    trained_gap = 100 * (scores["bf16"] - scores["fp32"])
    inference_gap = 100 * (bf16_inference - scores["fp32"])
    print(f"trained in fp32: test foreground IoU {scores['fp32']:.4f}, "
          f"{seconds_per_epoch(out / 'fp32'):.1f} s/epoch")  # fmt: skip
    print(f"trained in bf16: test foreground IoU {scores['bf16']:.4f}, "
          f"{seconds_per_epoch(out / 'bf16'):.1f} s/epoch; {trained_gap:+.2f} points (target "
          f"within 1)")  # fmt: skip
    print(f"fp32 checkpoint, bf16 inference: {bf16_inference:.4f}; {inference_gap:+.2f} points "
          f"(target within 0.2)")  # fmt: skip


if __name__ == "__main__":
    main()
