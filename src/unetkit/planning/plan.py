"""``unetkit plan``: a dataset and a time budget in, a training config out, each choice with its
reason.

:func:`make_plan` fingerprints the training split (:mod:`unetkit.planning.fingerprint`), decides
resize or tiles from it, measures the machine (precision, candidate step times, inference and
scoring cost; at most :data:`~unetkit.planning.decisions.PROBE_SHARE` of the budget), then
applies the rules of :mod:`unetkit.planning.decisions`. The result is a set of config keys;
``train`` takes them under any key the user set, so an explicit flag always wins.

Without a budget only the data-driven choices are made (scale, tiles, input size, caching): a
real dataset is never shrunk until its structures vanish, whatever the machine.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unetkit.config import Config, load_config
from unetkit.data import build_splits
from unetkit.data.preprocess import size_hw
from unetkit.data.registry import DatasetSplits
from unetkit.data.sources import SampleSource
from unetkit.data.transforms import trained_flips
from unetkit.devices import resolve_device
from unetkit.inference.sliding_window import DEFAULT_OVERLAP, window_origins
from unetkit.losses import build_loss
from unetkit.planning import decisions
from unetkit.planning.decisions import Candidate
from unetkit.planning.fingerprint import DatasetFingerprint, fingerprint_source
from unetkit.planning.measure import (
    MODEL_LADDER,
    ProbeSetting,
    build_candidate_model,
    inference_seconds_per_image,
    measure_candidates,
    scoring_seconds_per_image,
)
from unetkit.precision import Execution, ExecutionChoice, choose_execution, detect_capabilities
from unetkit.precision_probe import training_step_timer
from unetkit.tasks import Task

RESIZE_SIDES = (128, 160, 192, 256)
TILE_SIDES = (128, 192, 256)
DEFAULT_TILE_SIDE = 256  # without a budget


@dataclass
class Plan:
    """Config keys chosen for a run, why, and what was measured to choose them."""

    settings: dict[str, Any] = field(default_factory=dict)  # dotted config key -> value
    reasons: dict[str, str] = field(default_factory=dict)  # decision -> why
    fingerprint: DatasetFingerprint | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # how long planning took (counted in the budget)

    def choose(self, keys: dict[str, Any], decision: str, reason: str) -> None:
        self.settings.update(keys)
        self.reasons[decision] = reason

    def overrides(self, explicit: set[str], input_side: int | None = None) -> dict[str, Any]:
        """The plan's keys that the user did not set (``model.options`` goes with
        ``model.name``: options belong to the model they were written for). When the user set
        the input size (``input_side``, its longer side), planned tiles keep the planned scale."""
        skip = set(explicit)
        if fixes_model(explicit):
            skip |= {"model.name", "model.options"}
        chosen = {k: v for k, v in self.settings.items() if k not in skip}
        scale = self.measured.get("tile_scale")
        if scale and "data.tile_size" in chosen and "data.img_size" in explicit and input_side:
            chosen["data.tile_size"] = max(input_side, round(input_side / scale))
        return chosen

    def describe(self) -> str:
        lines = ["data:"] + [f"  {line}" for line in self.fingerprint.summary_lines()]
        lines.append("plan:")
        lines += [f"  {decision}: {reason}" for decision, reason in self.reasons.items()]
        lines.append("settings:")
        shown = {k: v for k, v in self.settings.items() if k != "train.execution"}
        lines += [f"  {key}: {value}" for key, value in shown.items()]
        lines.append(f"planned in {self.seconds:.1f} s")
        return "\n".join(lines)

    def config(self, cfg: Config) -> Config:
        """``cfg`` with every planned key set (checked as any override is)."""
        return load_config(base=cfg.to_dict(), overrides=self.settings)

    def to_yaml(self, cfg: Config, explicit: set[str] = frozenset()) -> str:
        """A config file ``train --config`` takes (``cfg`` with the plan under the
        ``explicit`` keys the user set), the reasons as comments above it."""
        header = "".join(f"# {d}: {r}\n" for d, r in self.reasons.items())
        side = max(size_hw(cfg.data.img_size))
        chosen = Plan(self.overrides(set(explicit), side), measured=self.measured)
        return header + yaml.safe_dump(chosen.config(cfg).to_dict(), sort_keys=False)


def fixes_model(keys: set[str] | frozenset[str]) -> bool:
    """Whether the user chose the model (its name or any of its options)."""
    return any(k == "model.name" or k.startswith("model.options") for k in keys)


def make_plan(
    cfg: Config,
    budget_seconds: float | None,
    progress: bool = True,
    fixed: frozenset[str] | set[str] = frozenset(),
) -> Plan:
    """The plan for ``cfg``'s dataset; the compute choices only with ``budget_seconds``.

    ``fixed``: the config keys the user set. The plan measures what will run: a fixed model
    (:func:`fixes_model`) or ``data.img_size`` is the only candidate probed, and a
    fixed ``eval.tta`` is what the final evaluation's reserve is sized for."""
    started = time.perf_counter()
    whole = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tile_size=None))
    splits = build_splits(whole)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None  # beside the samples
    fingerprint = fingerprint_source(
        splits.train, splits.class_names, cache_dir=cache_dir, progress=progress
    )
    plan = Plan(fingerprint=fingerprint)
    if budget_seconds is None:
        _plan_data_only(plan, cfg)
    else:
        _plan_for_budget(plan, cfg, splits, budget_seconds, started, frozenset(fixed))
    plan.seconds = time.perf_counter() - started
    return plan


