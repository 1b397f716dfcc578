"""The training loop: epochs of steps, validation, checkpoints, history, a final test evaluation.

Training ends after ``train.epochs``, when a ``train.time_budget`` runs out (see
:mod:`unetkit.training.budget`), when ``train.patience`` epochs bring no better monitored value,
or on SIGINT / SIGTERM. A signal stops after the current step and discards the unfinished epoch:
``last.pt`` keeps the last complete one, so ``--resume auto`` continues exactly as an
uninterrupted run would; the process then ends normally (exit status 0) without the test
evaluation. A second signal aborts at once.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from unetkit.checkpoint import Preprocessing, load_checkpoint, model_metadata, save_checkpoint
from unetkit.config import Config
from unetkit.evaluation.evaluate import describe, evaluate_source, write_evaluation
from unetkit.inference.segmenter import Segmenter
from unetkit.metrics import ConfusionMatrix, summarize
from unetkit.training.history import plot_history, write_history_csv
from unetkit.training.reproducibility import capture_rng_state, restore_rng_state, seed_everything
from unetkit.training.resume import resolve_resume
from unetkit.training.setup import RunParts, build_run, resolve_run_dir
from unetkit.training.signals import GracefulStop
from unetkit.training.speed import memory_format
from unetkit.training.stopping import patience_exhausted, stale_epochs


def train(cfg: Config) -> Path:
    """Train as ``cfg`` says, write everything into the run folder, and return that folder."""
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = build_run(cfg, run_dir)
    parts.cfg.save(run_dir / "config.yaml")
    (run_dir / "splits.json").write_text(json.dumps(parts.splits.split_record, indent=1))
    state = _start_state(parts)
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    _log(
        f"run folder: {run_dir}  device: {parts.device}  "
        f"train/val/test: {len(parts.splits.train)}/{len(parts.splits.val)}"
        f"/{len(parts.splits.test)} images"
    )
    with GracefulStop() as stop:
        try:
            _run_epochs(parts, state, writer, stop)
        finally:  # plots once per run (0.4 s each time); TensorBoard shows curves while it trains
            writer.close()
            plot_history(state["history"], run_dir / "plots")
    if stop.requested:
        _log(
            f"stopped by {stop.requested} after epoch {state['epoch']} (the unfinished epoch is "
            f"discarded); continue with: unetkit train --resume auto --out {run_dir}"
        )
        return run_dir
    _final_test(parts, state["history"])
    return run_dir


def _run_epochs(
    parts: RunParts, state: dict[str, Any], writer: SummaryWriter, stop: GracefulStop
) -> None:
    """Epochs until the epoch count, the time budget, the patience or a signal ends them."""
    last_epoch = math.inf if parts.budget is not None else parts.cfg.train.epochs
    epoch = state["epoch"]
    while epoch < last_epoch and not stop.requested and not _time_to_stop(parts, state):
        epoch += 1
        row = _run_epoch(parts, epoch, writer, stop)
        if row is None:  # a signal arrived mid-epoch
            return
        state["history"].append(row)
        _end_of_epoch(parts, state, row)


def _time_to_stop(parts: RunParts, state: dict[str, Any]) -> bool:
    """Whether the budget or the patience is used up (logged once, when it happens)."""
    if parts.budget is not None and parts.budget.exhausted():
        _log(f"time budget of {parts.budget.seconds:.0f}s used: training ends")
        return True
    if patience_exhausted(state["stale"], parts.cfg.train.patience):
        _log(
            f"early stop: no better {parts.cfg.train.monitor} for {state['stale']} epochs "
            f"(train.patience={parts.cfg.train.patience})"
        )
        return True
    return False


def _start_state(parts: RunParts) -> dict[str, Any]:
    """A fresh state, or the one in ``--resume``'s checkpoint with every generator restored."""
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "stale": 0}
    path = resolve_resume(parts.cfg.train.resume, parts.cfg.train.out)
    if path is None:
        return state
    checkpoint = load_checkpoint(path, map_location=parts.device)
    parts.model.load_state_dict(checkpoint["model"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.schedule.load_state_dict(checkpoint["schedule"])
    parts.scaler.load_state_dict(checkpoint["scaler"])
    if parts.ema is not None:  # a run that had no EMA before starts it from the current weights
        parts.ema.load_state_dict(checkpoint.get("ema") or checkpoint["model"])
    if parts.budget is not None:
        parts.budget.continue_from(checkpoint.get("budget_spent") or 0.0)
    restore_rng_state(checkpoint["rng"])
    state.update(
        epoch=checkpoint["epoch"],
        history=checkpoint["history"],
        best=checkpoint["best"],
        stale=checkpoint.get("stale_epochs", 0),
    )
    _log(f"resumed from {path} after epoch {state['epoch']}")
    return state


def _run_epoch(
    parts: RunParts, epoch: int, writer: SummaryWriter, stop: GracefulStop
) -> dict[str, Any] | None:
    """Train and validate one epoch; None when a signal cut it short."""
    started = time.perf_counter()
    lr = parts.optimizer.param_groups[0]["lr"]
    train_loss = _train_one_epoch(parts, epoch, writer, stop)
    if train_loss is None:
        return None
    val = _validate_all(parts)
    row = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": train_loss,
        **val,
        "seconds": round(time.perf_counter() - started, 2),
    }
    for key, value in row.items():
        if key != "epoch" and value is not None:
            writer.add_scalar(key, value, epoch)
    return row


def _autocast(parts: RunParts):
    if parts.amp_dtype is None:
        return nullcontext()
    return torch.autocast(parts.device.type, dtype=parts.amp_dtype)


def _validate_all(parts: RunParts) -> dict[str, Any]:
    """The model's validation values, and the EMA's as ``val_ema_*``; the time they took becomes
    the budget's validation reserve."""
    started = time.perf_counter()
    values = _validate(parts, parts.forward)
    if parts.ema is not None:
        ema_values = _validate(parts, parts.ema.model)
        values.update({"val_ema_" + key[4:]: value for key, value in ema_values.items()})
    if parts.budget is not None:
        parts.budget.validation_reserve = time.perf_counter() - started
    return values


def _train_one_epoch(
    parts: RunParts, epoch: int, writer: SummaryWriter, stop: GracefulStop
) -> float | None:
    """One pass over the training split, or until the time budget ends; returns the mean loss,
    or None when a signal arrived (after finishing the step it interrupted)."""
    cfg, model, loader = parts.cfg, parts.model, parts.train_loader
    model.train()
    loader.generator.manual_seed(cfg.train.seed * 100_003 + epoch)  # same order on resume
    accum = cfg.train.accum_steps
    total, count = 0.0, 0
    bar = tqdm(
        loader,
        desc=f"epoch {epoch}/{cfg.train.epochs}",
        leave=False,
        disable=not cfg.train.progress,
        unit="batch",
    )
    layout = memory_format(cfg.train)
    for step, (images, masks) in enumerate(bar):
        images = images.to(parts.device, non_blocking=True, memory_format=layout)
        masks = masks.to(parts.device, non_blocking=True)
        with _autocast(parts):
            loss = parts.criterion(parts.forward(images), masks)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at epoch {epoch}, step {step}; "
                f"lower the learning rate (now {parts.optimizer.param_groups[0]['lr']:.3g})"
            )
        parts.scaler.scale(loss / accum).backward()
        stepped = (step + 1) % accum == 0 or step + 1 == len(loader)
        if stepped:
            _optimizer_step(parts)
        total += loss.item() * len(images)
        count += len(images)
        bar.set_postfix(loss=f"{total / count:.4f}")
        if stop.requested:
            bar.close()
            return None
        if stepped and parts.budget is not None and parts.budget.exhausted():
            break
    writer.add_scalar("train_loss_last_step", loss.item(), epoch)
    return total / max(count, 1)


