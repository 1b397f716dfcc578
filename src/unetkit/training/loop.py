"""The training loop: epochs of steps, validation, checkpoints, history, a calibration fitted on
validation (:mod:`unetkit.training.calibrate`), a final test evaluation.

Training ends after ``train.epochs``, when a ``train.time_budget`` runs out (see
:mod:`unetkit.training.budget`), when ``train.patience`` epochs bring no better monitored value,
or on SIGINT / SIGTERM. A signal stops after the current step and discards the unfinished epoch:
``last.pt`` keeps the last complete one, so ``--resume auto`` continues exactly as an
uninterrupted run would; the process then ends normally (exit status 0) without the test
evaluation. A second signal aborts at once.

The same loop runs in every process of a ``torchrun`` launch (see
:mod:`unetkit.training.distributed`); rank 0 alone logs and writes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from unetkit.checkpoint import load_checkpoint, remove_stale_temporaries
from unetkit.config import Config
from unetkit.precision import describe_execution
from unetkit.training.calibrate import calibrate_run
from unetkit.training.distributed import start_processes, stop_processes
from unetkit.training.final_test import final_test
from unetkit.training.history import plot_history, write_history_csv
from unetkit.training.reproducibility import capture_rng_state, seed_everything
from unetkit.training.resume import TRAINED_FILE, resolve_resume
from unetkit.training.saving import save_epoch_checkpoints
from unetkit.training.setup import RunParts, build_run, resolve_run_dir
from unetkit.training.signals import GracefulStop
from unetkit.training.state import TrainingState
from unetkit.training.steps import train_one_epoch, validate
from unetkit.training.stopping import patience_exhausted, stale_epochs


def train(cfg: Config, started: float | None = None) -> Path:
    """Train as ``cfg`` says, write everything into the run folder, and return that folder.

    ``started``: when the time budget's clock started (``time.perf_counter()``), if before this
    call, e.g. when the run was planned first."""
    processes = start_processes(cfg.train.device)
    try:
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        run_dir = Path(processes.share(str(resolve_run_dir(cfg))))
        if processes.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        parts = build_run(cfg, run_dir, processes, started)
        if processes.rank > 0:  # same weights (DDP copies rank 0's), different augmentations
            seed_everything(cfg.train.seed + processes.rank, cfg.train.deterministic)
        return _train(parts)
    finally:
        stop_processes(processes)


def _train(parts: RunParts) -> Path:
    """Epochs, then (unless a signal stopped them) the test evaluation on rank 0."""
    run_dir, main = parts.run_dir, parts.processes.is_main
    if main:
        remove_stale_temporaries(run_dir / "checkpoints")  # left by a process killed mid-write
        (run_dir / TRAINED_FILE).unlink(missing_ok=True)  # training again: it has not ended
        parts.cfg.save(run_dir / "config.yaml")
        (run_dir / "splits.json").write_text(json.dumps(parts.splits.split_record, indent=1))
    state = _start_state(parts)
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard")) if main else None
    _log(parts, _start_line(parts))
    with GracefulStop() as stop:
        try:
            signalled = _run_epochs(parts, state, writer, stop)
        finally:  # plots once per run (0.4 s each time); TensorBoard shows curves while it trains
            if writer is not None:
                writer.close()
                plot_history(state.history, run_dir / "plots")
    if signalled:
        _log(
            parts,
            f"stopped by {stop.requested or 'a signal to another process'} after epoch "
            f"{state.epoch} (the unfinished epoch is discarded); continue with: "
            f"unetkit train --resume auto --out {run_dir}",
        )
    elif main:
        _calibrate(parts)
        _mark_trained(parts, state)
        if parts.cfg.train.final_test:
            _final_test(parts, state.history)
        else:
            _log(
                parts,
                f"test evaluation: not run (train.final_test=false); run it with: "
                f"unetkit evaluate --checkpoint {run_dir / 'checkpoints' / 'best.pt'}",
            )
    return run_dir


def _start_line(parts: RunParts) -> str:
    splits, processes, cfg = parts.splits, parts.processes, parts.cfg
    line = (
        f"run folder: {parts.run_dir}  device: {parts.device}  "
        f"train/val/test: {len(splits.train)}/{len(splits.val)}/{len(splits.test)} images"
    )
    if cfg.train.execution:
        line += "\n" + describe_execution(cfg.train.execution)
    if processes.enabled:
        per_step = cfg.train.batch_size * processes.world_size * cfg.train.accum_steps
        line += (
            f"\n{processes.world_size} processes ({parts.device.type}): "
            f"{cfg.train.batch_size} images per process per batch, {per_step} per optimiser step"
        )
    return line


def _run_epochs(
    parts: RunParts, state: TrainingState, writer: SummaryWriter | None, stop: GracefulStop
) -> bool:
    """Epochs until the epoch count, the time budget, the patience or a signal ends them;
    True when a signal did."""
    last_epoch = math.inf if parts.budget is not None else parts.cfg.train.epochs
    epoch = state.epoch
    while epoch < last_epoch:
        # a fresh run trains at least one epoch, so best.pt exists for the test evaluation
        budget_over = parts.budget is not None and parts.budget.exhausted() and epoch > 0
        signalled, budget_over = parts.processes.any(stop.requested is not None, budget_over)
        if signalled:
            return True
        if _time_to_stop(parts, state, budget_over):
            return False
        epoch += 1
        row = _run_epoch(parts, state, epoch, writer, stop)
        if row is None:  # a signal arrived mid-epoch
            return True
        state.history.append(row)
        _end_of_epoch(parts, state, row)
    return False


def _time_to_stop(parts: RunParts, state: TrainingState, budget_over: bool) -> bool:
    """Whether the budget or the patience is used up (logged once, when it happens)."""
    if budget_over:
        _log(parts, f"time budget of {parts.budget.seconds:.0f}s used: training ends")
        return True
    if patience_exhausted(state.stale_epochs, parts.cfg.train.patience):
        _log(
            parts,
            f"early stop: no better {parts.cfg.train.monitor} for {state.stale_epochs} epochs "
            f"(train.patience={parts.cfg.train.patience})",
        )
        return True
    return False


def _start_state(parts: RunParts) -> TrainingState:
    """A fresh state, or the one in ``--resume``'s checkpoint with every generator restored."""
    processes = parts.processes
    path = resolve_resume(parts.cfg.train.resume, parts.cfg.train.out)
    if path is None:
        return TrainingState(processes.world_size)
    checkpoint = load_checkpoint(path, map_location=parts.device)
    _load_weights_and_optimisation(parts, checkpoint)
    state = TrainingState.from_checkpoint(checkpoint, processes.world_size)
    if parts.budget is not None:
        parts.budget.continue_from(state.budget_spent or 0.0)
    state.restore_generators(processes.rank, parts.cfg.train.seed, parts.cfg.train.deterministic)
    _log(parts, f"resumed from {path} after epoch {state.epoch}")
    return state


