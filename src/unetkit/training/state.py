"""The training half of a checkpoint: where a run stands after its latest complete epoch.

One typed object holds it while the loop runs; :meth:`TrainingState.to_checkpoint` and
:meth:`TrainingState.from_checkpoint` are the only places that know its keys on disk, which
stay as checkpoints have always had them (``stale_epochs``, ``processes``,
``optimizer_steps_by_rank``), so older runs keep resuming. What it writes is plain data, as
:mod:`unetkit.checkpoint` requires. The weights, optimiser, schedule, scaler and EMA live in
their own objects and are saved beside it (see :mod:`unetkit.training.saving`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unetkit.training.reproducibility import restore_rng_state, seed_everything

GENERATOR_KEYS = ("rng", "rng_by_rank")  # what only a resume needs (ema.pt leaves them out)


@dataclass
class TrainingState:
    """Epochs done, their history, the best monitored value and the counters a resume needs."""

    world_size: int = 1  # processes training now; steps are counted per process
    epoch: int = 0  # the last complete epoch (0 before the first)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    best: float | None = None  # the best monitored value so far
    stale_epochs: int = 0  # epochs in a row without a better monitored value (patience)
    optimizer_steps_by_rank: list[int] = field(default_factory=list)  # since this process count
    rng_by_rank: list[dict[str, Any]] = field(default_factory=list)  # each process's generators
    budget_spent: float | None = None  # seconds of the time budget used (None: no budget)

    def __post_init__(self) -> None:
        if not self.optimizer_steps_by_rank:
            self.optimizer_steps_by_rank = [0] * self.world_size

    def count_steps(self, steps_by_rank: list[int]) -> None:
        """Add one epoch's optimiser steps, one count per process."""
        self.optimizer_steps_by_rank = [
            a + b for a, b in zip(self.optimizer_steps_by_rank, steps_by_rank, strict=True)
        ]

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint keys this state is stored under."""
        return {
            "epoch": self.epoch,
            "best": self.best,
            "history": list(self.history),
            "processes": {  # steps counted since the run started with this many processes
                "world_size": self.world_size,
                "optimizer_steps_by_rank": list(self.optimizer_steps_by_rank),
            },
            "rng": self.rng_by_rank[0] if self.rng_by_rank else None,
            "rng_by_rank": list(self.rng_by_rank),
            "stale_epochs": self.stale_epochs,
            "budget_spent": self.budget_spent,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], world_size: int) -> TrainingState:
        """The state ``checkpoint`` holds, for a run continuing with ``world_size`` processes.

        Step counts from a different process count start afresh; a checkpoint older than the
        per-process generators holds rank 0's alone (``rng``).
        """
        steps = (checkpoint.get("processes") or {}).get("optimizer_steps_by_rank") or []
        return cls(
            world_size=world_size,
            epoch=checkpoint["epoch"],
            history=checkpoint["history"],
            best=checkpoint["best"],
            stale_epochs=checkpoint.get("stale_epochs", 0),
            optimizer_steps_by_rank=list(steps) if len(steps) == world_size else [],
            rng_by_rank=checkpoint.get("rng_by_rank") or [checkpoint["rng"]],
            budget_spent=checkpoint.get("budget_spent"),
        )

    def restore_generators(self, rank: int, seed: int, deterministic: bool) -> None:
        """This process's own generators when the state has them (same process count), else
        rank 0's, re-seeded per process so augmentations still differ between processes."""
        if len(self.rng_by_rank) == self.world_size:
            restore_rng_state(self.rng_by_rank[rank])
            return
        restore_rng_state(self.rng_by_rank[0])
        if rank > 0:
            seed_everything(seed + rank + 1_000 * self.epoch, deterministic)
