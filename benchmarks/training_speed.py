"""Training speed options side by side: eager, channels-last, torch.compile; and DDP processes.

    python benchmarks/training_speed.py --model unet --size 128 --batch-size 8 --repeats 5
    python benchmarks/training_speed.py --ddp --epochs 4

Steps: one model per variant (same initial weights, same batch), a step = forward + CE loss +
backward + AdamW; after warm-up (compilation included there) the variants alternate within each
repeat, and the table gives medians and the median paired ratio to eager.

--ddp: the same short synthetic-data training run as one process (``--threads`` threads) and as
``unetkit train --nproc 2`` (torch shares the threads out); seconds per epoch from history.csv,
the first epoch left out.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unetkit.models import build_model

VARIANTS = ("eager", "channels-last", "compile")


def training_step(model: torch.nn.Module, variant: str, batch: torch.Tensor, target: torch.Tensor):
    """A function running one optimiser step of ``model`` in ``variant``."""
    layout = torch.channels_last if variant == "channels-last" else torch.contiguous_format
    model = model.to(memory_format=layout)
    images = batch.contiguous(memory_format=layout)
    forward = torch.compile(model) if variant == "compile" else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()

    def step() -> None:
        loss = criterion(forward(images), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def compare_steps(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    options = {"base_width": args.base_width} if args.model == "unet" else {}
    base = build_model(args.model, 3, args.classes, **options).train()
    batch = torch.randn(args.batch_size, 3, args.size, args.size)
    target = torch.randint(0, args.classes, (args.batch_size, args.size, args.size))
    steps = {v: training_step(copy.deepcopy(base), v, batch, target) for v in VARIANTS}
    for variant, step in steps.items():
        started = time.perf_counter()
        for _ in range(args.warmup):
            step()
        print(f"warm-up {variant}: {time.perf_counter() - started:.1f}s", flush=True)
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            started = time.perf_counter()
            steps[variant]()
            seconds[variant].append(time.perf_counter() - started)
    return {
        variant: {
            "median s/step": round(statistics.median(values), 3),
            "paired ratio to eager": round(
                statistics.median(v / e for v, e in zip(values, seconds["eager"], strict=True)), 3
            ),
        }
        for variant, values in seconds.items()
    }


def epoch_seconds(nproc: int, args: argparse.Namespace, out: Path) -> float:
    """Median seconds per epoch (first left out) of a synthetic-data run in ``nproc`` processes."""
    command = [sys.executable, "-m", "unetkit", "train", "--device", "cpu", "--out", str(out)]
    command += ["--nproc", str(nproc), "--epochs", str(args.epochs), "--no-progress"]
    command += ["--img-size", str(args.size), "--batch-size", str(args.batch_size // nproc)]
    command += [f"data.synthetic_count={args.images}", "eval.boundary=false"]
    command += [f"model.options.base_width={args.base_width}", "eval.instances=false"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    with open(out / "history.csv") as rows:
        epochs = [float(row["seconds"]) for row in csv.DictReader(rows)]
    return statistics.median(epochs[1:])


def compare_processes(args: argparse.Namespace) -> dict:
    """One process vs two with the same global batch, alternating, ``--repeats`` runs each."""
    seconds: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for nproc in (1, 2) if repeat % 2 == 0 else (2, 1):
                out = Path(folder) / f"run-{nproc}-{repeat}"
                seconds[nproc].append(epoch_seconds(nproc, args, out))
                print(f"{nproc} process(es): {seconds[nproc][-1]:.2f} s/epoch", flush=True)
    one, two = (statistics.median(seconds[n]) for n in (1, 2))
    return {"1 process s/epoch": one, "2 processes s/epoch": two, "ratio 2/1": round(two / one, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="global: split over processes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ddp", action="store_true", help="compare 1 and 2 training processes")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=120, help="synthetic images (--ddp)")
    args = parser.parse_args()
    result = compare_processes(args) if args.ddp else compare_steps(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
