"""What ``evaluate`` shares between one model and an ensemble: the run's own split, and the
scoring call with the command's flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from unetkit.config import Config
from unetkit.evaluation.evaluate import Evaluation, evaluate_source
from unetkit.inference.segmenter import Segmenter


def saved_split_record(run_dir: Path, checkpoint: dict[str, Any], cfg: Config) -> dict | None:
    """The run's own split, when evaluating on the data it was trained on."""
    trained = checkpoint["config"]["data"]
    same_data = (trained["dataset"], trained["root"]) == (cfg.data.dataset, cfg.data.root)
    path = run_dir / "splits.json"
    return json.loads(path.read_text()) if same_data and path.is_file() else None


def score_split(
    segmenter: Segmenter, source: Any, args: argparse.Namespace, cfg: Config, **given: Any
) -> Evaluation:
    """``evaluate_source`` on ``args.split`` with the flags and eval options of ``evaluate``;
    ``given``: the calibration or ensemble members to measure beside."""
    return evaluate_source(
        segmenter,
        source,
        split=args.split,
        options=cfg.eval,
        progress=not args.no_progress,
        **given,
    )
