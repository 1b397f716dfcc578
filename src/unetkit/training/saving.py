"""The checkpoints an epoch leaves: ``last.pt`` always, ``best.pt`` when it improved, ``ema.pt``.

``last.pt`` holds everything a resume needs (optimiser, schedule, scaler, every process's random
generators, EMA, patience and budget counters); ``best.pt`` the same for the best epoch;
``ema.pt`` the averaged weights alone, as a checkpoint that evaluate and predict read like any
other. Every file is written to a temporary name, flushed to disk and renamed, so none is ever
half-written, and ``last.pt`` is written last: it is the commit point of an epoch. A process
killed between the files (``kill -9``, a power cut) leaves either the previous epoch's
``last.pt``, and a resume repeats the epoch and rewrites ``best.pt`` / ``ema.pt`` as they were,
or this epoch's complete set.

Every checkpoint records (key ``inference``) the inference config the final test evaluation runs
``best.pt`` with (:func:`final_test_inference`); the test reads it back from the file, and so do
``evaluate``, ``predict`` and ``export`` of any of these checkpoints, so without flags they run
as the test did.
"""

from __future__ import annotations

from typing import Any

from unetkit.checkpoint import Preprocessing, model_metadata, save_checkpoint
from unetkit.config import Config
from unetkit.data.transforms import trained_flips
from unetkit.inference.options import RECORD_KEY, InferenceConfig
from unetkit.training.setup import RunParts
from unetkit.training.state import GENERATOR_KEYS, TrainingState

RESUME_ONLY = ("optimizer", "schedule", "scaler", "ema", *GENERATOR_KEYS)  # not in ema.pt


def save_epoch_checkpoints(parts: RunParts, state: TrainingState, improved: bool) -> None:
    """Write this epoch's checkpoints (called by rank 0 only)."""
    checkpoints = parts.run_dir / "checkpoints"
    payload = {
        **_model_payload(parts, state.to_checkpoint()),
        **_optimisation_state(parts),
    }
    if improved:
        save_checkpoint(payload, checkpoints / "best.pt")
    if parts.ema is not None:
        ema_only = {k: v for k, v in payload.items() if k not in RESUME_ONLY}
        save_checkpoint({**ema_only, "model": parts.ema.state_dict()}, checkpoints / "ema.pt")
    save_checkpoint(payload, checkpoints / "last.pt")


def _model_payload(parts: RunParts, record: dict[str, Any]) -> dict[str, Any]:
    """The weights and what inference needs to use them, plus the run's ``record`` so far
    (:meth:`TrainingState.to_checkpoint`)."""
    cfg = parts.cfg
    preprocessing = Preprocessing(
        tuple(cfg.data.img_size),
        tuple(cfg.data.mean),
        tuple(cfg.data.std),
        cfg.data.in_channels,
        cfg.data.tile_size,
    )
    metadata = model_metadata(
        cfg.model.name, cfg.model.options, parts.task, cfg.task.class_names, preprocessing
    )
    inference = final_test_inference(cfg, preprocessing).to_dict()
    return {
        **metadata,
        RECORD_KEY: inference,
        "model": parts.model.state_dict(),
        "config": cfg.to_dict(),
        **record,
    }


def final_test_inference(cfg: Config, preprocessing: Preprocessing) -> InferenceConfig:
    """How the final test runs the model: windows of its input size, TTA as ``eval.tta`` over
    the flips the training augmentation used (none but the image itself under ``--augment
    none``, so no TTA then), and the precision measured (``auto``) unless the run was given an
    exact one, which is then kept, so ``--precision fp32 --no-channels-last`` reproduces
    metrics.json on any machine."""
    asked = (cfg.train.execution or {}).get("asked") or {}
    exact = (
        asked.get("precision", "auto") != "auto" and asked.get("channels_last", "auto") != "auto"
    )
    flips = trained_flips(cfg.data.augment)
    return InferenceConfig(
        window_size=preprocessing.img_size,
        tta=cfg.eval.tta and len(flips) > 1,
        tta_flips=flips,
        precision=cfg.train.precision if exact else "auto",
        channels_last=cfg.train.channels_last if exact else "auto",
    )


def _optimisation_state(parts: RunParts) -> dict[str, Any]:
    """What resuming needs beyond the weights and the training state."""
    return {
        "optimizer": parts.optimizer.state_dict(),
        "schedule": parts.schedule.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "ema": None if parts.ema is None else parts.ema.state_dict(),
    }
