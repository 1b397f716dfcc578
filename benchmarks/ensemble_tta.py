"""Should a cv ensemble run TTA? Its test score and its seconds per image with the flips its
members trained on, and with one pass, as ``predict`` runs it (each member calibrated and
thresholded as stored; ``--no-tta`` for the one pass).

    python benchmarks/ensemble_tta.py runs/cv-isbi-10m/isbi --repeats 3

The two variants alternate within each repeat (the machine is shared and noisy) and the median of
the repeats is given, with the ratio taken in the same run. Scores are the test split's pooled
headline metric from the metrics core, with the paired bootstrap interval that ``evaluate``
reports, TTA minus one pass.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from view_calibration import raw_run

from unetkit.inference.ensemble import checkpoint_paths
from unetkit.inference.segmenter import Segmenter
from unetkit.metrics.bootstrap import paired_difference
from unetkit.metrics.confusion import ConfusionMatrix
from unetkit.metrics.summary import headline_arrays


def run_once(segmenter: Segmenter, test) -> tuple[float, np.ndarray]:
    """Seconds over the split and its per-image confusion matrices ``(N, C, C)``."""
    matrices, seconds = [], 0.0
    for index in range(len(test)):
        image, mask = test.load(index)
        started = time.perf_counter()
        labels = segmenter.predict(image)
        seconds += time.perf_counter() - started
        matrix = ConfusionMatrix(segmenter.task.num_classes)
        matrix.update(torch.from_numpy(labels), mask)
        matrices.append(matrix.matrix.numpy())
    return seconds, np.stack(matrices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv_folder", type=Path)
    parser.add_argument("--metric", default="foreground_iou", help="a headline metric key")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    first_run = checkpoint_paths([args.cv_folder])[0].parents[1]
    _, splits = raw_run(first_run, args.batch_size, tta=False)
    variants = {
        "trained flips": Segmenter.from_checkpoint(args.cv_folder, "cpu", args.batch_size,
                                                   tta=True),
        "one pass": Segmenter.from_checkpoint(args.cv_folder, "cpu", args.batch_size, tta=False),
    }  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    matrices: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, segmenter in variants.items():
            spent, matrices[name] = run_once(segmenter, splits.test)
            seconds[name].append(spent / len(splits.test))
    binary = variants["one pass"].task.num_classes == 2
    print(f"\n{args.cv_folder}: test {args.metric}, {len(splits.test)} images, "
          f"median of {args.repeats} repeats\n")  # fmt: skip
    print("| variant | views | s / image | score |\n|---|---|---|---|")
    for name, segmenter in variants.items():
        score = float(headline_arrays(matrices[name].sum(0), binary)[args.metric])
        views = len(segmenter.tta_flips) if segmenter.tta else 1
        print(f"| {name} | {views} | {statistics.median(seconds[name]):.3f} | {score:.4f} |")
    verdict = paired_difference(
        matrices["trained flips"], matrices["one pass"], binary, args.metric
    )
    low, high = verdict["interval"]
    ratio = statistics.median(seconds["trained flips"]) / statistics.median(seconds["one pass"])
    print(f"\nTTA - one pass: {verdict['difference']:+.4f} [95% CI {low:+.4f}, {high:+.4f}], "
          f"TTA takes {ratio:.2f}x the time")  # fmt: skip


if __name__ == "__main__":
    main()
