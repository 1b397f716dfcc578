"""Timers for :func:`unetkit.precision.choose_execution`: a few steps of the real model.

Each timer runs on a deep copy of the model (the run's weights, optimiser and random generators
are untouched, so a probed run trains exactly as an unprobed one would from the same seed) and on
random inputs of the run's batch shape, drawn from a private generator. It returns the fastest
of a few timed steps after one untimed warm-up step (the first call of a memory format or dtype
pays for oneDNN / cuDNN kernel selection), or ``inf`` when the step produced a non-finite value.

The fastest, not the median: other work on a shared machine only ever adds time, and it comes in
spells of seconds, longer than a probe. On a 2-core Zen 3 the median of three steps read 0.83 to
1.41 times the step time that training then sustained, the fastest of five 0.82 to 1.00
(``benchmarks/step_probe.py``, benchmarks/README.md).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from unetkit.precision import Execution
from unetkit.tasks import Task

Timer = Callable[[Execution], float]


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fastest_seconds(step: Callable[[], torch.Tensor], steps: int, device: torch.device) -> float:
    """Fastest wall time of ``step`` over ``steps`` calls after a warm-up; inf if non-finite.

    The global random generators are restored afterwards (dropout draws from them)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _fastest_of_calls(step, steps, device)


def _fastest_of_calls(step: Callable[[], torch.Tensor], steps: int, device: torch.device) -> float:
    if not bool(torch.isfinite(step()).all()):
        return math.inf
    times = []
    for _ in range(steps):
        _synchronise(device)
        started = time.perf_counter()
        value = step()
        _synchronise(device)
        times.append(time.perf_counter() - started)
        if not bool(torch.isfinite(value).all()):
            return math.inf
    return min(times)


def _random_batch(
    shape: tuple[int, int, int, int], task: Task, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and masks of ``task``'s kind: class ids ``(N, H, W)``, or 0/1 per label
    ``(N, L, H, W)`` for a multi-label task."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(shape, generator=generator)
    if task.multilabel:
        masks = torch.randint(0, 2, (shape[0], task.num_classes, *shape[2:]), generator=generator)
    else:
        masks = torch.randint(0, task.num_classes, (shape[0], *shape[2:]), generator=generator)
    return images.to(device), masks.to(device)


def training_step_timer(
    model: nn.Module,
    criterion: nn.Module,
    batch_shape: tuple[int, int, int, int],
    task: Task,
    device: torch.device,
    steps: int = 5,
) -> Timer:
    """Seconds per forward + backward of ``model`` (a copy) on a ``batch_shape`` batch; the
    loss is computed in fp32 as in training."""
    images, masks = _random_batch(batch_shape, task, device)

    def measure(execution: Execution) -> float:
        probe = execution.prepare(copy.deepcopy(model).to(device)).train()
        batch = images.contiguous(memory_format=execution.memory_format)

        def step() -> torch.Tensor:
            with execution.autocast(device.type):
                logits = probe(batch)
            loss = criterion(logits.float(), masks)
            loss.backward()
            probe.zero_grad(set_to_none=True)
            return loss.detach()

        return _fastest_seconds(step, steps, device)

    return measure


def inference_timer(
    model: nn.Module,
    batch_shape: tuple[int, int, int, int],
    device: torch.device,
    steps: int = 3,
) -> Timer:
    """Seconds per forward pass of ``model`` (a copy, in eval mode) on a ``batch_shape`` batch."""
    images, _ = _random_batch(batch_shape, Task(2), device)

    def measure(execution: Execution) -> float:
        probe = execution.prepare(copy.deepcopy(model).to(device)).eval()
        batch = images.contiguous(memory_format=execution.memory_format)

        @torch.inference_mode()
        def step() -> torch.Tensor:
            with execution.autocast(device.type):
                return probe(batch).float()

        return _fastest_seconds(step, steps, device)

    return measure
