"""The only place unetkit computes metrics: confusion matrices, histograms, components, outlines.

:class:`SplitMetrics` accumulates every family over a split, one image at a time; training's
validation uses :class:`ConfusionMatrix` and :func:`summarise` alone (pixel counts are all it needs
each epoch).
"""

from unetkit.metrics.confusion import ConfusionMatrix
from unetkit.metrics.curves import ScoreHistogram
from unetkit.metrics.instances import COCO_IOU_THRESHOLDS, InstanceAccumulator
from unetkit.metrics.split import SplitMetrics
from unetkit.metrics.summary import format_table, summarise

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "ConfusionMatrix",
    "InstanceAccumulator",
    "ScoreHistogram",
    "SplitMetrics",
    "format_table",
    "summarise",
]
