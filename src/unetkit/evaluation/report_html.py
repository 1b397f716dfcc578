"""The small HTML pieces the evaluation report is made of: escaped text, numbers, cells, legends,
inline pictures and the page around them.

Every piece here takes values straight from ``metrics.json``. An undefined value (``None``, or a
non-finite float) is shown as "–" with a tooltip that says why, never as 0; a value the metrics do
not have at all is shown the same way with a "not computed" tooltip. Every string taken from the
data is HTML-escaped. The page's CSS and sorting script are package data files (``report_page.css``
and ``report_page.js``), inlined so that the page stays one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from functools import cache
from importlib.resources import files
from typing import Any

import numpy as np
from PIL import Image

from unetkit.evaluation.panels import ERROR_LEGEND, Panel, panel_row
from unetkit.palette import class_palette

UNDEFINED_TIP = (
    "undefined: nothing to measure (e.g. the class is absent from both the ground truth and the "
    "prediction); left out of every mean, never counted as 0"
)
MISSING_TIP = "not computed for this class or with these evaluation options"
NO_BACKGROUND = "_no_background"  # suffix of the means that leave class 0 out

_LABELS = {
    "pixel_accuracy": "Pixel accuracy",
    "mean_pixel_accuracy": "Mean class accuracy",
    "mean_iou": "Mean IoU",
    "mean_dice": "Mean Dice",
    "fw_iou": "Frequency-weighted IoU",
    "foreground_iou": "Foreground IoU",
    "foreground_dice": "Foreground Dice",
    "foreground_precision": "Foreground precision",
    "foreground_recall": "Foreground recall",
    "foreground_specificity": "Foreground specificity",
    "roc_auc": "ROC AUC",
    "average_precision": "Average precision",
    "mean_roc_auc": "Mean ROC AUC (foreground classes)",
    "mean_average_precision": "Mean average precision (foreground classes)",
    "map": "Instance mAP (IoU 0.50:0.95)",
    "map_50": "Instance AP at IoU 0.50",
    "map_75": "Instance AP at IoU 0.75",
    "pq": "Panoptic quality",
    "sq": "Segmentation quality",
    "rq": "Recognition quality",
    "hd95": "HD95 (px, lower is better)",
    "assd": "ASSD (px, lower is better)",
    "boundary_iou": "Boundary IoU",
    "cldice": "clDice",
}
_MIN_PANEL_WIDTH = 520  # px on screen; smaller panel rows are enlarged by a whole factor
_DISTANCES = {"hd95", "assd"}
_COUNTS = {"support", "predicted", "positives", "negatives", "gt_instances", "pred_instances"}


# ----------------------------------------------------------------------------- text


def escaped(value: Any) -> str:
    """``value`` as safe HTML text; ``None`` is shown as undefined."""
    return undefined() if value is None else html.escape(str(value), quote=True)


def escaped_attr(value: str) -> str:
    """``value`` safe inside a double-quoted HTML attribute."""
    return html.escape(value, quote=True)


def undefined(tip: str = UNDEFINED_TIP) -> str:
    """The "–" shown for a missing number, with ``tip`` saying why it is missing."""
    return f'<span class="undef" title="{escaped_attr(tip)}">–</span>'


def metric_label(key: str) -> str:
    """The readable name of metric ``key``, for headers and table rows (may hold markup)."""
    if key.endswith(NO_BACKGROUND):
        return f"{metric_label(key[: -len(NO_BACKGROUND)])} <small>without background</small>"
    return _LABELS.get(key) or escaped(key.replace("_", " ").capitalize())


def metric_label_inline(key: str) -> str:
    """The readable name of metric ``key``, for use inside a sentence (no smaller print)."""
    return metric_label(key).replace(" <small>without background</small>", " without background")


def swatch_name(index: int, name: str, num_classes: int) -> str:
    """Class ``name`` after a square of its mask colour."""
    red, green, blue = class_palette(num_classes)[index].tolist()
    return (
        f'<span class="swatch" style="background:rgb({red},{green},{blue})"></span>{escaped(name)}'
    )


# ----------------------------------------------------------------------------- numbers


def number(value: Any, key: str) -> str:
    """``value`` as shown in a cell: "–" with a tooltip when undefined."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return undefined()
    if not isinstance(value, (int, float)):
        return escaped(value)
    if key in _COUNTS or key == "images":
        return count(value)
    if key in _DISTANCES:
        return f"{value:.2f}"
    return f"{value:.3f}"


