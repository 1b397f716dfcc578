"""Which U-Net of the registry wins under one time budget: the same data, budget and planner.

    python benchmarks/family_quality.py --data pet-binary isbi --budget 20m --out runs/family

Each run is ``unetkit train --dataset D --data-root R --time-budget B --model M`` in its own
process, one after another (no two share the CPU): the planner measures the fixed model and picks
its input size, batch and precision, so every architecture gets the same budget of this machine.
A run already finished in ``--out`` (its ``metrics.json`` exists) is summarised, not rerun, so
an interrupted comparison continues. Prints one JSON line per run and a Markdown table of the
test metrics at original resolution, per dataset, best first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from planned_runs import DATA, RUNS, summarise

ARCHITECTURES: dict[str, list[str]] = {
    "unet": ["--model", "unet"],
    "attention-unet": ["--model", "attention-unet", "model.options.base_width=16"],
    "unet-plus-plus": ["--model", "unet-plus-plus", "model.options.base_width=16"],
    "resenc-unet-cpu": ["--model", "resenc-unet", "model.options.size=cpu"],
    "timm-unet-mobilenetv3": ["--model", "unet", "model.options.encoder=mobilenetv3_large_100"],
    "resnet34-unet": ["--model", "resnet34-unet"],
}


def train(data: str, architecture: str, budget: str, out: Path) -> dict:
    """One planned run (or the summary of one already finished), with its wall time."""
    dataset, folder, mode, _ = RUNS[data]
    if not (out / "metrics.json").exists():
        command = [sys.executable, "-m", "unetkit", "train", "--dataset", dataset,
                   "--data-root", str(DATA / folder), "--time-budget", budget, "--out", str(out),
                   "--no-progress", *(["--mode", mode] if mode else []),
                   *ARCHITECTURES[architecture]]  # fmt: skip
        started = time.perf_counter()
        with open(out.with_suffix(".log"), "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
        (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    wall = float((out / "wall_seconds.txt").read_text())
    return {"data": data, "architecture": architecture, **summarise(data, out, budget, wall)}


def print_tables(rows: list[dict]) -> None:
    """Per dataset, the runs by test mean IoU, best first."""
    keys = ["architecture", "wall_s", "model", "input", "precision", "epochs",
            "foreground_iou", "mean_iou", "mean_dice"]  # fmt: skip
    for data in dict.fromkeys(row["data"] for row in rows):
        ranked = sorted((r for r in rows if r["data"] == data), key=lambda r: -r["mean_iou"])
        print(f"\n{data}, budget {ranked[0]['budget']}\n")
        print("| " + " | ".join(keys) + " |")
        print("| " + " | ".join("---" for _ in keys) + " |")
        for row in ranked:
            cells = [f"{v:.4f}" if isinstance(v, float) and v < 1.01 else str(v)
                     for v in (row[k] for k in keys)]  # fmt: skip
            print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=sorted(RUNS), default=["pet-binary", "isbi"])
    parser.add_argument("--architectures", nargs="+", choices=list(ARCHITECTURES),
                        default=list(ARCHITECTURES))  # fmt: skip
    parser.add_argument("--budget", default="20m")
    parser.add_argument("--out", default="runs/family")
    args = parser.parse_args()
    rows = []
    for data in args.data:
        for architecture in args.architectures:
            out = Path(args.out) / data / architecture
            out.parent.mkdir(parents=True, exist_ok=True)
            rows.append(train(data, architecture, args.budget, out))
            print(json.dumps(rows[-1]), flush=True)
    print_tables(rows)


if __name__ == "__main__":
    main()
