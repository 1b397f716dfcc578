"""Each fold's own calibration against one shared by all folds, on a cv folder's test split.

    python benchmarks/shared_calibration.py runs/cv-bench/pet [CV ...]

For every fold's raw ``best.pt``: the map fitted on its own validation fold (what training
stores, :func:`unetkit.training.calibrate.fit_checkpoint`), and the map fitted once on every
fold's out-of-fold pixels together (what ``unetkit cv`` stores by default,
:func:`unetkit.training.calibrate_folds.fit_folds`), both refitted here from the raw weights, so
the folder may hold either. Then, on the test split at original resolution, the ECE and mean NLL
of every labelled pixel under what the Segmenter returns raw and with each map (one pass per
map), with the test-time augmentation the checkpoints record, as the fits use. Prints one
Markdown row per fold and the medians of the ECE after/before.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import torch
from view_calibration import raw_run, scores_on_test

from unetkit.checkpoint import load_checkpoint, model_from_checkpoint
from unetkit.config import config_from_dict
from unetkit.inference.calibration import Calibration
from unetkit.inference.segmenter import Segmenter
from unetkit.training.calibrate import fit_checkpoint
from unetkit.training.calibrate_folds import fit_folds
from unetkit.training.cv import FOLDS_FILE, FoldAssignment


def describe(calibration: Calibration) -> str:
    bias = "" if calibration.bias is None else f", {calibration.bias[0]:+.2f}"
    return f"{calibration.temperature:.2f}{bias}"


def compare(cv_dir: Path, batch_size: int) -> list[dict[str, float]]:
    """The rows of one cv folder: each fold's raw, own-map and shared-map test figures."""
    assignment = FoldAssignment.from_dict(json.loads((cv_dir / FOLDS_FILE).read_text()))
    runs = [cv_dir / f"fold_{index}" for index in range(len(assignment.folds))]
    paths = [run / "checkpoints" / "best.pt" for run in runs]
    cfg = config_from_dict(load_checkpoint(paths[0])["config"])
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, device="cpu", batch_size=batch_size)
    )
    shared = Calibration.from_dict(fit_folds(paths, assignment, cfg)["calibration"])
    tta = Segmenter.from_loaded(model_from_checkpoint(paths[0]), "cpu").tta
    rows = []
    for run in runs:
        raw, splits = raw_run(run, batch_size, tta)
        bias = cfg.eval.calibration_bias
        own = Calibration.from_dict(
            fit_checkpoint(raw, splits.val, cfg.train.monitor, bias)["calibration"]
        )
        (ece0, nll0), (ece1, nll1), (ece2, nll2) = (
            scores_on_test(raw, calibration, splits.test)
            for calibration in (Calibration(), own, shared)
        )
        print(f"| {run} | {ece0:.4f} ({nll0:.4f}) | {describe(own)}: {ece1:.4f} "
              f"({ece1 / ece0:.2f}), {nll1:.4f} | {describe(shared)}: {ece2:.4f} "
              f"({ece2 / ece0:.2f}), {nll2:.4f} |", flush=True)  # fmt: skip
        rows.append({"own": ece1 / ece0, "shared": ece2 / ece0})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv_folders", nargs="+", type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| fold | raw test ECE (NLL) | own map: T, bias: ECE (after/before), NLL | "
          "shared map: T, bias: ECE (after/before), NLL |")  # fmt: skip
    print("| --- | --- | --- | --- |")
    for folder in args.cv_folders:
        rows = compare(folder, args.batch_size)
        medians = {key: statistics.median(row[key] for row in rows) for key in ("own", "shared")}
        print(f"| {folder}: median after/before | | {medians['own']:.2f} | "
              f"{medians['shared']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