def _optimizer_step(parts: RunParts) -> None:
    if parts.cfg.train.grad_clip:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.cfg.train.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.schedule.step_batch()
    if parts.ema is not None:
        parts.ema.update(parts.model)


@torch.inference_mode()
def _validate(parts: RunParts, model: Any) -> dict[str, Any]:
    """``model``'s validation loss and metrics at the training size, as ``val_<name>`` keys."""
    parts.model.eval()
    layout = memory_format(parts.cfg.train)
    confusion = ConfusionMatrix(parts.task.num_classes)
    total, count = 0.0, 0
    for images, masks in parts.val_loader:
        images = images.to(parts.device, memory_format=layout)
        masks = masks.to(parts.device)
        with _autocast(parts):
            logits = model(images)
            loss = parts.criterion(logits, masks)
        total += loss.item() * len(images)
        count += len(images)
        confusion.update(parts.task.labels(logits), masks)
    summary = summarize(confusion.matrix, parts.cfg.task.class_names, binary=parts.task.is_binary)
    row = {"val_loss": total / max(count, 1)}
    row.update({f"val_{k}": v for k, v in summary.items() if not isinstance(v, (list, dict))})
    return row


def _end_of_epoch(parts: RunParts, state: dict[str, Any], row: dict[str, Any]) -> None:
    """Step the epoch schedule, keep best/last checkpoints, rewrite history.csv, log."""
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
    else:
        parts.schedule.step_epoch(value if minimise else -value)
        best = state["best"]
        improved = best is None or (value < best if minimise else value > best)
        if improved:
            state["best"] = value
    state["epoch"] = row["epoch"]
    state["stale"] = stale_epochs(improved, state["stale"])
    checkpoints = parts.run_dir / "checkpoints"
    payload = {**_checkpoint_payload(parts, state), **_control_state(parts, state)}
    save_checkpoint(payload, checkpoints / "last.pt")
    if improved:
        save_checkpoint(payload, checkpoints / "best.pt")
    if parts.ema is not None:  # the average alone, as a checkpoint evaluate/predict can read
        training_state = ("optimizer", "schedule", "scaler", "rng", "ema")
        ema_only = {k: v for k, v in payload.items() if k not in training_state}
        save_checkpoint({**ema_only, "model": parts.ema.state_dict()}, checkpoints / "ema.pt")
    write_history_csv(state["history"], parts.run_dir / "history.csv")
    _log(_epoch_line(row, monitor, improved))


