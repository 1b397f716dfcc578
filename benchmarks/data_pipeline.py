"""Images/s of the data loader alone and of a training epoch, with and without the sample cache.

    python benchmarks/data_pipeline.py --dataset oxford-pet \
        --data-root ../shared/data/oxford_pet_subset --img-size 256 --workers 0 2 --model-epoch

Each setting is timed over the whole training split; the cache is measured cold (first run, it
decodes and writes) and warm (later runs). Medians of --repeats passes, all in one process.
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


def epoch_images_per_second(cfg, run_dir) -> tuple[float, float]:
    """A training epoch's images/s, and the model-only images/s on batches already in memory."""
    parts = build_run(cfg, run_dir)
    parts.model.train()
    started, batches = time.perf_counter(), []
    for images, masks in parts.train_loader:
        _step(parts, images, masks)
        batches.append((images, masks))
    epoch = sum(len(b[0]) for b in batches) / (time.perf_counter() - started)
    started = time.perf_counter()
    for images, masks in batches:
        _step(parts, images, masks)
    pure = sum(len(b[0]) for b in batches) / (time.perf_counter() - started)
    return epoch, pure


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
                if args.model_epoch and workers == args.workers[0]:
                    with tempfile.TemporaryDirectory() as run_dir:
                        epoch, pure = epoch_images_per_second(cfg, Path(run_dir))
                    key = f"epoch cache={'on' if cache else 'off'} workers={workers}"
                    results[key] = round(epoch, 2)
                    results[key + " model-only"] = round(pure, 2)
                    print(key, round(epoch, 2), "model-only", round(pure, 2), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