def _plan_data_only(plan: Plan, cfg: Config) -> None:
    """Keep the configured input size unless it would erase the structures; then tiles."""
    side = max(size_hw(cfg.data.img_size))
    scale = decisions.choose_scale(plan.fingerprint, side)
    if not scale.tiles:
        plan.reasons["scale"] = scale.reason
        return
    scale = decisions.choose_scale(plan.fingerprint, DEFAULT_TILE_SIDE)
    _choose_tiles(plan, scale, DEFAULT_TILE_SIDE)


def _choose_tiles(plan: Plan, scale: decisions.Scale, side: int) -> None:
    tile = max(side, round(side / scale.factor))
    plan.measured["tile_scale"] = scale.factor
    keys = {"data.img_size": [side, side], "data.tile_size": tile, "data.cache": True}
    plan.choose(
        keys,
        "scale",
        f"{scale.reason}; tiles of {tile} px as {side} px inputs, "
        "cached on disk (each tile would otherwise decode its whole image)",
    )


def _plan_for_budget(
    plan: Plan,
    cfg: Config,
    splits: DatasetSplits,
    budget: float,
    started: float,
    fixed: frozenset[str],
) -> None:
    """Precision, model, input size, tiles, augmentation, validation share and TTA."""
    sides, scale, ladder = _candidate_space(plan.fingerprint, cfg, fixed)
    setting, choice = _probe_setting(cfg, splits, min(sides), ladder[0])
    asked = {"precision": cfg.train.precision, "channels_last": cfg.train.channels_last}
    plan.choose(
        {
            "train.precision": setting.execution.precision,
            "train.channels_last": setting.execution.channels_last,
            "train.execution": {"asked": asked, **choice.to_dict(), "by": "unetkit plan"},
        },
        "precision",
        choice.describe(),
    )
    scoring = scoring_seconds_per_image(splits.test, splits.class_names, cfg.eval)
    load = _load_seconds_per_sample(splits.train)
    allowance = decisions.PROBE_SHARE * budget
    training = _training_seconds(plan, splits, budget, started, allowance, scoring, load)
    candidates = measure_candidates(
        sides, setting, training, allowance, decisions.MIN_STEPS, ladder
    )
    chosen, reason = decisions.choose_candidate(candidates, training)
    plan.measured["candidates_ms_per_step"] = {
        c.label: round(c.step_seconds * 1e3, 1) for c in candidates
    }
    plan.choose(
        {
            "model.name": chosen.model,
            "model.options": dict(chosen.options),
            "data.img_size": [chosen.input_side, chosen.input_side],
            "train.batch_size": setting.batch_size,
        },
        "model",
        f"{chosen.label}: {reason}",
    )
    if scale.tiles:
        _choose_tiles(plan, scale, chosen.input_side)
    else:
        resized = decisions.choose_scale(plan.fingerprint, chosen.input_side)  # the side it got
        plan.choose({"data.tile_size": None}, "scale", resized.reason)
        share = load * setting.batch_size / chosen.step_seconds
        if share > decisions.LOADING_SHARE:
            plan.choose(
                {"data.cache": True},
                "cache",
                f"decoding a batch costs {share:.0%} of a "
                "step: decoded, resized samples are kept on disk",
            )
    tta = cfg.eval.tta if "eval.tta" in fixed else None
    _plan_schedule(plan, cfg, chosen, setting, training, scoring, budget, tta)


