"""Optimisers and learning-rate schedules built from :class:`~unetkit.config.OptimConfig`.

Schedules count optimiser steps. Step ``k`` (0-based) of ``T = steps_per_epoch * epochs`` runs
at ``lr * factor(k)``, where ``lr`` is each parameter group's initial rate:

* warm-up (any schedule): the first ``W = round(warmup_epochs * steps_per_epoch)`` steps use
  ``factor = (k + 1) / (W + 1)``, rising linearly towards 1 without ever being 0;
* after warm-up, with progress ``t = (k - W) / (T - W)`` (0 at the first post-warm-up step, 1 once
  all steps are done, clamped to [0, 1] if the trainer steps further) and ``m = min_lr / lr``:

  - ``cosine``: ``m + (1 - m) * (1 + cos(pi * t)) / 2`` (torch's ``CosineAnnealingLR``
    with ``T_max = T - W``, in closed form);
  - ``poly``:   ``m + (1 - m) * (1 - t) ** poly_power``;
  - ``none``:   1;
  - ``plateau``: 1, then torch's ``ReduceLROnPlateau`` (mode ``"min"``, ``plateau_factor``,
    ``plateau_patience``, floor ``min_lr``) multiplies the rate down after each validation
    that does not improve. It minimises the value it is given: pass the validation loss, or
    the negated metric when the monitored metric should grow. Validations before the warm-up
    is complete are not counted.

The per-step factor is a ``LambdaLR`` whose value depends on the step count only, so resuming
from :meth:`LRSchedule.state_dict` reproduces the rate exactly; with a time budget
(``progress`` given to :func:`build_scheduler`) the decay follows the elapsed fraction of the
budget instead, and a resumed run continues from the budget time its checkpoint recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from unetkit.config import OptimConfig

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "plateau", "poly", "none")


def build_optimizer(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (``momentum``, ``nesterov``) at ``cfg.lr`` with ``weight_decay``."""
    name = cfg.optimizer.lower()
    if not cfg.lr > 0:
        raise ValueError(f"optim.lr must be > 0; got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ValueError(f"optim.weight_decay must be >= 0; got {cfg.weight_decay}")
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        if cfg.nesterov and cfg.momentum <= 0:
            raise ValueError(
                f"optim.nesterov=true needs optim.momentum > 0; got momentum={cfg.momentum}"
            )
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    raise ValueError(
        f"unknown optim.optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
    )


class LRSchedule:
    """Per-step warm-up and decay, plus an optional per-validation plateau reduction.

    Call :meth:`step_batch` after every optimiser step and :meth:`step_epoch` after every
    validation (it only acts for ``plateau``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        factor: Callable[[int], float],
        warmup_steps: int,
        plateau: ReduceLROnPlateau | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.name = name
        self.warmup_steps = warmup_steps
        self.per_step = LambdaLR(optimizer, factor)
        self.plateau = plateau

    @property
    def current_lr(self) -> float:
        """The learning rate of the first parameter group, as the next step will use it."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def steps_done(self) -> int:
        return self.per_step.last_epoch

    def step_batch(self) -> None:
        """Advance one optimiser step. Under ``plateau`` only the warm-up moves the rate, so the
        per-step factor never overwrites a plateau reduction."""
        if self.plateau is not None and self.steps_done >= self.warmup_steps:
            return
        self.per_step.step()

    def step_epoch(self, monitor_value: float | None = None) -> None:
        """Report a validation value (lower is better); ignored by all schedules but ``plateau``."""
        if self.plateau is None or self.steps_done < self.warmup_steps:
            return
        if monitor_value is None:
            raise ValueError(
                "the plateau schedule needs a validation value after each epoch; got None "
                "(is the monitored metric undefined? monitor val_loss instead)"
            )
        self.plateau.step(monitor_value)

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "per_step": self.per_step.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "lrs": [group["lr"] for group in self.optimizer.param_groups],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the schedule and the optimiser's current rates, whatever order things load in."""
        if state["name"] != self.name:
            raise ValueError(
                f"the saved learning-rate schedule is {state['name']!r} but this run uses "
                f"{self.name!r}; resume with optim.scheduler={state['name']}"
            )
        self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        for group, lr in zip(self.optimizer.param_groups, state["lrs"], strict=True):
            group["lr"] = lr


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: OptimConfig,
    steps_per_epoch: int,
    epochs: int,
    progress: Callable[[], float] | None = None,
) -> LRSchedule:
    """The :class:`LRSchedule` named by ``cfg.scheduler`` (see the module docstring).

    ``steps_per_epoch`` counts optimiser steps (batches / accum_steps, rounded up). ``progress``,
    when given, replaces the post-warm-up ``t`` by its value (e.g. the elapsed fraction of a
    time budget, see :mod:`unetkit.training.budget`); the rate then depends on the clock.
    """
    name = cfg.scheduler.lower()
    if name not in SCHEDULERS:
        raise ValueError(
            f"unknown optim.scheduler {cfg.scheduler!r}; choose one of {', '.join(SCHEDULERS)}"
        )
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(
            f"need steps_per_epoch >= 1 and epochs >= 1; got {steps_per_epoch}, {epochs}"
        )
    total_steps = steps_per_epoch * epochs
    warmup_steps = _warmup_steps(cfg, steps_per_epoch, None if progress else epochs)
    min_ratio = _min_ratio(cfg)
    decay = _decay(name, cfg, min_ratio)
    plateau = None
    if name == "plateau":
        plateau = _plateau(optimizer, cfg)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if progress is not None:
            return decay(progress())
        done = (step - warmup_steps) / (total_steps - warmup_steps)
        return decay(min(max(done, 0.0), 1.0))

    return LRSchedule(optimizer, name, factor, warmup_steps, plateau)


