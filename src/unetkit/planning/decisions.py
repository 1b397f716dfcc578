"""The planner's rules: pure functions from the data's fingerprint and measured times to choices.

Every rule reads a plain property of the data or the machine, never a dataset's name:

- **Scale.** A structure must stay at least :data:`MIN_STRUCTURE_PX` wide once the image is
  scaled for the model, or the network's first pooling levels erase it. Resizing whole images to
  the input size is allowed only when 90% of the images (those up to the 90th percentile of the
  longer side) keep the thinnest class's typical width above that; otherwise the model trains on
  native-resolution tiles, all images at one scale (downscaled only where structures are wider
  than :data:`TILE_STRUCTURE_PX`), and predicts by sliding windows at that scale.
- **Model and input size.** The budget buys ``training seconds / step time`` optimiser steps.
  From-scratch U-Nets need on the order of :data:`MIN_STEPS` steps to converge (warm-up, then a
  decay long enough to settle), so the plan takes the most expensive measured candidate (bigger
  input, wider model) that still gets that many steps, else the cheapest one.
- **Augmentation** grows with how often each image is seen: ``strong`` beyond
  :data:`STRONG_AUGMENT_EPOCHS` epochs, where a small split would otherwise be memorised.
- **Validation** costs at most :data:`VALIDATION_SHARE` of the training time: a small split is
  repeated within an epoch so that validating once per epoch stays within that share.
- **TTA** (over the flips the augmentation trains with) is on when the final evaluation with
  it fits in :data:`EVALUATION_SHARE` of the budget. The final evaluation's estimate (with a
  safety margin) is kept at the end of the budget, at most half of it: beyond that the plan
  says by how much the run will overrun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from unetkit.planning.fingerprint import DatasetFingerprint

MIN_STRUCTURE_PX = 8.0  # narrowest typical structure width a model input may show
TILE_STRUCTURE_PX = 16.0  # tiles keep native resolution unless structures are wider than this
MIN_STEPS = 3000  # optimiser steps a from-scratch U-Net needs to converge
STRONG_AUGMENT_EPOCHS = 60
VALIDATION_SHARE = 0.10
EVALUATION_SHARE = 0.05
PROBE_SHARE = 0.05
LOADING_SHARE = 0.05  # decoding above this share of a step turns the sample cache on
WARMUP_SHARE = 0.03  # of the planned steps
EVALUATION_SAFETY = 1.3  # the final evaluation's estimate is a few measured images


@dataclass(frozen=True)
class Scale:
    """How images reach the model: resized whole, or tiled at ``factor`` of native size."""

    tiles: bool
    factor: float  # tiles: native -> model scale; resize: the largest image's shrink factor
    reason: str


def choose_scale(fingerprint: DatasetFingerprint, input_side: int) -> Scale:
    """Resize whole images to ``input_side`` when every structure survives it, else tiles."""
    width = structure_width(fingerprint)
    largest_side = fingerprint.long_side_p90 or max(fingerprint.height.max, fingerprint.width.max)
    shrink = min(1.0, input_side / largest_side) if largest_side else 1.0
    if width is None:
        return Scale(False, shrink, "no foreground seen: whole images resized")
    if width * shrink >= MIN_STRUCTURE_PX:
        return Scale(
            False,
            shrink,
            f"the thinnest class is ~{width:.0f} px wide; resized to {input_side} px, 9 in 10 "
            f"images (longer side up to {largest_side:.0f} px) keep it {width * shrink:.0f} px "
            f"wide or more (>= {MIN_STRUCTURE_PX:.0f})",
        )
    factor = min(1.0, TILE_STRUCTURE_PX / width)
    return Scale(
        True,
        factor,
        f"the thinnest class is ~{width:.0f} px wide: resizing images of {largest_side:.0f} px "
        f"(the 90th percentile) to {input_side} px would leave {width * shrink:.1f} px "
        f"(< {MIN_STRUCTURE_PX:.0f}), so train on tiles at "
        + ("native resolution" if factor == 1 else f"{factor:.2f}x native resolution"),
    )


def structure_width(fingerprint: DatasetFingerprint) -> float | None:
    """The typical width of the thinnest foreground class (median over its centre line).

    The typical width, not the 10th percentile: the thin end of a blob's centre line (its
    tapering tips and outline noise) is always a pixel or two, whatever the blob's size."""
    widths = [c.thickness_px for c in fingerprint.classes[1:] if c.thickness_px]
    return min(widths) if widths else None


