"""Images/s of the data loader alone and of a training epoch, with and without the sample cache.

    python benchmarks/data_pipeline.py --dataset oxford-pet \
        --data-root ../shared/data/oxford_pet_subset --img-size 256 --workers 0 2 --model-epoch

Each setting is timed over the whole training split; the cache is measured cold (first run, it
decodes and writes) and warm (later runs). With --model-epoch, for every worker count: training
epochs through the loader alternate with the same steps on batches held in memory, and the
pipeline cost is the median over repeats of (epoch / model-only) - 1. Medians of --repeats
passes, all in one process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from unetkit.config import load_config
from unetkit.data import build_splits
from unetkit.data.dataset import build_datasets
from unetkit.training.setup import build_run


def loader_images_per_second(cfg, workers: int) -> float:
    datasets = build_datasets(build_splits(cfg), cfg)
    loader = DataLoader(datasets["train"], batch_size=8, shuffle=True, num_workers=workers)
    started, count = time.perf_counter(), 0
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - started)


def epoch_seconds(cfg, run_dir, repeats: int) -> tuple[list[float], list[float], int]:
    """Seconds of training epochs through the loader, and of the same steps on batches already in
    memory (model only), alternating, ``repeats`` of each; and the images per epoch.

    The first loader epoch (worker start-up, cold cache) is a warm-up and not counted; the loader
    is the training run's own (persistent workers when there are workers).
    """
    parts = build_run(cfg, run_dir)
    parts.model.train()
    batches = [(images, masks) for images, masks in parts.train_loader]  # warm-up epoch
    count = sum(len(images) for images, _ in batches)
    with_loader, model_only = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for images, masks in parts.train_loader:
            _step(parts, images, masks)
        with_loader.append(time.perf_counter() - started)
        started = time.perf_counter()
        for images, masks in batches:
            _step(parts, images, masks)
        model_only.append(time.perf_counter() - started)
    return with_loader, model_only, count


def _step(parts, images, masks) -> None:
    loss = parts.criterion(parts.model(images), masks)
    loss.backward()
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="oxford-pet")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-epoch", action="store_true", help="also time a training epoch")
    parser.add_argument("--model", default="unet")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for cache in (False, True):
            for workers in args.workers:
                cfg = load_config(
                    overrides={
                        "data.dataset": args.dataset,
                        "data.root": args.data_root,
                        "data.img_size": [args.img_size] * 2,
                        "data.cache": cache,
                        "data.cache_dir": cache_dir,
                        "data.num_workers": workers,
                        "model.name": args.model,
                    },
                    dotted=args.overrides,
                )
                runs = [loader_images_per_second(cfg, workers) for _ in range(args.repeats)]
                label = f"loader cache={'on' if cache else 'off'} workers={workers}"
                if cache:
                    results[label + " (cold)"] = round(runs[0], 1)
                    runs = runs[1:] or runs
                results[label] = round(statistics.median(runs), 1)
                print(label, [round(r, 1) for r in runs], flush=True)
                if args.model_epoch:
                    with tempfile.TemporaryDirectory() as run_dir:
                        loaded, pure, count = epoch_seconds(cfg, Path(run_dir), args.repeats)
                    key = f"epoch cache={'on' if cache else 'off'} workers={workers}"
                    cost = statistics.median(a / b - 1 for a, b in zip(loaded, pure, strict=True))
                    results[key] = {
                        "images/s": round(count / statistics.median(loaded), 2),
                        "model-only images/s": round(count / statistics.median(pure), 2),
                        "pipeline cost": f"{cost:.1%}",
                    }
                    print(key, results[key], flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
