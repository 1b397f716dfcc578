"""The only place unetkit computes metrics: a confusion matrix, and the numbers derived from it."""

from unetkit.metrics.confusion import ConfusionMatrix
from unetkit.metrics.summary import format_table, summarize

__all__ = ["ConfusionMatrix", "format_table", "summarize"]
