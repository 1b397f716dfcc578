"""Optimisers and learning-rate schedules: exact sequences, plateau, resume, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, PolynomialLR

from unetkit.config import OptimConfig
from unetkit.training.optim import LRSchedule, build_optimizer, build_scheduler


def make(**overrides) -> tuple[torch.optim.Optimizer, OptimConfig]:
    cfg = OptimConfig(**{"optimizer": "sgd", "lr": 1.0, "momentum": 0.0, **overrides})
    return build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg), cfg


def run_steps(optimizer: torch.optim.Optimizer, schedule: LRSchedule, steps: int) -> list[float]:
    """The rate each of ``steps`` optimiser steps runs at."""
    used = []
    for _ in range(steps):
        used.append(schedule.current_lr)
        optimizer.step()
        schedule.step_batch()
    return used


def torch_reference(scheduler_cls, steps: int, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    scheduler = scheduler_cls(optimizer, **kwargs)
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used


def test_cosine_with_warmup_follows_formula():
    optimizer, cfg = make(scheduler="cosine", warmup_epochs=1.0, min_lr=0.1)
    schedule = build_scheduler(optimizer, cfg, steps_per_epoch=10, epochs=5)  # W=10, T=50
    used = run_steps(optimizer, schedule, 50)
    assert used[0] == pytest.approx(1 / 11)  # warm-up: (k + 1) / (W + 1)
    assert used[9] == pytest.approx(10 / 11)
    assert used[10] == pytest.approx(1.0)  # decay starts at lr
    assert used[30] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay: t = 20/40
    last = 0.1 + 0.9 * (1 + math.cos(math.pi * 39 / 40)) / 2
    assert used[49] == pytest.approx(last)
    assert schedule.current_lr == pytest.approx(0.1)  # after every step: min_lr
    assert all(a < b for a, b in zip(used[:10], used[1:11], strict=True))
    reference = torch_reference(CosineAnnealingLR, 40, T_max=40, eta_min=0.1)
    assert used[10:] == pytest.approx(reference, rel=1e-9)


def test_fractional_warmup_epochs_become_steps():
    optimizer, cfg = make(scheduler="none", warmup_epochs=0.5)
    schedule = build_scheduler(optimizer, cfg, steps_per_epoch=8, epochs=2)  # W = 4
    used = run_steps(optimizer, schedule, 16)
    assert used[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert used[5:] == [1.0] * 11


def test_poly_matches_torch_polynomial_lr():
    optimizer, cfg = make(scheduler="poly", poly_power=0.9)
    schedule = build_scheduler(optimizer, cfg, steps_per_epoch=5, epochs=4)
    used = run_steps(optimizer, schedule, 20)
    assert used[7] == pytest.approx((1 - 7 / 20) ** 0.9)
    assert used == pytest.approx(torch_reference(PolynomialLR, 20, total_iters=20, power=0.9))
    assert schedule.current_lr == pytest.approx(0.0)


def test_poly_with_min_lr():
    optimizer, cfg = make(scheduler="poly", poly_power=2.0, min_lr=0.2)
    schedule = build_scheduler(optimizer, cfg, steps_per_epoch=4, epochs=1)
    assert run_steps(optimizer, schedule, 4) == pytest.approx(
        [0.2 + 0.8 * (1 - k / 4) ** 2 for k in range(4)]
    )


def test_plateau_reduces_after_patience():
    optimizer, cfg = make(scheduler="plateau", plateau_patience=2, plateau_factor=0.5, min_lr=0.2)
    schedule = build_scheduler(optimizer, cfg, steps_per_epoch=3, epochs=20)
    lrs = []
    for monitored in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]:
        run_steps(optimizer, schedule, 3)
        schedule.step_epoch(monitored)
        lrs.append(schedule.current_lr)
    # best 0.9 at epoch 2; the third bad epoch in a row (> patience) halves the rate
    assert lrs[:5] == [1.0, 1.0, 1.0, 1.0, 0.5]
    assert lrs[5:8] == [0.5, 0.5, 0.25]
    assert lrs[-1] == 0.2  # floored at min_lr


def test_plateau_ignores_validations_during_warmup_and_needs_a_value():
    optimizer, cfg = make(scheduler="plateau", plateau_patience=0, warmup_epochs=2.0)
    schedule = build_scheduler(optimizer, cfg, steps_per_epoch=2, epochs=10)
    run_steps(optimizer, schedule, 2)
    schedule.step_epoch(None)  # half-way through warm-up: ignored
    assert schedule.current_lr == pytest.approx(3 / 5)
    run_steps(optimizer, schedule, 2)
    assert schedule.current_lr == 1.0
    schedule.step_epoch(1.0)  # warm-up complete: counted, the first best value
    schedule.step_epoch(2.0)
    assert schedule.current_lr == 0.5
    run_steps(optimizer, schedule, 2)
    assert schedule.current_lr == 0.5  # per-step updates do not undo the reduction
    with pytest.raises(ValueError, match="plateau"):
        schedule.step_epoch(None)


@pytest.mark.parametrize("name", ["cosine", "poly", "none", "plateau"])
def test_state_dict_round_trip_continues_the_same_sequence(name):
    def fresh():
        optimizer, cfg = make(scheduler=name, warmup_epochs=1.5, min_lr=0.01, plateau_patience=1)
        return optimizer, build_scheduler(optimizer, cfg, steps_per_epoch=4, epochs=6)

    def epochs(optimizer, schedule, values):
        lrs = []
        for value in values:
            lrs += run_steps(optimizer, schedule, 4)
            schedule.step_epoch(value)
        return lrs

    values = [1.0, 0.8, 0.9, 0.9, 0.85, 0.9]
    optimizer, schedule = fresh()
    straight = epochs(optimizer, schedule, values)

    optimizer, schedule = fresh()
    first = epochs(optimizer, schedule, values[:3])
    saved = schedule.state_dict()
    optimizer, schedule = fresh()  # new optimiser too: its rate must come from the schedule state
    schedule.load_state_dict(saved)
    resumed = first + epochs(optimizer, schedule, values[3:])
    assert resumed == straight
    assert len(set(straight)) > 3


def test_loading_another_schedule_is_refused():
    optimizer, cfg = make(scheduler="cosine")
    saved = build_scheduler(optimizer, cfg, 2, 2).state_dict()
    optimizer, cfg = make(scheduler="poly")
    with pytest.raises(ValueError, match="optim.scheduler=cosine"):
        build_scheduler(optimizer, cfg, 2, 2).load_state_dict(saved)


def test_optimizers():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, OptimConfig(optimizer="sgd", lr=0.1, nesterov=True))
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert group["nesterov"] is True and group["momentum"] == 0.9 and group["lr"] == 0.1
    adamw = build_optimizer(params, OptimConfig(optimizer="adamw", weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05
    assert isinstance(build_optimizer(params, OptimConfig(optimizer="Adam")), torch.optim.Adam)


def test_bad_settings_are_explained():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="adam, adamw, sgd"):
        build_optimizer(params, OptimConfig(optimizer="rmsprop"))
    with pytest.raises(ValueError, match="momentum"):
        build_optimizer(params, OptimConfig(optimizer="sgd", momentum=0.0, nesterov=True))
    optimizer, _ = make()
    with pytest.raises(ValueError, match="cosine, plateau, poly, none"):
        build_scheduler(optimizer, OptimConfig(scheduler="step"), 4, 2)
    with pytest.raises(ValueError, match="warmup_epochs"):
        build_scheduler(optimizer, OptimConfig(warmup_epochs=3.0), 4, 2)
    with pytest.raises(ValueError, match="min_lr"):
        build_scheduler(optimizer, OptimConfig(lr=0.1, min_lr=0.5), 4, 2)


def test_a_budgeted_schedule_takes_a_warm_up_longer_than_the_epoch_default():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = OptimConfig(warmup_epochs=40.0)
    schedule = build_scheduler(optimizer, cfg, 10, 12, progress=lambda: 0.0)
    assert schedule.warmup_steps == 400
    with pytest.raises(ValueError, match="shorter than the 12 training epochs"):
        build_scheduler(optimizer, cfg, 10, 12)
