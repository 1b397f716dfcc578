"""``unetkit evaluate`` with several checkpoints (or a ``unetkit cv`` folder): the ensemble scored
on a split its members share, with each member's score beside it (the ``ensemble`` section)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from unetkit.checkpoint import load_checkpoint
from unetkit.cli.scoring import saved_split_record, score_split
from unetkit.config import Config, ConfigError
from unetkit.data import build_splits
from unetkit.data.splits import SplitRecord
from unetkit.evaluation.evaluate import Evaluation
from unetkit.evaluation.members import MemberScores
from unetkit.inference.calibration import Calibration, checked_tta
from unetkit.inference.ensemble import load_ensemble
from unetkit.inference.ensemble_calibration import pooled_record
from unetkit.inference.segmenter import Segmenter


def evaluate_ensemble(
    args: argparse.Namespace, paths: list[Path], cfg_of: Any, options: dict[str, Any]
) -> tuple[Evaluation, Config, Path]:
    """The evaluation of the ensemble of ``paths``, its config and its output folder.

    ``cfg_of(checkpoint)`` builds the evaluation config from a checkpoint (as for one model);
    ``options`` are the inference flags given."""
    _refuse_other_runtimes(args)
    checkpoints = [load_checkpoint(path) for path in paths]
    cfg = cfg_of(checkpoints[0])
    record = shared_split_record(paths, checkpoints, cfg, args.split)
    source = getattr(build_splits(cfg, split_record=record), args.split)
    pooled = pooled_record(args.checkpoint)  # a cv folder's calibration of the mean
    loaded = load_ensemble(paths, tta=checked_tta(pooled))  # raw: calibration measured beside
    loaded.task = dataclasses.replace(loaded.task, threshold=cfg.task.threshold)
    segmenter = Segmenter.from_loaded(loaded, args.device, args.batch_size, **options)
    members = MemberScores(
        [str(path) for path in paths],
        [Calibration.from_checkpoint(checkpoint) for checkpoint in checkpoints],
        loaded.task,
        loaded.class_names,
        cfg.eval,
        pooled=None if pooled is None else Calibration.from_dict(pooled["calibration"]),
    )
    evaluation = score_split(segmenter, source, args, cfg, members=members)
    evaluation.metrics["checkpoint"] = f"ensemble of {len(paths)}: {_common_folder(paths)}"
    evaluation.metrics["checkpoints"] = [str(path) for path in paths]
    return evaluation, cfg, _output_folder(args)


def shared_split_record(
    paths: list[Path], checkpoints: list[dict[str, Any]], cfg: Config, split: str
) -> SplitRecord | None:
    """The split record of the first member, once every member's run holds the same ``split``.

    Members of ``unetkit cv`` share the test split but not val or train: each fold's val is
    another fold's training data, so scoring the ensemble there would flatter it.
    """
    records = [
        saved_split_record(path.resolve().parent.parent, checkpoint, cfg)
        for path, checkpoint in zip(paths, checkpoints, strict=True)
    ]
    first = records[0]
    for path, record in zip(paths[1:], records[1:], strict=True):
        if (record is None) != (first is None) or (
            record is not None and set(record[split]) != set(first[split])
        ):
            raise ConfigError(
                f"the ensemble's members were not scored on the same {split} split: {paths[0]} "
                f"and {path} hold different {split} images. Members of `unetkit cv` share the "
                f"test split only (each fold's val is another fold's training data): evaluate "
                f"the ensemble with --split test"
            )
    return first


def _refuse_other_runtimes(args: argparse.Namespace) -> None:
    if args.exported:
        raise ConfigError(
            "--exported scores one exported file with the one --checkpoint it came from; an "
            "ensemble's members are scored with PyTorch (drop --exported, or pass one checkpoint)"
        )
    if (args.backend or "torch") != "torch":
        raise ConfigError(
            f"--backend {args.backend}: an ensemble is evaluated with PyTorch, which runs each "
            f"member apart to score it beside the ensemble; drop --backend"
        )


def _output_folder(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    given = [Path(source) for source in args.checkpoint]
    if len(given) == 1 and given[0].is_dir():
        return given[0] / "evaluation" / args.split
    raise ConfigError(
        "several --checkpoint files have no run folder of their own: give --out FOLDER (a "
        "`unetkit cv` folder given alone writes to FOLDER/evaluation/SPLIT)"
    )


def _common_folder(paths: list[Path]) -> str:
    parts = [path.resolve().parts for path in paths]
    common = []
    for names in zip(*parts, strict=False):
        if len(set(names)) != 1:
            break
        common.append(names[0])
    return str(Path(*common)) if common else str(paths[0])