def _decay(name: str, cfg: OptimConfig, min_ratio: float) -> Callable[[float], float]:
    if name == "cosine":
        return lambda t: min_ratio + (1.0 - min_ratio) * (1.0 + math.cos(math.pi * t)) / 2.0
    if name == "poly":
        if not cfg.poly_power > 0:
            raise ValueError(f"optim.poly_power must be > 0; got {cfg.poly_power}")
        return lambda t: min_ratio + (1.0 - min_ratio) * (1.0 - t) ** cfg.poly_power
    return lambda t: 1.0


def _warmup_steps(cfg: OptimConfig, steps_per_epoch: int, epochs: int | None) -> int:
    """Warm-up steps; ``epochs`` None under a time budget, where the epoch count is open."""
    if epochs is None:
        if not cfg.warmup_epochs >= 0:
            raise ValueError(f"optim.warmup_epochs must be >= 0; got {cfg.warmup_epochs}")
        return round(cfg.warmup_epochs * steps_per_epoch)
    if not 0 <= cfg.warmup_epochs < epochs:
        raise ValueError(
            f"optim.warmup_epochs must be >= 0 and shorter than the {epochs} training epochs; "
            f"got {cfg.warmup_epochs}"
        )
    return min(round(cfg.warmup_epochs * steps_per_epoch), steps_per_epoch * epochs - 1)


def _min_ratio(cfg: OptimConfig) -> float:
    if not cfg.lr > 0:
        raise ValueError(f"optim.lr must be > 0; got {cfg.lr}")
    if not 0 <= cfg.min_lr <= cfg.lr:
        raise ValueError(f"optim.min_lr must lie in [0, lr={cfg.lr}]; got {cfg.min_lr}")
    return cfg.min_lr / cfg.lr


def _plateau(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> ReduceLROnPlateau:
    if not 0 < cfg.plateau_factor < 1:
        raise ValueError(f"optim.plateau_factor must lie in (0, 1); got {cfg.plateau_factor}")
    if cfg.plateau_patience < 0:
        raise ValueError(f"optim.plateau_patience must be >= 0; got {cfg.plateau_patience}")
    return ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=cfg.plateau_factor,
        patience=cfg.plateau_patience,
        min_lr=cfg.min_lr,
    )
