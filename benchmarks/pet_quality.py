"""Test quality on the Oxford-IIIT Pet subset after a bounded training time.

    python benchmarks/pet_quality.py --mode binary --out runs/pet-binary
    python benchmarks/pet_quality.py --mode trimap --out runs/pet-trimap

Trains the chosen recipe (below; extra ``section.key=value`` pairs override it), evaluates
``best.pt`` on the 298 official test images at their original resolution, and prints the training
seconds (sum of epoch times, validation included), the wall time and the headline test metrics.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "oxford_pet_subset"

# The recipe that fits 20 minutes of a 2-core CPU best among those tried (see the README).
RECIPE = [
    "--img-size",
    "128",
    "--batch-size",
    "8",
    "--epochs",
    "50",
    "--lr",
    "3e-3",
    "--optimizer",
    "adamw",
    "--scheduler",
    "cosine",
    "--augment",
    "light",
    "data.cache=true",
    "model.options.base_width=16",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["binary", "trimap"], default="binary")
    parser.add_argument("--data-root", default=str(DATA))
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    command = [
        sys.executable,
        "-m",
        "unetkit",
        "train",
        "--dataset",
        "oxford-pet",
        "--data-root",
        args.data_root,
        "--mode",
        args.mode,
        "--out",
        args.out,
        "--no-progress",
        *RECIPE,
        *args.overrides,
    ]
    print(" ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    with open(Path(args.out) / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    metrics = json.loads((Path(args.out) / "metrics.json").read_text())
    dataset = metrics["dataset"]
    keys = ["mean_iou", "foreground_iou", "pixel_accuracy"]
    summary = {key: dataset[key] for key in keys if key in dataset}
    summary["num_images"] = metrics["num_images"]
    summary["per_class_iou"] = {c["name"]: c["iou"] for c in dataset["per_class"]}
    summary["epochs"] = len(rows)
    summary["training_seconds"] = round(sum(float(r["seconds"]) for r in rows), 1)
    summary["wall_seconds_incl_test_eval"] = round(wall, 1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