def _checkpoint_payload(parts: RunParts, state: dict[str, Any]) -> dict[str, Any]:
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
    return {
        **metadata,
        "model": parts.model.state_dict(),
        "config": cfg.to_dict(),
        "epoch": state["epoch"],
        "best": state["best"],
        "history": list(state["history"]),
        "optimizer": parts.optimizer.state_dict(),
        "schedule": parts.schedule.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "rng": capture_rng_state(),
    }


def _control_state(parts: RunParts, state: dict[str, Any]) -> dict[str, Any]:
    """What the EMA, the patience and the time budget need to resume."""
    return {
        "ema": None if parts.ema is None else parts.ema.state_dict(),
        "stale_epochs": state["stale"],
        "budget_spent": None if parts.budget is None else parts.budget.elapsed,
    }


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


def _final_test(parts: RunParts, history: list[dict[str, Any]]) -> None:
    """Evaluate ``best.pt`` on the test split at original resolution; write metrics and report."""
    best = parts.run_dir / "checkpoints" / "best.pt"
    segmenter = Segmenter.from_checkpoint(
        best, device=parts.device, batch_size=parts.cfg.train.batch_size
    )
    evaluation = evaluate_source(
        segmenter,
        parts.splits.test,
        split="test",
        options=parts.cfg.eval,
        progress=parts.cfg.train.progress,
    )
    evaluation.metrics["checkpoint"] = str(best)
    written = write_evaluation(evaluation, parts.run_dir, parts.cfg.eval, history=history)
    _log(describe(evaluation.metrics))
    for path in written.values():
        _log(f"wrote {path}")


def _log(message: str) -> None:
    tqdm.write(message)
