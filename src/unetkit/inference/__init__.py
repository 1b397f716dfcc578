"""From images to masks: the Segmenter (resize or sliding windows, TTA, post-processing), file
prediction, and export. What a deployed model carries; it never imports the trainer."""

from unetkit.inference.postprocess import PostProcessing
from unetkit.inference.segmenter import Segmenter

__all__ = ["PostProcessing", "Segmenter"]