def count(value: Any) -> str:
    """A whole number with thousands separators."""
    if value is None:
        return undefined()
    return f"{int(value):,}" if isinstance(value, (int, float)) else escaped(value)


def duration(seconds: Any) -> str:
    """A time span in the largest units that keep it short (s, min, h)."""
    if not isinstance(seconds, (int, float)):
        return undefined("the time taken was not recorded")
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def interval(metrics: Mapping[str, Any], ci_key: str) -> str:
    """The bootstrap interval of ``ci_key`` (e.g. "dataset.mean_iou"); "" when there is none."""
    section = metrics.get("confidence_intervals") or {}
    bounds = (section.get("intervals") or {}).get(ci_key)
    if not bounds or bounds[0] is None or bounds[1] is None:
        return ""
    key = ci_key.rsplit(".", 1)[-1]
    low, high = number(bounds[0], key), number(bounds[1], key)
    return (
        f' <span class="ci" title="bootstrap over images">{ci_label(metrics)} {low}–{high}</span>'
    )


def ci_label(metrics: Mapping[str, Any]) -> str:
    """The name of the confidence intervals, e.g. "95% CI"."""
    level = (metrics.get("confidence_intervals") or {}).get("level") or 0.95
    return f"{level * 100:.0f}% CI"


def stat(stats: Mapping[str, Any] | None, key: str) -> Any:
    """One statistic ("mean", "std", "images") of a per-image spread; ``None`` when absent."""
    return stats.get(key) if isinstance(stats, Mapping) else None


def spread_html(stats: Mapping[str, Any] | None, key: str) -> str:
    """A per-image mean ± std, the std in smaller print, the image count in a tooltip."""
    mean = stat(stats, "mean")
    if mean is None:
        return undefined()
    std = stat(stats, "std")
    images = stat(stats, "images")
    tip = f"over {images} images" if images is not None else "over the images where it is defined"
    spread = f' <span class="pm">± {number(std, key)}</span>' if std is not None else ""
    return f'<span title="{escaped_attr(tip)}">{number(mean, key)}</span>{spread}'


def spread_text(stats: Mapping[str, Any] | None, key: str) -> str:
    """A per-image mean ± std as plain text, for a line of small print."""
    mean, std = stat(stats, "mean"), stat(stats, "std")
    if mean is None:
        return undefined()
    return number(mean, key) + ("" if std is None else f" ± {number(std, key)}")


# ----------------------------------------------------------------------------- table cells and rows


def class_cell(entry: Mapping[str, Any] | None, key: str) -> str:
    """The cell of ``key`` in one class's metrics ``entry``: a number or a per-image spread."""
    if entry is None or key not in entry:
        return f'<td class="num" data-v="">{undefined(MISSING_TIP)}</td>'
    value = entry[key]
    if isinstance(value, dict):
        mean = value.get("mean")
        return f'<td class="num" data-v="{_sort_value(mean)}">{spread_html(value, key)}</td>'
    return value_cell(value, key)


def value_cell(value: Any, key: str, extra: str = "") -> str:
    """A sortable number cell; a 0-to-1 score also gets a bar under it."""
    bar = ""
    if isinstance(value, (int, float)) and _is_ratio(key) and 0 <= value <= 1:
        bar = f' style="--v:{value:.4f}"'
    css = "num bar" if bar else "num"
    return f'<td class="{css}" data-v="{_sort_value(value)}"{bar}>{number(value, key)}{extra}</td>'


def _sort_value(value: Any) -> str:
    return f"{value}" if isinstance(value, (int, float)) and np.isfinite(value) else ""


def _is_ratio(key: str) -> bool:
    return key not in _DISTANCES and key not in _COUNTS


