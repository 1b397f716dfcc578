"""What runs between two checkpoints: one epoch of training steps, one validation pass.

Both work unchanged in one process or several: per-step decisions are voted on
(:meth:`Processes.any`) and sums are summed over processes before anything is divided.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from unetkit.losses.deep_supervision import deep_supervision_loss
from unetkit.metrics import ConfusionMatrix, summarise
from unetkit.metrics.multilabel import LabelConfusion, summarise_labels
from unetkit.models.deep_supervision import forward_options
from unetkit.training.setup import RunParts
from unetkit.training.signals import GracefulStop


@dataclass
class EpochTraining:
    """What one epoch of steps did."""

    loss: float  # mean training loss over the images of every process
    steps: int  # optimiser steps this process took


def autocast(parts: RunParts) -> AbstractContextManager:
    """The run's precision (nothing for fp32); see :mod:`unetkit.precision`."""
    return parts.execution.autocast(parts.device.type)


def seed_epoch_order(loader: DataLoader, seed: int, epoch: int, rank: int = 0) -> None:
    """Fix the epoch's batch order from the seed alone, so a resumed run sees the same batches.

    Every process shuffles with the same seed (so their shards do not overlap); the data
    workers' seeds differ per process, so their augmentations do.
    """
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(seed * 100_003 + epoch + 7_919 * rank)


def train_one_epoch(parts: RunParts, epoch: int, stop: GracefulStop) -> EpochTraining | None:
    """One pass over the training split, or until the time budget ends; None when a signal
    arrived in any process (after all of them finished the step it interrupted)."""
    cfg, processes = parts.cfg, parts.processes
    parts.model.train()
    seed_epoch_order(parts.train_loader, cfg.train.seed, epoch, processes.rank)
    accum, batches = cfg.train.accum_steps, len(parts.train_loader)
    total, count, steps = 0.0, 0, 0
    bar = tqdm(
        parts.train_loader,
        desc=_epoch_label(parts, epoch),
        leave=False,
        disable=not (cfg.train.progress and processes.is_main),
        unit="batch",
    )
    for step, (images, masks) in enumerate(bar):
        stepped = (step + 1) % accum == 0 or step + 1 == batches
        loss = _accumulate_gradients(parts, images, masks, synchronise=stepped)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at epoch {epoch}, step {step}; "
                f"lower the learning rate (now {parts.optimizer.param_groups[0]['lr']:.3g})"
            )
        if stepped:
            optimizer_step(parts)
            steps += 1
        total += loss.item() * len(images)
        count += len(images)
        bar.set_postfix(loss=f"{total / count:.4f}")
        budget_over = stepped and parts.budget is not None and parts.budget.exhausted()
        signalled, budget_over = processes.any(stop.requested is not None, budget_over)
        if signalled:
            bar.close()
            return None
        if budget_over:
            break
    total, count = processes.sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return EpochTraining(total / max(count, 1), steps)


def _epoch_label(parts: RunParts, epoch: int) -> str:
    """``epoch 3/12``, or under a time budget ``epoch 3 (14m05s of 20m00s left)``."""
    budget = parts.budget
    if budget is None:
        return f"epoch {epoch}/{parts.cfg.train.epochs}"
    return f"epoch {epoch} ({_clock(budget.remaining)} of {_clock(budget.seconds)} left)"


def _clock(seconds: float) -> str:
    minutes, rest = divmod(max(int(seconds), 0), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def _accumulate_gradients(
    parts: RunParts, images: torch.Tensor, masks: torch.Tensor, synchronise: bool
) -> torch.Tensor:
    """Forward and backward one batch; gradients are averaged over processes only when
    ``synchronise`` (the last batch before an optimiser step): ``no_sync`` skips the rest."""
    layout = parts.execution.memory_format
    images = images.to(parts.device, non_blocking=True, memory_format=layout)
    masks = masks.to(parts.device, non_blocking=True)
    replica = parts.replica
    skip_sync = replica is not None and not synchronise
    with replica.no_sync() if skip_sync else nullcontext():
        with autocast(parts):
            model = parts.forward if replica is None else replica
            logits = model(images, **forward_options(parts.model))  # + deep supervision heads
        loss = deep_supervision_loss(parts.criterion, logits, masks)  # fp32 whatever the precision
        parts.scaler.scale(loss / parts.cfg.train.accum_steps).backward()
    return loss.detach()


def optimizer_step(parts: RunParts) -> None:
    """Clip (if asked), step, update the schedule and the weight average."""
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
def validate(parts: RunParts, model: Any) -> dict[str, Any]:
    """``model``'s validation loss and metrics at the training size, as ``val_<name>`` keys.

    Counts and loss sums are added up over processes first, so the metrics are those of the
    whole validation split, exactly.
    """
    parts.model.eval()
    layout = parts.execution.memory_format
    task = parts.task
    confusion: ConfusionMatrix | LabelConfusion = (
        LabelConfusion(task.num_classes) if task.multilabel else ConfusionMatrix(task.num_classes)
    )
    total, count = 0.0, 0
    for images, masks in parts.val_loader:
        images = images.to(parts.device, memory_format=layout)
        masks = masks.to(parts.device)
        with autocast(parts):
            logits = model(images).float()
        loss = parts.criterion(logits, masks)
        total += loss.item() * len(images)
        count += len(images)
        confusion.update(parts.task.labels(logits), masks)
    total, count = parts.processes.sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    parts.processes.sum(confusion.state)
    names = parts.cfg.task.class_names
    if isinstance(confusion, LabelConfusion):
        summary = summarise_labels(confusion.state, names)
    else:
        summary = summarise(confusion.matrix, names, binary=task.is_binary)
    row = {"val_loss": total / max(count, 1)}
    row.update({f"val_{k}": v for k, v in summary.items() if not isinstance(v, (list, dict))})
    if task.multilabel:  # each label's IoU too: the means hide a label that is never found
        row.update({f"val_iou_{r['name']}": r["iou"] for r in summary["per_class"]})
    return row