def _candidate_space(
    fingerprint: DatasetFingerprint, cfg: Config, fixed: frozenset[str]
) -> tuple[list[int], decisions.Scale, list[tuple[str, dict[str, Any]]]]:
    """The input sides and models to measure, and whether the data needs tiles: the sides that
    keep every structure when resized (tile sides when none does), the user's side or model
    alone where the user fixed it."""
    sides = [s for s in RESIZE_SIDES if not decisions.choose_scale(fingerprint, s).tiles]
    scale = decisions.choose_scale(fingerprint, max(sides or RESIZE_SIDES))
    sides = sides or list(TILE_SIDES)
    if "data.img_size" in fixed:
        sides = [max(size_hw(cfg.data.img_size))]
    ladder = MODEL_LADDER
    if fixes_model(fixed):
        ladder = [(cfg.model.name, dict(cfg.model.options))]
    return sides, scale, ladder


def _training_seconds(
    plan: Plan,
    splits: DatasetSplits,
    budget: float,
    started: float,
    allowance: float,
    scoring: float,
    load: float,
) -> float:
    """What the budget leaves for optimiser steps once planning, the probes, the data check,
    the test evaluation and validation have their share; an error when nothing is left."""
    check = load * (len(splits.train) + len(splits.val) + len(splits.test))
    rough_evaluation = len(splits.test) * scoring
    spent = time.perf_counter() - started
    training = (budget - spent - allowance - check - rough_evaluation) * (
        1 - decisions.VALIDATION_SHARE
    )
    if training <= 0:
        raise ValueError(
            f"a time budget of {budget:.0f} s leaves no training time: planning took {spent:.0f} "
            f"s, the data check needs ~{check:.0f} s and the test evaluation ~"
            f"{rough_evaluation:.0f} s; give a longer --time-budget, or --plan off"
        )
    plan.measured.update(
        scoring_s_per_image=round(scoring, 4),
        load_s_per_sample=round(load, 4),
        data_check_s=round(check, 1),
    )
    return training


def _plan_schedule(
    plan: Plan,
    cfg: Config,
    chosen: Candidate,
    setting: ProbeSetting,
    training: float,
    scoring: float,
    budget: float,
    fixed_tta: bool | None = None,
) -> None:
    """Augmentation, repeats per epoch, warm-up, TTA and the final evaluation's reserve."""
    planned = plan.config(cfg)
    splits = build_splits(planned)  # tiles counted as training samples
    train_samples, val_samples = len(splits.train), len(splits.val)
    steps = training / chosen.step_seconds
    passes = steps * setting.batch_size / max(train_samples, 1)
    per_image = inference_seconds_per_image(chosen, setting)
    one_pass = train_samples / setting.batch_size * chosen.step_seconds
    repeats = decisions.train_repeats(one_pass, val_samples * per_image)
    augment, augment_reason = decisions.choose_augmentation(passes)
    plan.choose({"data.augment": augment}, "augmentation", augment_reason)
    plan.choose(
        {
            "data.train_repeats": repeats,
            "optim.warmup_epochs": decisions.warmup_epochs(passes / repeats),
        },
        "validation",
        f"one validation ({val_samples} samples, ~{val_samples * per_image:.1f} s) per "
        f"{repeats} pass(es) over the {train_samples} training samples "
        f"(~{one_pass * repeats:.0f} s) keeps it under "
        f"{decisions.VALIDATION_SHARE:.0%} of training; warm-up over the first "
        f"{decisions.WARMUP_SHARE:.0%} of ~{steps:.0f} steps",
    )
    windows = _windows_per_test_image(plan, chosen.input_side)
    inference = len(splits.test) * windows * per_image
    views = len(trained_flips(plan.config(cfg).data.augment))
    tta, tta_reason = decisions.choose_tta(inference, len(splits.test) * scoring, budget, views)
    if fixed_tta is not None:
        tta, tta_reason = fixed_tta, f"TTA {'on' if fixed_tta else 'off'}, as configured"
    passes = views if tta else 1  # model passes per input at the final evaluation
    calibration = _calibration_seconds(planned, val_samples * per_image, passes)
    evaluation = len(splits.test) * scoring + inference * passes + calibration
    reserve, reserve_reason = decisions.evaluation_reserve(evaluation, budget)
    calibration_reason = f", with ~{calibration:.0f} s to calibrate on val" if calibration else ""
    plan.choose(
        {"eval.tta": tta, "train.final_reserve": reserve},
        "test evaluation",
        f"{tta_reason}; {reserve_reason}{calibration_reason}",
    )
    plan.measured.update(inference_s_per_image=round(per_image, 4), planned_steps=round(steps))
    _note_fixed_choices(plan, cfg, steps)


