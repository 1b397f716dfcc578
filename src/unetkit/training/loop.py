"""The training loop: epochs of steps, validation, checkpoints, history, a final test evaluation."""

from __future__ import annotations

import json
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
from unetkit.training.setup import RunParts, build_run, resolve_run_dir


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
    try:
        for epoch in range(state["epoch"] + 1, parts.cfg.train.epochs + 1):
            row = _run_epoch(parts, epoch, writer)
            state["history"].append(row)
            _end_of_epoch(parts, state, row)
    finally:  # plots once per run (0.4 s each time); TensorBoard shows curves while it trains
        writer.close()
        plot_history(state["history"], run_dir / "plots")
    _final_test(parts, state["history"])
    return run_dir


def _start_state(parts: RunParts) -> dict[str, Any]:
    """A fresh state, or the one in ``--resume``'s checkpoint with every generator restored."""
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None}
    if not parts.cfg.train.resume:
        return state
    checkpoint = load_checkpoint(parts.cfg.train.resume, map_location=parts.device)
    parts.model.load_state_dict(checkpoint["model"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.schedule.load_state_dict(checkpoint["schedule"])
    parts.scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_state(checkpoint["rng"])
    state.update(epoch=checkpoint["epoch"], history=checkpoint["history"], best=checkpoint["best"])
    _log(f"resumed from {parts.cfg.train.resume} after epoch {state['epoch']}")
    return state


def _run_epoch(parts: RunParts, epoch: int, writer: SummaryWriter) -> dict[str, Any]:
    started = time.perf_counter()
    lr = parts.optimizer.param_groups[0]["lr"]
    train_loss = _train_one_epoch(parts, epoch, writer)
    val = _validate(parts)
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


def _train_one_epoch(parts: RunParts, epoch: int, writer: SummaryWriter) -> float:
    """One pass over the training split; returns the mean loss."""
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
    for step, (images, masks) in enumerate(bar):
        images = images.to(parts.device, non_blocking=True)
        masks = masks.to(parts.device, non_blocking=True)
        with _autocast(parts):
            loss = parts.criterion(model(images), masks)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at epoch {epoch}, step {step}; "
                f"lower the learning rate (now {parts.optimizer.param_groups[0]['lr']:.3g})"
            )
        parts.scaler.scale(loss / accum).backward()
        if (step + 1) % accum == 0 or step + 1 == len(loader):
            _optimizer_step(parts)
        total += loss.item() * len(images)
        count += len(images)
        bar.set_postfix(loss=f"{total / count:.4f}")
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


@torch.inference_mode()
def _validate(parts: RunParts) -> dict[str, Any]:
    """Validation loss and metrics at the training size, as ``val_<name>`` keys."""
    parts.model.eval()
    confusion = ConfusionMatrix(parts.task.num_classes)
    total, count = 0.0, 0
    for images, masks in parts.val_loader:
        images, masks = images.to(parts.device), masks.to(parts.device)
        with _autocast(parts):
            logits = parts.model(images)
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
    checkpoints = parts.run_dir / "checkpoints"
    payload = _checkpoint_payload(parts, state)
    save_checkpoint(payload, checkpoints / "last.pt")
    if improved:
        save_checkpoint(payload, checkpoints / "best.pt")
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
