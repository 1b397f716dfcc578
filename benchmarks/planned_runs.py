"""Planned training runs against their time budget: what `unetkit train` makes of a dataset when
it is given nothing but the data and the time.

Each run is ``unetkit train --dataset D --data-root R [--mode M] --time-budget B`` in its own
process (so the wall time includes start-up, planning, the data check, training, validation and
the final test evaluation), run one after another so no two share the CPU. Prints one Markdown
row per run: the wall time against the budget, the plan's main choices and the test metrics at
original resolution (``metrics.json``).

    python benchmarks/planned_runs.py --runs pet-binary pet-trimap isbi ccagt dsb --out runs/planned
    python benchmarks/planned_runs.py --runs isbi --extra --plan off --precision fp32   # "before"

Data are read from ../shared/data (the checkout's neighbour), as distributed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RUNS = {
    "pet-binary": ("oxford-pet", "oxford_pet_subset", "binary", "20m"),
    "pet-trimap": ("oxford-pet", "oxford_pet_subset", "trimap", "20m"),
    "isbi": ("isbi2012", "isbi2012_membrane", None, "10m"),
    "ccagt": ("ccagt", "ccagt_samples", None, "10m"),
    "dsb": ("dsb2018", "dsb2018_nuclei_subset", None, "10m"),
}


def run(name: str, out: Path, extra: list[str]) -> dict:
    dataset, folder, mode, budget = RUNS[name]
    command = [sys.executable, "-m", "unetkit", "train", "--dataset", dataset,
               "--data-root", str(DATA / folder), "--time-budget", budget, "--out", str(out),
               "--no-progress", *(["--mode", mode] if mode else []), *extra]  # fmt: skip
    started, cpu_before = time.perf_counter(), _children_cpu_seconds()
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - started
    row = summarise(name, out, budget, wall)
    # CPU time the run got over what the machine's cores offered in its wall time: near 100%
    # means it had the machine; well below means something else shared the cores.
    cpu = _children_cpu_seconds() - cpu_before
    row["cpu_share"] = f"{cpu / (wall * (os.cpu_count() or 1)):.0%}"
    return row


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summarise(name: str, out: Path, budget: str, wall: float) -> dict:
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    dataset = metrics["dataset"]
    history = (out / "history.csv").read_text().splitlines()
    return {
        "run": name,
        "budget": budget,
        "wall_s": round(wall, 1),
        "model": f"{cfg['model']['name']} {cfg['model']['options']}",
        "input": f"{cfg['data']['img_size']} tiles {cfg['data']['tile_size']}",
        "precision": f"{cfg['train']['precision']} cl={cfg['train']['channels_last']}",
        "epochs": len(history) - 1,
        "foreground_iou": dataset.get("foreground_iou"),
        "mean_iou": dataset.get("mean_iou"),
        "mean_dice": dataset.get("mean_dice"),
        "tta": cfg["eval"]["tta"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=sorted(RUNS))
    parser.add_argument("--out", default="runs/planned")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more train flags, e.g. --plan off")  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.runs:
        row = run(name, out / name, args.extra)
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("| " + " | ".join("---" for _ in keys) + " |")
    for row in rows:
        print("| " + " | ".join(_cell(row[k]) for k in keys) + " |")


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) and value < 1.01 else str(value)


if __name__ == "__main__":
    main()
