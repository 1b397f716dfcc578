"""``unetkit calibrate``: fit a finished run's calibration again, on its own validation split.

Training fits the calibration once, at its end (:mod:`unetkit.training.calibrate`). Runs trained
before the calibration gained a bias, or with ``eval.calibration_bias=false``, can be refitted
without training again: the run's checkpoint config and ``splits.json`` give the same validation
images, and ``best.pt`` / ``ema.pt`` are rewritten with the new record (nothing else in them
changes). A ``unetkit cv`` folder stands for all its folds, each on its own held-out fold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from unetkit.checkpoint import load_checkpoint
from unetkit.cli.scoring import saved_split_record
from unetkit.config import config_from_dict
from unetkit.data.registry import build_splits
from unetkit.inference.ensemble import checkpoint_paths
from unetkit.training.calibrate import calibrate_run


def calibrate(args: argparse.Namespace) -> int:
    for run_dir in run_folders(args.runs):
        checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
        cfg = config_from_dict(checkpoint["config"])
        record = saved_split_record(run_dir, checkpoint, cfg)
        if record is None:
            raise FileNotFoundError(
                f"{run_dir / 'splits.json'} is missing: calibrate refits on the run's own "
                f"validation split, which that file records; evaluate the run instead"
            )
        val = build_splits(cfg, split_record=record).val
        bias = cfg.eval.calibration_bias if args.bias is None else args.bias
        lines = calibrate_run(
            run_dir, val, cfg.train.monitor, args.device, args.batch_size, bias, cfg.eval.tta_check
        )
        print(f"{run_dir}:")
        for line in lines:
            print(f"  {line}")
    print("measure it on the test split: unetkit evaluate --checkpoint RUN/checkpoints/best.pt")
    return 0


def run_folders(sources: list[str]) -> list[Path]:
    """The run folders named by ``sources``: run folders as given, a cv folder's folds in order,
    a checkpoint file's run (``RUN/checkpoints/best.pt`` -> ``RUN``)."""
    folders = []
    for source in map(Path, sources):
        if source.is_dir() and (source / "checkpoints" / "best.pt").is_file():
            folders.append(source)
        else:
            folders += [path.resolve().parent.parent for path in checkpoint_paths([source])]
    return list(dict.fromkeys(folders))
