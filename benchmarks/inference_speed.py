"""Training-step and inference speed of the shipped models, three ways, and a sliding-window run.

    python benchmarks/inference_speed.py --sizes 256 512 --batch-size 2 --steps 3

For each model and size: `unetkit.speed.bench.benchmark` with eager PyTorch fp32, channels-last, and
ONNX Runtime (all in this one process, same thread count), then one 2000x2000 image through the
Segmenter's sliding windows (random weights: speed does not depend on them). Prints JSON lines and
a table of medians.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from unetkit.checkpoint import Preprocessing
from unetkit.inference.segmenter import Segmenter
from unetkit.models import build_model
from unetkit.speed.bench import benchmark
from unetkit.tasks import Task

VARIANTS = {
    "eager fp32": {"backend": "torch"},
    "channels-last": {"backend": "torch", "channels_last": True},
    "onnxruntime": {"backend": "onnxruntime"},
}


def sliding_seconds(model_name: str, tile: int, side: int, batch_size: int) -> dict[str, float]:
    """Seconds for one ``side`` x ``side`` image in ``tile`` windows (overlap 0.25)."""
    task = Task(2)
    model = build_model(model_name, 3, task.out_channels)
    prep = Preprocessing((tile, tile), (0.5,) * 3, (0.25,) * 3, 3, tile_size=tile)
    segmenter = Segmenter(
        model, task, ["background", "foreground"], prep, "cpu", batch_size, mode="sliding"
    )
    image = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    segmenter.predict(image[:tile, :tile])  # warm-up
    started = time.perf_counter()
    mask = segmenter.predict(image)
    seconds = time.perf_counter() - started
    assert mask.shape == (side, side)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(seconds, 2), "process_peak_rss_mb": round(peak_mb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["resnet34-unet", "unet"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--sliding-side", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    for model in args.models:
        for size in args.sizes:
            for label, variant in VARIANTS.items():
                result = benchmark(model, size, args.batch_size, steps=args.steps,
                                   warmup=args.warmup, device="cpu", **variant)  # fmt: skip
                rows.append((model, size, label, result))
                print(json.dumps({"model": model, "size": size, "variant": label, **result}))
        sliding = sliding_seconds(model, 256, args.sliding_side, args.batch_size * 4)
        print(json.dumps({"model": model, "sliding_2000": sliding}), flush=True)
    print(f"\nthreads {torch.get_num_threads()}, batch {args.batch_size}, medians of {args.steps}")
    print(
        "model | size | variant | GFLOP/img | infer s/batch | infer img/s | GFLOP/s | train s/step"
    )
    for model, size, label, r in rows:
        train = r["training"]["latency_s_median"] if r["training"] else None
        print(
            f"{model} | {size} | {label} | {r['gflops_per_image']:.1f} | "
            f"{r['inference']['latency_s_median']:.3f} | {r['inference']['images_per_s']:.2f} | "
            f"{r['inference']['achieved_gflops_per_s']:.1f} | "
            + (f"{train:.3f}" if train is not None else "n/a")
        )


if __name__ == "__main__":
    main()
