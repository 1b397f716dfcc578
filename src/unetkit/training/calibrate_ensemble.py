"""The last step of ``unetkit cv --calibration-holdout``: fit one temperature (with a bias and a
threshold where the task takes them) on the ensemble's mean probabilities over the held-out
samples, and store it beside the folds (see :mod:`unetkit.inference.ensemble_calibration` for
why, and for how inference applies it).

It is the same fit as a single run's end-of-training calibration
(:func:`unetkit.training.calibrate.fit_checkpoint`), on the raw ensemble instead of one model,
with the first fold's config (device, batch size, monitored metric, ``eval.calibration_bias``),
and with the same TTA check (:mod:`unetkit.training.tta_check`) on the holdout: averaging
members already removes much of what averaging flips removes (benchmarks/README, "TTA views"),
so the ensemble keeps TTA only where its flips score higher there, whatever each fold chose.
The choice is stored in the record and every inference path of the cv folder runs it.
A rerun keeps a record whose members are unchanged and fits again otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from unetkit.checkpoint import trained_config
from unetkit.data.registry import build_splits
from unetkit.inference.ensemble import checkpoint_paths, load_ensemble
from unetkit.inference.ensemble_calibration import FILE, member_digests, read_record
from unetkit.training.calibrate import calibration_line, fit_checkpoint, sampling_segmenter
from unetkit.training.cv import FoldAssignment


def calibrate_ensemble(cv_dir: Path, assignment: FoldAssignment) -> list[str]:
    """Fit and write ``CV/ensemble_calibration.json`` (kept when its members are unchanged);
    the lines to print. Nothing without a calibration holdout or with ``eval.calibrate=false``."""
    if not assignment.calibration:
        return []
    paths = checkpoint_paths([cv_dir])
    members = member_digests(cv_dir, paths)
    path = cv_dir / FILE
    if _fitted_on(cv_dir, members):
        return [f"ensemble calibration: kept {path} (its {len(members)} members are unchanged)"]
    path.unlink(missing_ok=True)  # fitted on other members, or unreadable: inference refuses it
    cfg = trained_config(paths[0])
    if not cfg.eval.calibrate:
        return ["ensemble calibration: skipped (eval.calibrate=false)"]
    source = build_splits(cfg, split_record=assignment.calibration_record()).val
    ensemble = load_ensemble(paths)  # raw members: the fit needs the uncalibrated mean
    segmenter = sampling_segmenter(
        ensemble, cfg.train.device, cfg.train.batch_size, cfg.eval.tta_check
    )
    try:
        record = fit_checkpoint(
            segmenter, source, cfg.train.monitor, cfg.eval.calibration_bias, cfg.eval.tta_check
        )
    except ValueError as error:  # e.g. no foreground in the holdout to tune a threshold on
        return [f"ensemble calibration: skipped ({error})"]
    record = {"members": members, "samples": len(source), **record}
    path.write_text(json.dumps(record, indent=2) + "\n")
    line = calibration_line(record, f"the ensemble of {len(members)}")
    return [f"{line} on {len(source)} held-out samples", f"wrote {path}"]


def _fitted_on(cv_dir: Path, members: list[dict[str, str]]) -> bool:
    """Whether the cv folder holds a readable ensemble calibration of exactly ``members``."""
    if not (cv_dir / FILE).is_file():
        return False
    try:
        return read_record(cv_dir)["members"] == members
    except ValueError as error:  # unreadable: refitted, and said why
        print(f"ensemble calibration: fitting again ({error})", flush=True)
        return False
