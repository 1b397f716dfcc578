"""What evaluation costs, and how it grows with the number of images and their size.

    python benchmarks/evaluation_time.py --checkpoint runs/pet-binary/checkpoints/best.pt \
        --counts 75 150 298 --scales 0.5 1 2 --scale-images 40

Loads the checkpoint's test split (its run's splits.json), predicts each image once (timed), then
times the metric families on the same predictions, adding one at a time: pixel counts only,
+ threshold-free histograms, + instances, + boundary distances, + clDice. Growth is measured twice:
over the first N images at their own size, and over --scale-images images resized by each scale
factor (image and mask).
Prints one JSON document of seconds and seconds per image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from unetkit.checkpoint import load_checkpoint
from unetkit.config import EvalConfig, config_from_dict
from unetkit.data import build_splits, load_split_record
from unetkit.inference.segmenter import Segmenter
from unetkit.metrics.split import SplitMetrics

FAMILIES = {
    "pixel counts (confusion matrices)": {},
    "+ threshold-free (ROC/PR histograms)": {"threshold_free": True},
    "+ instances (components, mAP, PQ)": {"instances": True},
    "+ boundary (HD95, ASSD, boundary IoU)": {"boundary": True, "cldice": False},
    "+ clDice (skeletons)": {"cldice": True},
}


def load_test_samples(checkpoint_path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    checkpoint = load_checkpoint(checkpoint_path)
    cfg = config_from_dict(checkpoint["config"])
    record = load_split_record(checkpoint_path.resolve().parent.parent / "splits.json")
    test = build_splits(cfg, split_record=record).test
    return [(test.names[i], *test.load(i)) for i in range(len(test))]


def rescale(image: np.ndarray, mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    resized = np.asarray(Image.fromarray(image.squeeze()).resize(size, Image.BILINEAR))
    return resized.reshape(size[1], size[0], -1), np.asarray(
        Image.fromarray(mask).resize(size, Image.NEAREST)
    )


def time_families(segmenter: Segmenter, samples: list) -> dict[str, float]:
    """Seconds of inference, then of each metric family (cumulative, as FAMILIES lists them)."""
    started = time.perf_counter()
    outputs = []
    for start in range(0, len(samples), segmenter.batch_size):
        chunk = samples[start : start + segmenter.batch_size]
        outputs += segmenter.predict_with_proba([image for _, image, _ in chunk])
    seconds = {"inference": time.perf_counter() - started}
    enabled = {"threshold_free": False, "instances": False, "boundary": False, "cldice": False}
    for label, switch in FAMILIES.items():
        enabled.update(switch)
        metrics = SplitMetrics(
            segmenter.class_names, segmenter.task.is_binary, EvalConfig(**enabled)
        )
        started = time.perf_counter()
        for (name, _, mask), (probs, prediction) in zip(samples, outputs, strict=True):
            metrics.add(name, probs, prediction, mask)
        metrics.result()
        seconds[label] = time.perf_counter() - started
    return seconds


def measure(segmenter: Segmenter, samples: list, label: str) -> dict[str, dict[str, float]]:
    """Seconds per family on ``samples``, in total and per image; printed as one JSON line."""
    seconds = time_families(segmenter, samples)
    result = {
        "seconds": seconds,
        "per_image": {key: round(value / len(samples), 4) for key, value in seconds.items()},
    }
    print(json.dumps({label: result}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--counts", type=int, nargs="+", default=[75, 150, 298])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--scale-images", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    segmenter = Segmenter.from_checkpoint(args.checkpoint, "cpu", args.batch_size)
    samples = load_test_samples(args.checkpoint)
    sizes = [mask.shape for _, _, mask in samples]
    report: dict = {
        "images": len(samples),
        "median_size_hw": [
            int(np.median([s[0] for s in sizes])),
            int(np.median([s[1] for s in sizes])),
        ],
        "by_count": {},
        "by_scale": {},
    }
    for count in args.counts:
        chosen = samples[:count]
        report["by_count"][len(chosen)] = measure(segmenter, chosen, label=str(len(chosen)))
    for scale in args.scales:
        chosen = [(n, *rescale(i, m, scale)) for n, i, m in samples[: args.scale_images]]
        report["by_scale"][scale] = measure(segmenter, chosen, label=f"x{scale}")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
