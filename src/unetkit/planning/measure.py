"""What the planner measures on the machine: step times of candidate models, inference time, and
the cost of scoring one test image. Each figure comes from a few real calls, never a guess:
the fastest of them for model steps (:mod:`unetkit.precision_probe`); for loading and scoring,
whose cost varies from image to image, the median and the mean.

Training-step probes time forward + backward (:mod:`unetkit.precision_probe`); the optimiser
update and data loading are added as :data:`STEP_OVERHEAD` (the data pipeline measured 9% of an
epoch on the Pet subset, AdamW's element-wise update a few % more; see benchmarks/README.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unetkit.config import EvalConfig
from unetkit.data.sources import SampleSource
from unetkit.evaluation.calibration import CalibrationCheck, measured_threshold
from unetkit.inference.calibration import Calibration
from unetkit.losses import build_loss
from unetkit.metrics.split import SplitMetrics
from unetkit.models import build_model
from unetkit.planning.decisions import Candidate
from unetkit.precision import Execution
from unetkit.precision_probe import inference_timer, training_step_timer
from unetkit.tasks import Task

STEP_OVERHEAD = 1.15

# (model name, options) in rising cost; the planner stops a model's sizes once one is too slow.
# Plain U-Nets only: the planner trains from scratch, and from scratch on a few hundred images a
# ResNet-34 encoder (21M parameters, made for ImageNet transfer) trails a plain U-Net: on the Pet
# subset in 20 minutes, 0.704 test foreground IoU (AMX Xeon, resnet34-unet at 160 px) against
# 0.780 (Zen 5, unet 16 at 192 px), and a from-scratch smp U-Net-ResNet34 got 0.718
# (benchmarks/README.md). nnU-Net trains plain and residual U-Nets from scratch for the same
# reason. With pretrained weights, `model.name=resnet34-unet` is the user's choice to make.
# The family under one budget (benchmarks/README.md, issue 14: Pet 4 min, ISBI 3 min, AMX Xeon)
# agrees: on Pet the plain U-Net led attention-unet, unet-plus-plus, resenc-unet, the MobileNetV3
# and ResNet-34 encoders by 0.027 to 0.114 test foreground IoU; on ISBI none was separated. At the
# issue's 20 minutes on Pet (Zen 5) it led unet-plus-plus, attention-unet and resenc-unet by 0.016,
# 0.048 and 0.087 (0.793 against 0.778, 0.745, 0.707), and on Zen 3 (fp32) the ResNet-34 and
# MobileNetV3 encoders by 0.072 and 0.074 (0.773 against 0.701, 0.699; ahead on 227 of 298
# images); on ISBI at 20 minutes all six lay within 0.008 and no per-image difference kept its
# sign (Zen 3, fp32), so nothing there overturns it.
MODEL_LADDER: list[tuple[str, dict[str, Any]]] = [
    ("unet", {"base_width": 16}),
    ("unet", {"base_width": 24}),
    ("unet", {"base_width": 32}),
    ("unet", {"base_width": 48}),
]


@dataclass(frozen=True)
class ProbeSetting:
    """What every candidate is measured with."""

    in_channels: int
    task: Task
    batch_size: int
    execution: Execution
    device: torch.device
    loss_spec: str = "ce:0.5,dice:0.5"


def build_candidate_model(name: str, options: dict[str, Any], setting: ProbeSetting) -> Any:
    torch.manual_seed(0)
    return build_model(name, setting.in_channels, setting.task.out_channels, **options)


def step_seconds(name: str, options: dict[str, Any], side: int, setting: ProbeSetting) -> float:
    """Seconds per optimiser step of ``name`` at ``side`` x ``side`` (overhead included)."""
    model = build_candidate_model(name, options, setting).to(setting.device)
    criterion = build_loss(setting.loss_spec, setting.task).to(setting.device)
    shape = (setting.batch_size, setting.in_channels, side, side)
    timer = training_step_timer(model, criterion, shape, setting.task, setting.device, steps=5)
    return timer(setting.execution) * STEP_OVERHEAD


def measure_candidates(
    sides: Iterable[int],
    setting: ProbeSetting,
    training_seconds: float,
    allowance: float,
    min_steps: int,
    ladder: list[tuple[str, dict[str, Any]]] = MODEL_LADDER,
) -> list[Candidate]:
    """Step times along ``ladder`` x ``sides`` until ``allowance`` seconds are spent.

    A model's larger sides are skipped once one of its sizes cannot get ``min_steps`` steps in
    ``training_seconds``; so are the later (costlier) models once their smallest size cannot.
    """
    started = time.perf_counter()
    sides = sorted(sides)
    measured: list[Candidate] = []
    for name, options in ladder:
        for index, side in enumerate(sides):
            if time.perf_counter() - started > allowance and measured:
                return measured
            seconds = step_seconds(name, options, side, setting)
            measured.append(Candidate(name, dict(options), side, seconds))
            if training_seconds / seconds < min_steps:
                if index == 0:
                    return measured
                break
    return measured


def inference_seconds_per_image(candidate: Candidate, setting: ProbeSetting) -> float:
    """Seconds of one forward pass per image at the candidate's input size."""
    model = build_candidate_model(candidate.model, candidate.options, setting).to(setting.device)
    shape = (setting.batch_size, setting.in_channels, candidate.input_side, candidate.input_side)
    return inference_timer(model, shape, setting.device, steps=2)(setting.execution) / shape[0]


def scoring_seconds_per_image(
    source: SampleSource, class_names: list[str], options: EvalConfig, samples: int = 5
) -> float:
    """Seconds to load one image and score it as the test evaluation does (at native size):
    every metric family, with a slightly wrong prediction (the target shifted by 2 px) so that
    each has work, and the calibration section, which re-tempers the probabilities to measure
    the stored calibration (on Pet, 15% of the evaluation)."""
    if len(source) == 0:  # the data check reports the empty split
        return 0.0
    binary = len(class_names) == 2
    metrics = SplitMetrics(class_names, binary, options)
    task, measured = Task(len(class_names)), Calibration(1.5)
    check = CalibrationCheck(task, measured, measured_threshold(measured, task))
    picks = np.linspace(0, len(source) - 1, num=min(samples, len(source))).astype(int)
    started = time.perf_counter()
    for index in picks:
        _, mask = source.load(int(index))
        prediction = np.roll(mask, 2, axis=(0, 1))
        prediction[prediction == 255] = 0
        probs = _one_hot(prediction, len(class_names))
        metrics.add(str(index), probs, prediction, mask)
        check.add(probs, prediction, mask)
    return (time.perf_counter() - started) / len(picks)


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    probs = np.zeros((num_classes, *labels.shape), dtype=np.float32)
    for k in range(num_classes):
        probs[k] = labels == k
    return probs