@dataclass(frozen=True)
class Candidate:
    """One model and input size whose training step was measured."""

    model: str
    options: dict[str, Any]
    input_side: int
    step_seconds: float

    @property
    def label(self) -> str:
        """``unet (base width 16, encoder mobilenetv3_large_100) at 192 px``: every option."""
        options = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.options.items())
        name = f"{self.model} ({options})" if options else self.model
        return f"{name} at {self.input_side} px"


def choose_candidate(
    candidates: list[Candidate], training_seconds: float, min_steps: int = MIN_STEPS
) -> tuple[Candidate, str]:
    """The most expensive candidate the budget gives ``min_steps`` steps, else the cheapest."""
    if not candidates:
        raise ValueError("no candidate model was measured")
    by_cost = sorted(candidates, key=lambda c: c.step_seconds)
    affordable = [c for c in by_cost if training_seconds / c.step_seconds >= min_steps]
    if affordable:
        chosen = affordable[-1]
        steps = training_seconds / chosen.step_seconds
        return chosen, (
            f"the largest of {len(candidates)} measured candidates that gets >= {min_steps} "
            f"optimiser steps in {training_seconds:.0f} s ({steps:.0f} at "
            f"{chosen.step_seconds * 1000:.0f} ms/step)"
        )
    chosen = by_cost[0]
    steps = training_seconds / chosen.step_seconds
    return chosen, (
        f"no candidate gets {min_steps} steps in {training_seconds:.0f} s: the cheapest "
        f"({steps:.0f} steps at {chosen.step_seconds * 1000:.0f} ms/step); a longer budget "
        f"would allow a larger model"
    )


def choose_augmentation(epochs: float) -> tuple[str, str]:
    """``strong`` when each image is seen often enough to be memorised, else ``light``."""
    if epochs > STRONG_AUGMENT_EPOCHS:
        return "strong", f"~{epochs:.0f} epochs: each image is seen often enough to be memorised"
    return "light", f"~{epochs:.0f} epochs: few passes over the data"


def train_repeats(train_seconds_per_pass: float, validation_seconds: float) -> int:
    """How often the training split is repeated per epoch so that one validation per epoch
    costs at most :data:`VALIDATION_SHARE` of the training time."""
    if train_seconds_per_pass <= 0:
        return 1
    share = validation_seconds / train_seconds_per_pass
    return max(1, math.ceil(share / VALIDATION_SHARE))


def choose_tta(
    inference_seconds: float, scoring_seconds: float, budget_seconds: float, views: int = 4
) -> tuple[bool, str]:
    """TTA when the final evaluation over the ``views`` flips the training augmentation uses
    (``views`` times the inference, the same scoring) fits in its share of the budget; never
    with one view (training saw no flip, so there is nothing to average)."""
    if views < 2:
        return False, "TTA off: the augmentation flips nothing, so there is no view to average"
    allowance = EVALUATION_SHARE * budget_seconds
    with_tta = views * inference_seconds + scoring_seconds
    if with_tta <= allowance:
        return True, f"the test evaluation with {views} flips (~{with_tta:.0f} s) fits its share"
    return False, (
        f"{views} flips would make the test evaluation ~{with_tta:.0f} s, over its share "
        f"({allowance:.0f} s)"
    )


def evaluation_reserve(evaluation_seconds: float, budget_seconds: float) -> tuple[float, str]:
    """Seconds kept at the end of the budget for the test evaluation, at most half the budget
    (training must keep the other half), and what that means for the run's length."""
    wanted = evaluation_seconds * EVALUATION_SAFETY + 5.0
    half = budget_seconds / 2
    if wanted <= half:
        reserve = math.ceil(round(wanted * 10, 6)) / 10  # the tenth above: never below the need
        return reserve, f"{reserve:.0f} s of the budget kept for it"
    return round(half, 1), (
        f"it needs ~{wanted:.0f} s, more than half the budget, so {half:.0f} s are kept and "
        f"the run may end ~{wanted - half:.0f} s late; a longer --time-budget avoids that"
    )


def warmup_epochs(epochs: float) -> float:
    """Warm-up over :data:`WARMUP_SHARE` of the planned training, in (fractional) epochs."""
    return round(WARMUP_SHARE * epochs, 3)