def _calibration_seconds(cfg: Config, validation_seconds: float, views: int) -> float:
    """The end of training's calibration pass (:mod:`unetkit.training.calibrate`), which runs
    after the last step: one validation pass per TTA view for best.pt, and again for ema.pt."""
    if not cfg.eval.calibrate:
        return 0.0
    return validation_seconds * views * (2 if cfg.train.ema else 1)


def _note_fixed_choices(plan: Plan, cfg: Config, steps: float) -> None:
    """The choices the plan keeps as configured, with why they suit this data and budget."""
    rarest = min(plan.fingerprint.classes, key=lambda c: c.pixel_share)
    share = f"the rarest class ({rarest.name}) is {rarest.pixel_share:.2%} of pixels"
    plan.reasons["loss"] = (
        f"{cfg.loss.spec}: the Dice term weighs every class equally, so {share} yet counts"
        if "dice" in cfg.loss.spec
        else f"{cfg.loss.spec}, as configured; {share}"
    )
    plan.reasons["ema"] = (
        f"{cfg.train.ema}, as configured"
        if cfg.train.ema is not None
        else f"off: a 0.999 average spans ~1000 of ~{steps:.0f} steps, and best.pt is chosen "
        "on the trained weights"
    )
    tiles = plan.settings.get("data.tile_size")
    plan.reasons["inference"] = (
        "sliding windows at the training scale (the checkpoint records the tiles)"
        if tiles
        else "whole images resized to the input size, as trained"
    )


def _windows_per_test_image(plan: Plan, side: int) -> int:
    """Model inputs per median test image: 1 when resized, else the Segmenter's own sliding
    window grid (default overlap) over the median image scaled as the model sees it."""
    tile = plan.settings.get("data.tile_size")
    if not tile:
        return 1
    factor = side / tile
    height = round(plan.fingerprint.height.median * factor)
    width = round(plan.fingerprint.width.median * factor)
    return len(window_origins(max(height, side), max(width, side), (side, side), DEFAULT_OVERLAP))


def _probe_setting(
    cfg: Config, splits: DatasetSplits, side: int, cheapest: tuple[str, dict[str, Any]]
) -> tuple[ProbeSetting, ExecutionChoice]:
    """The device, batch size and precision every candidate is measured with; precision is
    chosen on the ``cheapest`` candidate as training would choose it."""
    device = resolve_device(cfg.train.device)
    task = Task(len(splits.class_names), cfg.task.threshold)
    batch_size = cfg.train.batch_size
    name, options = cheapest
    base = ProbeSetting(cfg.data.in_channels, task, batch_size, Execution(), device, cfg.loss.spec)
    model = build_candidate_model(name, options, base).to(device)
    criterion = build_loss(cfg.loss.spec, task).to(device)
    shape = (batch_size, cfg.data.in_channels, side, side)
    timer = training_step_timer(model, criterion, shape, task, device)
    choice = choose_execution(
        cfg.train.precision, cfg.train.channels_last, detect_capabilities(device), timer
    )
    return dataclasses.replace(base, execution=choice.execution), choice


def _load_seconds_per_sample(source: SampleSource, samples: int = 3) -> float:
    """Seconds to decode one sample (the median of ``samples`` loads)."""
    times = []
    for index in range(min(samples, len(source))):
        started = time.perf_counter()
        source.load(index)
        times.append(time.perf_counter() - started)
    return statistics.median(times) if times else 0.0
