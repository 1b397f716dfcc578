"""How an image reaches the model: resized whole, or scaled and cut into sliding windows.

The choice follows from how the model was trained:

- ``"resize"``: the whole image is resized to the training ``img_size``. A model trained on whole
  images each resized to ``img_size`` has only ever seen images at that scale, so this is its
  faithful path whatever the image's size.
- ``"sliding"``: the image is scaled by the training factor ``img_size / tile_size`` (1 for a model
  trained on whole images: the image keeps its own resolution) and windows of the model's input
  size slide over it, blended as :mod:`unetkit.inference.sliding_window` describes. A model trained
  on native-resolution tiles (``data.tile_size``, recorded in the checkpoint's preprocessing) so
  sees objects at the scale it learnt them, however large the image.
- ``"auto"`` (the default): sliding when the model was trained on tiles and the scaled image is
  larger than one window; resize otherwise. That is what training did: a tile-trained model learnt
  from windows of large images, and an image no larger than one tile was resized whole to
  ``img_size``. A model trained on whole images thus always gets the whole image, resized.
"""

from __future__ import annotations

from unetkit.checkpoint import Preprocessing

MODES = ("auto", "resize", "sliding")


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else an error that lists them."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def training_scale_size(preprocessing: Preprocessing, height: int, width: int) -> tuple[int, int]:
    """The size an image of ``height x width`` had in the model's training tiles (same if none)."""
    tile = preprocessing.tile_size
    if tile is None:
        return height, width
    img_height, img_width = preprocessing.img_size
    return max(1, round(height * img_height / tile)), max(1, round(width * img_width / tile))


def uses_sliding(
    mode: str, preprocessing: Preprocessing, window: tuple[int, int], height: int, width: int
) -> bool:
    """Whether a ``height x width`` image goes through sliding ``window``s under ``mode``."""
    if mode != "auto":
        return mode == "sliding"  # checked when the Segmenter was built
    if preprocessing.tile_size is None:
        return False
    scaled = training_scale_size(preprocessing, height, width)
    return scaled[0] > window[0] or scaled[1] > window[1]
