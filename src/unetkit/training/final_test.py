"""The test evaluation that ends a run: ``best.pt`` on the test split at original resolution,
written as the run's ``metrics.json`` and report.

It runs as the checkpoint records (:func:`~unetkit.training.saving.final_test_inference`) and as
``unetkit evaluate`` runs it: the raw model at the task's threshold. The calibration stored at the
end of training is measured (ECE before / after) but not applied to the masks. ``unetkit cv``
runs it again on a fold whose stored calibration it replaced
(:mod:`unetkit.training.calibrate_folds`), so the fold's figures describe what it stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unetkit.checkpoint import model_from_checkpoint
from unetkit.config import Config
from unetkit.data.sources import SampleSource
from unetkit.evaluation.evaluate import describe, evaluate_source, write_evaluation
from unetkit.inference.calibration import Calibration
from unetkit.inference.segmenter import Segmenter


def final_test(
    run_dir: Path,
    test: SampleSource,
    cfg: Config,
    device: Any,
    history: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Evaluate ``RUN/checkpoints/best.pt`` on ``test`` into ``run_dir``; the metrics written to
    ``metrics.json`` and the lines to print."""
    best = run_dir / "checkpoints" / "best.pt"
    loaded = model_from_checkpoint(best)
    segmenter = Segmenter.from_loaded(loaded, device, cfg.train.batch_size)
    evaluation = evaluate_source(
        segmenter,
        test,
        split="test",
        options=cfg.eval,
        progress=cfg.train.progress,
        calibration=Calibration.from_checkpoint(loaded.checkpoint),
    )
    evaluation.metrics["checkpoint"] = str(best)
    written = write_evaluation(evaluation, run_dir, cfg.eval, history=history)
    lines = [describe(evaluation.metrics), *(f"wrote {path}" for path in written.values())]
    return evaluation.metrics, lines
