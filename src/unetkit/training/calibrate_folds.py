"""The last step of ``unetkit cv`` on its folds: one temperature (with a bias and a threshold where
the task takes them) fitted on every fold's out-of-fold pixels together, stored in every fold.

Each fold's end of training fits its calibration on its own validation fold, ``1/k`` of train +
val: 54-60 images on the Pet subset. That is few. On a 5-fold Pet cv the maps so fitted brought
the test ECE to 0.505 of its raw value (median of the folds) where the best map of the same form,
chosen on the test split itself, reaches 0.33: the gap is the fit's noise, not the map's form
(``benchmarks/README.md``, issue 15). The folds share the data, the recipe and the budget, so they
err alike; pooling their held-out pixels, each predicted by the one fold that never trained on
it, fits one map on all of train + val, ``k`` times the images, and still no pixel calibrates a
model that saw it. The pooled sample takes every image at one rate
(:class:`~unetkit.inference.view_calibration.ViewSample`), as a single run's does.

The map replaces each fold's own in ``best.pt`` (and in ``ema.pt`` where every fold has one,
fitted on the EMA weights), each fold's ``calibration.json`` says so, and each fold's test is run
(:func:`unetkit.training.cv.test_fold`) so that its ``metrics.json`` measures what it stores:
one evaluation of the test split per fold, which the folds skipped at their end of training.
``CV/fold_calibration.json`` names the members by SHA-256 after the map went in: a rerun keeps a
fit whose members are unchanged, and fits again (from the raw weights, so the same map) when a
fold was trained again.
``unetkit cv --fold-calibration own`` leaves each fold its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unetkit.checkpoint import model_from_checkpoint, trained_config
from unetkit.config import Config
from unetkit.data.registry import build_splits
from unetkit.inference.ensemble_calibration import member_digests
from unetkit.inference.view_calibration import ViewSample
from unetkit.training.calibrate import (
    RECORD_FILE,
    calibration_line,
    fit_checked,
    flip_views,
    sample_views,
    sampling_segmenter,
    store_record,
)
from unetkit.training.cv import FoldAssignment, fold_dir, test_fold

FILE = "fold_calibration.json"
CHECKPOINTS = ("best.pt", "ema.pt")


def calibrate_folds(cv_dir: Path, assignment: FoldAssignment) -> list[str]:
    """Fit, store and record the shared calibration of each final checkpoint, then test every
    fold again; the lines to print. Kept when ``CV/fold_calibration.json`` already fits the
    folds' checkpoints; nothing with ``eval.calibrate=false``."""
    runs = [fold_dir(cv_dir, index) for index in range(len(assignment.folds))]
    cfg = trained_config(runs[0] / "checkpoints" / "best.pt")
    if not cfg.eval.calibrate:
        return ["fold calibration: skipped (eval.calibrate=false)"]
    stored, records, lines = _read(cv_dir / FILE), {}, []
    for name in CHECKPOINTS:
        paths = [run / "checkpoints" / name for run in runs]
        if not all(path.is_file() for path in paths):
            continue  # ema.pt: only where every fold has one
        if stored.get(name, {}).get("members") == member_digests(cv_dir, paths):
            records[name] = stored[name]
            lines.append(f"fold calibration of {name}: kept (its {len(paths)} folds are unchanged)")
            continue
        try:
            record = fit_folds(paths, assignment, cfg)
        except ValueError as error:  # e.g. no foreground anywhere to tune a threshold on
            lines.append(f"fold calibration of {name}: skipped, each fold keeps its own ({error})")
            continue
        for run, path in zip(runs, paths, strict=True):
            store_record(path, record)
            _note_in_run(run, name, record, cv_dir / FILE)
        records[name] = {"members": member_digests(cv_dir, paths), **record}
        described = calibration_line(record, f"{name} of every fold")
        lines.append(f"{described} on {record['samples']} out-of-fold samples")
        if name == "best.pt":  # the test measures best.pt's calibration
            for index, run in enumerate(runs):
                lines += _test_shared(run, assignment, index)
    if records != stored:  # last: a crash before it leaves a fit that a rerun makes again
        (cv_dir / FILE).write_text(json.dumps(records, indent=2) + "\n")
        lines.append(f"wrote {cv_dir / FILE}")
    return lines


def fit_folds(paths: list[Path], assignment: FoldAssignment, cfg: Config) -> dict[str, Any]:
    """One calibration record (:func:`~unetkit.training.calibrate.fit_checked`: with the TTA
    check on every fold's held-out pixels together, so every fold makes one choice) of the raw
    models ``paths`` on :func:`sample_folds`, with the number of held-out samples it saw."""
    sample, class_names, images = sample_folds(paths, assignment, cfg)
    record = fit_checked(
        sample, class_names, cfg.train.monitor, cfg.eval.calibration_bias, cfg.eval.tta_check
    )
    return {"samples": images, **record}


def sample_folds(
    paths: list[Path], assignment: FoldAssignment, cfg: Config
) -> tuple[ViewSample, list[str], int]:
    """One sample of every fold's validation split, fold ``i``'s predicted by the raw model
    ``paths[i]``; with the class names and the number of samples it went over."""
    if not paths:
        raise ValueError("there are no folds to calibrate")
    sample: ViewSample | None = None
    images = 0
    for index, path in enumerate(paths):
        segmenter = sampling_segmenter(
            model_from_checkpoint(path), cfg.train.device, cfg.train.batch_size, cfg.eval.tta_check
        )
        sample = sample or ViewSample(segmenter.task)
        val = build_splits(cfg, split_record=assignment.split_record(index)).val
        sample_views(flip_views(segmenter), val, sample)
        images += len(val)
    return sample, segmenter.class_names, images


def _test_shared(run: Path, assignment: FoldAssignment, index: int) -> list[str]:
    """Fold ``index``'s test, on its checkpoint with the shared calibration in."""
    metrics = test_fold(run, assignment, index)
    before, after = (metrics["calibration"][side]["ece"] for side in ("before", "after"))
    return [f"fold {index} tested with the shared calibration: test ECE {_text(before)} at "
            f"T = 1, {_text(after)} calibrated (wrote {run / 'metrics.json'})"]  # fmt: skip


def _note_in_run(run: Path, name: str, record: dict[str, Any], shared: Path) -> None:
    """Replace ``name``'s entry in the fold's ``calibration.json`` with the shared fit."""
    path = run / RECORD_FILE
    records = json.loads(path.read_text()) if path.is_file() else {}
    records[name] = {**record, "fitted_on": f"the out-of-fold samples of every fold ({shared})"}
    path.write_text(json.dumps(records, indent=2))


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _read(path: Path) -> dict[str, Any]:
    """The stored records by checkpoint name; none when the file is absent or unreadable (then
    the folds are fitted again, and the line says why)."""
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text())
        if not isinstance(records, dict):
            raise ValueError(f"a JSON object was expected, got {type(records).__name__}")
        return records
    except ValueError as error:
        print(f"fold calibration: fitting again ({path} is unreadable: {error})", flush=True)
        return {}
