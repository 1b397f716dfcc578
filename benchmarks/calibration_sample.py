"""Does the calibration sample need every image at one rate, or is a fixed count per image enough?

    python benchmarks/calibration_sample.py runs/family20-pet/pet-binary/unet [RUN ...] [--no-tta]

For each finished run: its validation split is sampled as the end of training samples it (every
flip under TTA), and the fit for views (:func:`unetkit.inference.view_calibration.fit_for_views`)
runs twice: on up to 10 000 pixels from every image (the rule before), and on the same pixels
thinned to one rate for every image (what training stores now,
:func:`unetkit.inference.calibration.at_common_rate`). Then, on the test split at original
resolution, the ECE and mean NLL over every labelled pixel of what the Segmenter returns with
each (and raw), and after/before. Only data of mixed image sizes can tell the two apart. Prints
one Markdown row per run and calibration.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from view_calibration import raw_run, scores_on_test

from unetkit.inference.calibration import Calibration
from unetkit.inference.segmenter import Segmenter
from unetkit.inference.view_calibration import ViewSample, fit_for_views
from unetkit.training.calibrate import flip_views, sample_views


class PerImageSample(ViewSample):
    """The sample as it was: every image's picked pixels, whatever share of it they are."""

    def _at_common_rate(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(logits, targets) for logits, targets, _ in self._images]


def fits(segmenter: Segmenter, val) -> dict[str, tuple[Calibration, int]]:
    """Raw, the fit on the per-image sample and on the same sample at one rate (with sizes)."""
    sample = PerImageSample(segmenter.task)
    sample_views(flip_views(segmenter), val, sample)
    pooled = ViewSample(segmenter.task)
    pooled._images = sample._images  # the very same picked pixels, thinned
    task = segmenter.task
    return {
        "raw": (Calibration(), 0),
        "per image": (fit_for_views(sample.logits, sample.targets, task), len(sample.targets)),
        "one rate": (fit_for_views(pooled.logits, pooled.targets, task), len(pooled.targets)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-tta", action="store_true", help="score one view, not four flips")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| run | sample | val pixels | T | bias | test ECE | after/before | test NLL |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run_dir in args.runs:
        raw, splits = raw_run(run_dir, args.batch_size, tta=not args.no_tta)
        before = None
        for name, (calibration, pixels) in fits(raw, splits.val).items():
            ece, nll = scores_on_test(raw, calibration, splits.test)
            before = ece if before is None else before
            bias = "-" if calibration.bias is None else f"{calibration.bias[0]:+.3f}"
            print(f"| {run_dir} | {name} | {pixels or '-'} | {calibration.temperature:.3f} | "
                  f"{bias} | {ece:.4f} | {ece / before:.2f} | {nll:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
