"""Under TTA, does it matter whether the calibration is fitted for the mean of calibrated flips?

    python benchmarks/view_calibration.py runs/family20-zen3/isbi/unet runs/pet-tta

For each finished run trained with ``eval.tta``: its validation split's four flips are sampled as
the end of training samples them, and two calibrations are fitted there: the one-view fit on the
flip-averaged probabilities (what training stored before the fit for views) and the fit for
views (:func:`unetkit.inference.view_calibration.fit_for_views`, what it stores now). Then, on
the test split at original resolution, the ECE and the mean NLL of every labelled pixel under
what a TTA Segmenter returns with each (raw, one-view fit, fit for views), in one pass per
calibration. Prints one Markdown row per run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from unetkit.checkpoint import load_checkpoint, model_from_checkpoint
from unetkit.cli.scoring import saved_split_record
from unetkit.config import config_from_dict
from unetkit.data.registry import DatasetSplits, build_splits
from unetkit.evaluation.calibration import reliability_histogram
from unetkit.inference.calibrated import Tempered
from unetkit.inference.calibration import Calibration, fit_logit_map
from unetkit.inference.segmenter import Segmenter
from unetkit.inference.view_calibration import ViewSample, averaged_logits, fit_for_views
from unetkit.tasks import IGNORE_INDEX
from unetkit.training.calibrate import flip_views, sample_views


def fits(segmenter: Segmenter, val) -> dict[str, Calibration]:
    """The identity, the one-view fit and the fit for views, on ``val``'s sampled flips."""
    sample = ViewSample(segmenter.task)
    sample_views(flip_views(segmenter), val, sample)
    logits, targets = sample.logits, sample.targets
    averaged = averaged_logits(logits, segmenter.task, Calibration())
    return {
        "raw": Calibration(),
        "one-view fit": fit_logit_map(averaged, targets, segmenter.task),
        "fit for views": fit_for_views(logits, targets, segmenter.task),
    }


def scores_on_test(segmenter: Segmenter, calibration: Calibration, test) -> tuple[float, float]:
    """Test ECE and mean NLL of the Segmenter's probabilities (its TTA too) with ``calibration``."""
    model = Tempered(segmenter.model, calibration.temperature, calibration.bias).eval()
    tempered = Segmenter(model, segmenter.task, segmenter.class_names, segmenter.preprocessing,
                         segmenter.device, segmenter.batch_size, mode=segmenter.mode,
                         window_size=segmenter.window_size, overlap=segmenter.overlap,
                         tta=segmenter.tta, precision=segmenter.asked_execution[0],
                         channels_last=segmenter.asked_execution[1])  # fmt: skip
    histogram, nll, pixels = reliability_histogram(segmenter.task), 0.0, 0
    for index in range(len(test)):
        image, mask = test.load(index)
        probs = tempered.predict_proba(image)
        histogram.update(probs, mask)
        counted = mask != IGNORE_INDEX
        chosen = np.take_along_axis(probs, mask.clip(0, probs.shape[0] - 1)[None], 0)[0]
        nll -= float(np.log(np.clip(chosen[counted], 1e-12, 1.0)).sum())
        pixels += int(counted.sum())
    return histogram.ece() or 0.0, nll / pixels


def raw_run(run_dir: Path, batch_size: int, tta: bool) -> tuple[Segmenter, DatasetSplits]:
    """A finished run's best.pt as a raw Segmenter on the CPU, and its splits as it trained."""
    path = run_dir / "checkpoints" / "best.pt"
    checkpoint = load_checkpoint(path)
    cfg = config_from_dict(checkpoint["config"])
    splits = build_splits(cfg, split_record=saved_split_record(run_dir, checkpoint, cfg))
    raw = Segmenter.from_loaded(model_from_checkpoint(path), "cpu", batch_size, tta=tta)
    if raw.task.multilabel:
        raise SystemExit(f"{run_dir}: multi-label; this comparison takes one mask per image")
    return raw, splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| run | calibration | T | bias | test ECE | test NLL |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run_dir in args.runs:
        raw, splits = raw_run(run_dir, args.batch_size, tta=True)
        for name, calibration in fits(raw, splits.val).items():
            ece, nll = scores_on_test(raw, calibration, splits.test)
            bias = "-" if calibration.bias is None else f"{calibration.bias[0]:+.3f}"
            print(f"| {run_dir} | {name} | {calibration.temperature:.3f} | {bias} | "
                  f"{ece:.4f} | {nll:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