def metric_row(
    metrics: Mapping[str, Any],
    key: str,
    pooled: Any,
    per_image: Mapping[str, Any] | None,
    pooled_section: str | None,
) -> str:
    """A headline table row: the pooled value with its interval, then the per-image spread.

    ``pooled_section`` is where the pooled value's interval is found; None for a metric that is
    computed per image only, and ``per_image`` None for one computed over the whole split only.
    """
    pooled_cell = (
        value_cell(pooled, key, interval(metrics, f"{pooled_section}.{key}"))
        if pooled_section
        else '<td class="na" title="not pooled: computed per image only"></td>'
    )
    if per_image is None:
        image_cell = '<td class="na" title="computed over the whole split only"></td><td></td>'
    else:
        ci = interval(metrics, f"per_image.{key}")
        image_cell = (
            f"<td>{spread_html(per_image, key)}{ci}</td>"
            f'<td class="count">{count(per_image.get("images"))}</td>'
        )
    return f'<tr><th scope="row">{metric_label(key)}</th>{pooled_cell}{image_cell}</tr>'


def group_row(heading: str) -> str:
    """A row that heads a group of metrics in the headline table."""
    return f'<tr class="group"><th colspan="4">{escaped(heading)}</th></tr>'


# ----------------------------------------------------------------------------- legends


def class_legend(class_names: list[str]) -> str:
    """The mask colour of every class, and of ignored pixels."""
    items = [
        _legend_item(tuple(colour), name)
        for colour, name in zip(class_palette(len(class_names)).tolist(), class_names, strict=True)
    ]
    items.append(_legend_item((255, 255, 255), "ignored"))
    return f'<div class="legend"><b>Masks:</b> {"".join(items)}</div>'


def error_legend() -> str:
    """The colours of the error maps."""
    items = "".join(_legend_item(colour, name) for name, colour in ERROR_LEGEND.items())
    return f'<div class="legend"><b>Error map:</b> {items}</div>'


def _legend_item(colour: Sequence[int], name: str) -> str:
    red, green, blue = colour
    return (
        f'<span class="item"><i style="background:rgb({red},{green},{blue})"></i>'
        f"{escaped(name)}</span>"
    )


# ----------------------------------------------------------------------------- pictures


def panel_figure(panel: Panel, ranking_metric: str, class_names: list[str]) -> str:
    """One example: its name and score above its image, ground truth, prediction and error map."""
    captions = "".join(
        f"<span>{name}</span>" for name in ("image", "ground truth", "prediction", "error map")
    )
    picture = panel_row(panel, len(class_names), class_names)
    score = number(panel.score, ranking_metric)
    alt = f"{panel.name}: image, ground truth, prediction, error map"
    return (
        f'<figure class="panel"><figcaption><b>{escaped(panel.name)}</b> '
        f'<span class="score">{metric_label_inline(ranking_metric)} {score}</span></figcaption>'
        f'<div class="tiles"><div class="tilecaps">{captions}</div>'
        f"{_inline_png(_encode_png(picture), alt, _display_scale(picture.shape[1]))}"
        "</div></figure>"
    )


def chart_figure(png: bytes, alt: str, caption: str) -> str:
    """A chart with its caption."""
    return (
        f'<figure class="chart">{_inline_png(png, alt)}<figcaption>{escaped(caption)}</figcaption>'
        "</figure>"
    )


def _inline_png(png: bytes, alt: str, scale: int = 1) -> str:
    """An inline PNG, shown ``scale`` times its size (with crisp pixels when enlarged)."""
    width, height = Image.open(io.BytesIO(png)).size
    data = base64.b64encode(png).decode("ascii")
    crisp = ' class="pixelated"' if scale > 1 else ""
    return (
        f'<img src="data:image/png;base64,{data}" width="{width * scale}" '
        f'height="{height * scale}"{crisp} alt="{escaped_attr(alt)}">'
    )


def _display_scale(width: int) -> int:
    """Whole-number zoom that shows a row of tiny pictures at a readable width."""
    return max(1, min(4, _MIN_PANEL_WIDTH // max(width, 1)))


def _encode_png(picture: np.ndarray) -> bytes:
    """``picture`` (H, W, 3) uint8 as PNG bytes, compressed as far as PNG goes."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- page


def html_page(page_title: str, body: str) -> str:
    """The whole page around ``body``, with the CSS and the sorting script inline."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escaped(page_title)}</title><style>\n{_asset('report_page.css')}</style></head>"
        f"<body><main>{body}<footer>Written by unetkit. Self-contained: no network needed."
        f"</footer></main><script>\n{_asset('report_page.js')}</script></body></html>\n"
    )


@cache
def _asset(name: str) -> str:
    """A file shipped next to this module, to inline into the page (read once)."""
    return files("unetkit.evaluation").joinpath(name).read_text(encoding="utf-8")
