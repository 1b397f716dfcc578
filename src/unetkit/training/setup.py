"""Everything a run needs before its first step: data checked, model, loss, optimiser, loaders."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler

from unetkit.config import Config
from unetkit.data import DataError, build_datasets, build_splits, check_splits, format_problems
from unetkit.data.preprocess import resolve_mean_std, size_hw
from unetkit.data.registry import DatasetSplits
from unetkit.losses import build_loss
from unetkit.models import build_model
from unetkit.precision import Execution, ExecutionChoice, choose_execution, detect_capabilities
from unetkit.precision_probe import training_step_timer
from unetkit.tasks import Task
from unetkit.training.budget import TimeBudget, parse_duration
from unetkit.training.distributed import (
    Processes,
    ShardSampler,
    data_parallel,
    start_processes,
    synchronise_batchnorm,
)
from unetkit.training.ema import WeightEMA
from unetkit.training.optim import LRSchedule, build_optimizer, build_scheduler
from unetkit.training.speed import prepare_model


@dataclass
class RunParts:
    """The objects one training run works with.

    Three handles on the model, each for one use (torchvision's references have the first two,
    as ``model_without_ddp`` and ``model``):

    * ``model``: the module itself. Its parameters are the optimiser's, its state dict is what
      checkpoints hold (so no ``module.`` or ``_orig_mod.`` prefixes), the EMA follows it, and
      ``train()`` / ``eval()`` switch its mode.
    * ``replica``: what training steps call when several processes train: the model's
      ``DistributedDataParallel`` wrapper (backward averages gradients; ``no_sync`` skips that),
      compiled where asked. None in one process, where steps call ``forward``.
    * ``forward``: what validation calls, and training in one process: the model, compiled
      where asked. Never the DDP wrapper, whose forward synchronises buffers across processes
      while each validates a different number of batches.

    ``ema.model`` is not a handle on the model but the EMA's own copy of the weights.
    """

    cfg: Config
    run_dir: Path
    processes: Processes  # this process's rank, the process count and its device
    task: Task
    splits: DatasetSplits
    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    execution: Execution  # precision and memory format of every step (chosen by auto)
    train_loader: DataLoader
    val_loader: DataLoader
    forward: Callable[[torch.Tensor], torch.Tensor]
    replica: torch.nn.Module | None = None  # DistributedDataParallel, compiled where asked
    budget: TimeBudget | None = None
    ema: WeightEMA | None = None

    @property
    def device(self) -> torch.device:
        return self.processes.device


def resolve_run_dir(cfg: Config) -> Path:
    """``train.out``, else ``runs/<dataset>-<model>-<timestamp>``."""
    if cfg.train.out:
        return Path(cfg.train.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.dataset}-{cfg.model.name}-{stamp}"


def load_and_check_data(cfg: Config, run_dir: Path) -> tuple[Config, DatasetSplits]:
    """Build the splits (reusing a saved ``splits.json``), check them, and fill in the classes."""
    record_path = run_dir / "splits.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    splits = build_splits(cfg, split_record=record)
    num_classes = len(splits.class_names)
    problems = check_splits(splits, num_classes, progress=cfg.train.progress)
    if any(problem.is_error for problem in problems):
        raise DataError(format_problems(problems))
    if problems:
        warnings.warn(format_problems(problems), stacklevel=2)
    return complete_config(cfg, splits), splits


def complete_config(cfg: Config, splits: DatasetSplits) -> Config:
    """``cfg`` with the class names the data has and the normalisation it resolves to."""
    task_cfg = dataclasses.replace(
        cfg.task, num_classes=len(splits.class_names), class_names=list(splits.class_names)
    )
    mean, std = resolve_mean_std(cfg.data.mean, cfg.data.std, cfg.data.in_channels)
    data_cfg = dataclasses.replace(cfg.data, mean=list(mean), std=list(std))
    return dataclasses.replace(cfg, task=task_cfg, data=data_cfg)


def agree_on_data(cfg: Config, run_dir: Path, processes: Processes) -> tuple[Config, DatasetSplits]:
    """Rank 0 checks the data and fixes the split; the other processes take that split.

    A data problem raises in every process, so none is left waiting for the others.
    """
    if not processes.enabled:
        return load_and_check_data(cfg, run_dir)
    outcome: tuple[bool, Any] = (False, None)
    if processes.is_main:
        try:
            cfg, splits = load_and_check_data(cfg, run_dir)
            outcome = (True, splits.split_record)
        except Exception as error:
            processes.share((False, f"{type(error).__name__}: {error}"))
            raise
    ok, payload = processes.share(outcome)
    if processes.is_main:
        return cfg, splits
    if not ok:
        raise DataError(f"rank 0 could not prepare the data:\n{payload}")
    splits = build_splits(cfg, split_record=payload)
    return complete_config(cfg, splits), splits


def build_run(
    cfg: Config, run_dir: Path, processes: Processes | None = None, started: float | None = None
) -> RunParts:
    """Check the data, then build model, loss, optimiser, schedule and loaders from ``cfg``.

    ``started`` (a ``time.perf_counter()`` value) is when the time budget's clock started, if
    earlier than now (planning counts)."""
    processes = processes or start_processes(cfg.train.device)
    device = processes.device
    budget = None  # started first: the data check and the precision probe count too
    if cfg.train.time_budget is not None:
        seconds = parse_duration(cfg.train.time_budget)
        reserve = cfg.train.final_reserve if cfg.train.final_test else 0.0  # no test to keep for
        budget = TimeBudget(seconds, reserve, started)
    cfg, splits = agree_on_data(cfg, run_dir, processes)
    task = Task.from_config(cfg.task.num_classes, cfg.task.threshold, cfg.task.type)
    model = build_model(
        cfg.model.name, cfg.data.in_channels, task.out_channels, **cfg.model.options
    )
    model.to(device)
    criterion = build_loss(cfg.loss.spec, task, cfg.loss.class_weights, cfg.loss.focal_gamma)
    criterion = criterion.to(device)
    choice = choose_training_execution(cfg, model, criterion, task, processes)
    cfg = record_execution(cfg, choice)
    if cfg.train.sync_bn:  # after the probe: its copies must not take part in collectives
        model = synchronise_batchnorm(model, processes).to(device)
    forward = prepare_model(model, cfg.train, device)
    replica = data_parallel(model, processes) if processes.enabled else None
    if replica is not None and cfg.train.compile:
        replica = torch.compile(replica)  # no_sync and the rest still reach the wrapper
    ema = WeightEMA(model, cfg.train.ema) if cfg.train.ema is not None else None
    train_loader, val_loader = build_loaders(cfg, splits, processes)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    steps_per_epoch = -(-len(train_loader) // cfg.train.accum_steps)
    progress = budget.progress if budget is not None else None
    schedule = build_scheduler(
        optimizer, cfg.optim, steps_per_epoch, cfg.train.epochs, progress=progress
    )
    scaler = torch.amp.GradScaler(device.type, enabled=choice.execution.precision == "fp16")
    return RunParts(
        cfg=cfg,
        run_dir=run_dir,
        processes=processes,
        task=task,
        splits=splits,
        model=model,
        criterion=criterion,
        optimizer=optimizer,
        schedule=schedule,
        scaler=scaler,
        execution=choice.execution,
        train_loader=train_loader,
        val_loader=val_loader,
        forward=forward,
        replica=replica,
        budget=budget,
        ema=ema,
    )


def build_loaders(
    cfg: Config, splits: DatasetSplits, processes: Processes
) -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches (order seeded per epoch by the loop); validation batches.

    With several processes each trains on its own shard of every epoch and validates on every
    ``world_size``-th validation image.
    """
    datasets = build_datasets(splits, cfg)
    common: dict[str, Any] = {
        "batch_size": cfg.train.batch_size,
        "num_workers": cfg.data.num_workers,
        "pin_memory": processes.device.type == "cuda",
        "persistent_workers": cfg.data.num_workers > 0,
    }
    train_set, val_set = datasets["train"], datasets["val"]
    if cfg.data.train_repeats > 1:  # one epoch = several passes: validation stays a small share
        train_set = ConcatDataset([train_set] * cfg.data.train_repeats)
    train_order: dict[str, Any] = {"shuffle": True}
    val_order: dict[str, Any] = {"shuffle": False}
    shard_length = len(train_set)
    if processes.enabled:
        sampler = DistributedSampler(
            train_set, processes.world_size, processes.rank, shuffle=True, seed=cfg.train.seed
        )
        train_order = {"sampler": sampler}
        val_order = {"sampler": ShardSampler(len(val_set), processes.rank, processes.world_size)}
        shard_length = len(sampler)
    train_loader = DataLoader(
        train_set,
        drop_last=shard_length > cfg.train.batch_size,
        generator=torch.Generator(),
        **train_order,
        **common,
    )
    return train_loader, DataLoader(val_set, **val_order, **common)