def _load_weights_and_optimisation(parts: RunParts, checkpoint: dict[str, Any]) -> None:
    """Model, optimiser, schedule, scaler and EMA as ``checkpoint`` left them."""
    parts.model.load_state_dict(checkpoint["model"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.schedule.load_state_dict(checkpoint["schedule"])
    parts.scaler.load_state_dict(checkpoint["scaler"])
    if parts.ema is not None:  # a run that had no EMA before starts it from the current weights
        parts.ema.load_state_dict(checkpoint.get("ema") or checkpoint["model"])


def _run_epoch(
    parts: RunParts,
    state: TrainingState,
    epoch: int,
    writer: SummaryWriter | None,
    stop: GracefulStop,
) -> dict[str, Any] | None:
    """Train and validate one epoch; None when a signal cut it short."""
    started = time.perf_counter()
    lr = parts.optimizer.param_groups[0]["lr"]
    trained = train_one_epoch(parts, epoch, stop)
    if trained is None:
        return None
    state.count_steps(parts.processes.gather(trained.steps))
    val = _validate_all(parts)
    row = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": trained.loss,
        **val,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if writer is not None:
        for key, value in row.items():
            if key != "epoch" and value is not None:
                writer.add_scalar(key, value, epoch)
    return row


def _validate_all(parts: RunParts) -> dict[str, Any]:
    """The model's validation values, and the EMA's as ``val_ema_*``; the time they took becomes
    the budget's validation reserve."""
    started = time.perf_counter()
    parts.processes.copy_buffers_from_main(parts.model)
    values = validate(parts, parts.forward)
    if parts.ema is not None:
        parts.processes.copy_buffers_from_main(parts.ema.model)
        ema_values = validate(parts, parts.ema.model)
        values.update({"val_ema_" + key[4:]: value for key, value in ema_values.items()})
    if parts.budget is not None:
        parts.budget.validation_reserve = time.perf_counter() - started
    return values


def _end_of_epoch(parts: RunParts, state: TrainingState, row: dict[str, Any]) -> None:
    """Step the epoch schedule, keep best/last checkpoints, rewrite history.csv, log.

    Every process takes the same decisions here (the validation values are the same in all).
    """
    monitor = parts.cfg.train.monitor
    if monitor not in row:
        choices = ", ".join(k for k in row if k.startswith("val_"))
        raise ValueError(
            f"train.monitor {monitor!r} is not a validation value; choose one of {choices}"
        )
    value = row[monitor]
    minimise = monitor.endswith("loss")
    if value is None:  # undefined this epoch (e.g. no foreground in val): only a first best.pt
        improved = not (parts.run_dir / "checkpoints" / "best.pt").exists()
        improved = parts.processes.share(improved)
    else:
        parts.schedule.step_epoch(value if minimise else -value)
        best = state.best
        improved = best is None or (value < best if minimise else value > best)
        if improved:
            state.best = value
    state.epoch = row["epoch"]
    state.stale_epochs = stale_epochs(improved, state.stale_epochs)
    state.rng_by_rank = parts.processes.gather(capture_rng_state())
    if parts.processes.is_main:
        state.budget_spent = None if parts.budget is None else parts.budget.elapsed
        save_epoch_checkpoints(parts, state, improved)
        write_history_csv(state.history, parts.run_dir / "history.csv")
    _log(parts, _epoch_line(row, monitor, improved))


def _epoch_line(row: dict[str, Any], monitor: str, improved: bool) -> str:
    parts = [
        f"epoch {row['epoch']:>3}",
        f"train_loss {row['train_loss']:.4f}",
        f"val_loss {row['val_loss']:.4f}",
    ]
    for key in ("val_mean_iou", "val_mean_dice", "val_pixel_accuracy", "val_foreground_iou"):
        if row.get(key) is not None:
            parts.append(f"{key[4:]} {row[key]:.4f}")
    parts.append(f"lr {row['lr']:.2e}")
    parts.append(f"{row['seconds']:.1f}s")
    if improved:
        parts.append(f"* best {monitor}")
    return "  ".join(parts)


def _calibrate(parts: RunParts) -> None:
    """Fit and store the calibration of best.pt (and ema.pt) on val, unless eval.calibrate is off
    (:mod:`unetkit.training.calibrate`)."""
    cfg = parts.cfg
    if not cfg.eval.calibrate:
        _log(parts, "calibration: off (eval.calibrate=false)")
        return
    lines = calibrate_run(
        parts.run_dir,
        parts.splits.val,
        cfg.train.monitor,
        parts.device,
        cfg.train.batch_size,
        bias=cfg.eval.calibration_bias,
        tta_check=cfg.eval.tta_check,
    )
    for line in lines:
        _log(parts, line)


def _mark_trained(parts: RunParts, state: TrainingState) -> None:
    """Record that the epochs ended and best.pt holds its calibration (:data:`TRAINED_FILE`)."""
    record = {
        "epochs": state.epoch,
        "optimizer_steps": state.optimizer_steps_by_rank[0],  # of rank 0, as the plan counts
        "final_test": parts.cfg.train.final_test,
    }
    (parts.run_dir / TRAINED_FILE).write_text(json.dumps(record) + "\n")


def _final_test(parts: RunParts, history: list[dict[str, Any]]) -> None:
    """The test evaluation of ``best.pt`` (:mod:`unetkit.training.final_test`)."""
    _, lines = final_test(parts.run_dir, parts.splits.test, parts.cfg, parts.device, history)
    for line in lines:
        _log(parts, line)


def _log(parts: RunParts, message: str) -> None:
    """Print ``message`` above any progress bar, from rank 0 only."""
    if parts.processes.is_main:
        tqdm.write(message)
