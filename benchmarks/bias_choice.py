"""Can held-out validation images tell whether a calibration bias will help on the test split?

    python benchmarks/bias_choice.py runs/cv-pet10/pet/fold_0 [RUN ...] [--no-tta]

A binary task's calibration fits a bias beside the temperature (``eval.calibration_bias``, on by
default), and on some Pet folds that bias made the test ECE worse than the temperature alone.
This measures a rule that would choose between the two maps from the validation split alone:
split the validation images into up to 5 folds of whole images, fit each map without a fold and
score its NLL there, and keep the bias if its pooled held-out NLL is lower (:func:`choose_bias`).

For each finished binary run: its validation split is sampled as the end of training samples it
(every flip under TTA); both maps are fitted there
(:func:`unetkit.inference.view_calibration.fit_for_views`) and the rule is applied (timed). Then,
on the test split at original resolution, the ECE and mean NLL over every labelled pixel of what
the Segmenter returns raw and with each map. Prints one Markdown row per run: the held-out NLLs,
the choice, both maps' test figures, and the test ECE after/before of the map chosen.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from view_calibration import raw_run, scores_on_test

from unetkit.inference.calibration import Calibration
from unetkit.inference.view_calibration import ViewSample, fit_for_views, view_nll
from unetkit.tasks import Task
from unetkit.training.calibrate import flip_views, sample_views


def image_of_each_row(sample: ViewSample) -> torch.Tensor:
    """The image (0, 1, ... as added) each of ``sample``'s rows comes from."""
    rows = [len(targets) for _, targets in sample._at_common_rate()]
    return torch.cat([torch.full((count,), image) for image, count in enumerate(rows)])


def choose_bias(
    logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor, task: Task, folds: int = 5
) -> tuple[bool, dict[bool, float]]:
    """Whether the bias lowers the NLL of held-out images (folds of whole images, at most one
    image per fold), and the pooled held-out NLL without (False) and with (True) it."""
    groups = torch.unique(images)
    folds = min(folds, len(groups))
    shuffled = groups[torch.randperm(len(groups), generator=torch.Generator().manual_seed(0))]
    totals = {False: 0.0, True: 0.0}
    for fold in range(folds):
        held = torch.isin(images, shuffled[fold::folds])
        for bias in totals:
            fitted = fit_for_views(logits[~held], targets[~held], task, bias, max_pixels=50_000)
            shift = None if fitted.bias is None else torch.tensor(fitted.bias).double()
            nll = view_nll(logits[held].double(), targets[held], task, fitted.temperature, shift)
            totals[bias] += float(nll) * int(held.sum())
    nll = {bias: total / len(targets) for bias, total in totals.items()}
    return nll[True] < nll[False], nll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-tta", action="store_true", help="score one view, not four flips")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| run | held-out NLL: T / T+bias | rule keeps the bias | rule s | raw test ECE | "
          "T only: T, ECE (after/before), NLL | T+bias: T, bias, ECE (after/before), NLL | "
          "rule: after/before |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run_dir in args.runs:
        raw, splits = raw_run(run_dir, args.batch_size, tta=not args.no_tta)
        task = raw.task
        sample = ViewSample(task)
        sample_views(flip_views(raw), splits.val, sample)
        logits, targets = sample.logits, sample.targets
        started = time.perf_counter()
        keep, held = choose_bias(logits, targets, image_of_each_row(sample), task)
        seconds = time.perf_counter() - started
        maps = {bias: fit_for_views(logits, targets, task, bias) for bias in (False, True)}
        raw_ece, raw_nll = scores_on_test(raw, Calibration(), splits.test)
        scored = {bias: scores_on_test(raw, fitted, splits.test) for bias, fitted in maps.items()}
        only, both = maps[False], maps[True]
        (ece_t, nll_t), (ece_b, nll_b) = scored[False], scored[True]
        print(f"| {run_dir} | {held[False]:.4f} / {held[True]:.4f} | {'yes' if keep else 'no'} | "
              f"{seconds:.1f} | {raw_ece:.4f} (NLL {raw_nll:.4f}) | "
              f"{only.temperature:.2f}, {ece_t:.4f} ({ece_t / raw_ece:.2f}), {nll_t:.4f} | "
              f"{both.temperature:.2f}, {both.bias[0]:+.2f}, {ece_b:.4f} ({ece_b / raw_ece:.2f}), "
              f"{nll_b:.4f} | {scored[keep][0] / raw_ece:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
