"""clDice (Shit et al. 2021): overlap of centrelines, for thin tubular structures such as vessels.

On thin structures Dice is dominated by the many pixels of thick segments, so a broken or missed
thin branch costs almost nothing. clDice compares skeletons with masks instead:

* ``Tprec = |S(P) & G| / |S(P)|``: the fraction of the predicted skeleton inside the target;
* ``Tsens = |S(G) & P| / |S(G)|``: the fraction of the true skeleton covered by the prediction;
* ``clDice = 2 Tprec Tsens / (Tprec + Tsens)``,

where ``S`` is ``skimage.morphology.skeletonize`` (Zhang-Suen thinning, 8-connected skeleton).
Thinning keeps at least one pixel of every non-empty mask, so both fractions are defined whenever
both masks are non-empty.

Undefined and degenerate cases: both masks empty -> ``None`` (nothing to compare, left out of
means); exactly one empty -> 0 (a missed or hallucinated structure); ``Tprec + Tsens == 0`` (the
skeletons lie wholly outside the other mask) -> 0, the limit of the harmonic mean.

The masks are cropped to the bounding box of their union plus a one-pixel background frame first.
The crop is exact: thinning decides each pixel from its 8 neighbours and treats pixels beyond the
image as background, so a background frame yields the same skeleton as the full image.
"""

from __future__ import annotations

import numpy as np
from skimage.morphology import skeletonize

from unetkit.metrics.surface import crop_to_union


def cl_dice(prediction: np.ndarray, target: np.ndarray) -> float | None:
    """Centreline Dice of two boolean (H, W) masks (see the module docstring for empty masks)."""
    prediction, target = crop_to_union(prediction, target)
    prediction_empty, target_empty = not prediction.any(), not target.any()
    if prediction_empty and target_empty:
        return None
    if prediction_empty or target_empty:
        return 0.0
    precision = _fraction_inside(skeletonize(prediction), target)
    sensitivity = _fraction_inside(skeletonize(target), prediction)
    if precision + sensitivity == 0.0:
        return 0.0
    return 2.0 * precision * sensitivity / (precision + sensitivity)


def _fraction_inside(skeleton: np.ndarray, mask: np.ndarray) -> float:
    return int((skeleton & mask).sum()) / int(skeleton.sum())