def choose_training_execution(
    cfg: Config,
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    task: Task,
    processes: Processes,
) -> ExecutionChoice:
    """``train.precision`` and ``train.channels_last``, ``auto`` ones measured on a few
    training steps of this model and batch shape (see :mod:`unetkit.precision`).

    A config that already holds a choice (a resumed run, or ``--config runs/X/config.yaml``) is
    taken as it is. With several processes every one probes at the same time, on purpose: they
    will train at the same time, sharing the CPU cores or the host, so that is the condition to
    measure; all then take rank 0's choice, so no two ranks run different precisions.
    """
    height, width = size_hw(cfg.data.img_size)
    shape = (cfg.train.batch_size, cfg.data.in_channels, height, width)
    timer = training_step_timer(model, criterion, shape, task, processes.device)
    capabilities = detect_capabilities(processes.device)
    choice = choose_execution(cfg.train.precision, cfg.train.channels_last, capabilities, timer)
    return processes.share(choice) if processes.enabled else choice


def record_execution(cfg: Config, choice: ExecutionChoice) -> Config:
    """``cfg`` with the chosen precision and layout in place of ``auto``, and the probe's record
    (what was asked, measured and why) in ``train.execution``: config.yaml, the checkpoints and
    the log all show it."""
    execution = choice.execution
    record = dict(cfg.train.execution or {})
    matches = (record.get("precision"), record.get("channels_last")) == (
        execution.precision,
        execution.channels_last,
    )
    if not matches or choice.seconds:
        asked = {"precision": cfg.train.precision, "channels_last": cfg.train.channels_last}
        record = {"asked": asked, **choice.to_dict()}
    train_cfg = dataclasses.replace(
        cfg.train,
        precision=execution.precision,
        channels_last=execution.channels_last,
        execution=record,
    )
    return dataclasses.replace(cfg, train=train_cfg)
