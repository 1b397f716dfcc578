"""The evaluation report: one self-contained HTML page built from ``metrics.json``.

The page is meant to be looked at: headline numbers first, then per-class numbers, charts and the
best and worst images, and a short guide to reading it. It opens from disk with no server and no
network: CSS and the one small sorting script are inline, every picture is an inline PNG data URI,
and no address outside the page is ever referenced.

Undefined values (``None`` in the metrics) are shown as "–" with a tooltip that says why, never as
0; a value the metrics do not have at all (a section switched off, a class a family does not
score) is shown the same way with a "not computed" tooltip. Every string taken from the data
(class names, image names, paths, the title) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unetkit.evaluation import figures
from unetkit.evaluation.panels import ERROR_LEGEND, Panel, panel_row
from unetkit.palette import class_palette

__all__ = ["write_report"]

UNDEFINED_TIP = (
    "undefined: nothing to measure (e.g. the class is absent from both the ground truth and the "
    "prediction); left out of every mean, never counted as 0"
)
MISSING_TIP = "not computed for this class or with these evaluation options"

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
_NO_BACKGROUND = "_no_background"
_MIN_PANEL_WIDTH = 520  # px on screen; smaller panel rows are enlarged by a whole factor
_DISTANCES = {"hd95", "assd"}
_COUNTS = {"support", "predicted", "positives", "negatives", "gt_instances", "pred_instances"}
_POOLED_SECTIONS = {
    "threshold_free": (
        "Threshold-free (from probabilities)",
        ("roc_auc", "average_precision", "mean_roc_auc", "mean_average_precision"),
    ),
    "instance": ("Instances (connected components)", ("map", "map_50", "map_75", "pq", "sq", "rq")),
}
_BOUNDARY_KEYS = ("hd95", "assd", "boundary_iou", "cldice")
_CLASS_COLUMNS = (
    # (section, key, header, tooltip); section "dataset"/"per_image" are always there
    ("dataset", "iou", "IoU", "pooled intersection over union"),
    ("per_image", "iou", "IoU per image", "mean ± std over the images where it is defined"),
    ("dataset", "dice", "Dice", "pooled Dice (F1)"),
    (
        "dataset",
        "precision",
        "Precision",
        "pooled: of the pixels predicted as the class, share right",
    ),
    ("dataset", "recall", "Recall", "pooled: of the class's pixels, share found"),
    ("dataset", "specificity", "Specificity", "pooled: of the other pixels, share left out"),
    ("dataset", "support", "Pixels", "ground-truth pixels of the class (ignore pixels excluded)"),
    ("threshold_free", "roc_auc", "AUC", "ROC AUC, one class against the rest"),
    ("threshold_free", "average_precision", "AP", "average precision, one class against the rest"),
    ("instance", "ap", "Inst. AP", "COCO-style AP of connected components, IoU 0.50:0.95"),
    ("instance", "pq", "PQ", "panoptic quality of connected components"),
    ("boundary", "hd95", "HD95", "95th-percentile Hausdorff distance, px (per-image mean)"),
    ("boundary", "assd", "ASSD", "average symmetric surface distance, px (per-image mean)"),
    ("boundary", "boundary_iou", "Boundary IoU", "IoU of the boundary bands (per-image mean)"),
    ("boundary", "cldice", "clDice", "centreline Dice (per-image mean)"),
)
_COLUMN_GROUPS = {
    "dataset": "Overlap",
    "per_image": "Overlap",
    "threshold_free": "Threshold-free",
    "instance": "Instances",
    "boundary": "Boundary",
}


def write_report(
    metrics: dict,
    out_path: Path,
    *,
    curves: dict[str, dict[str, list[float]]] | None = None,
    best: Sequence[Panel] = (),
    worst: Sequence[Panel] = (),
    ranking_metric: str = "mean_iou",
    history: list[dict] | None = None,
    title: str | None = None,
) -> Path:
    """Write the report of ``metrics`` (the dict of ``metrics.json``) to ``out_path``; return it.

    ``curves`` (class name -> ROC/PR points), ``best``/``worst`` example panels ranked by
    ``ranking_metric`` and the training ``history`` rows add their sections when given.
    """
    _check_metrics(metrics)
    out_path = Path(out_path)
    class_names = _class_names(metrics)
    page_title = title or f"Evaluation on the {metrics.get('split', '?')} split"
    sections = [
        ("headline", "Headline numbers", _headline_body(metrics)),
        ("classes", "Per class", _class_body(metrics, class_names)),
        ("charts", "Charts", _charts_body(metrics, class_names)),
        ("curves", "ROC and precision-recall", _curves_body(metrics, curves) if curves else ""),
        ("training", "Training", _history_body(history) if history else ""),
        ("examples", "Examples", _examples_body(best, worst, ranking_metric, class_names)),
        ("reading", "How to read these numbers", _reading_body(metrics)),
    ]
    shown = [(anchor, heading, body) for anchor, heading, body in sections if body]
    body = _header(metrics, page_title, class_names, shown) + "".join(
        f'<section id="{anchor}"><h2>{heading}</h2>{content}</section>'
        for anchor, heading, content in shown
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(_page(page_title, body), encoding="utf-8")
    return out_path


# ----------------------------------------------------------------------------- sections


def _header(
    metrics: Mapping[str, Any],
    page_title: str,
    class_names: list[str],
    sections: Sequence[tuple[str, str, str]],
) -> str:
    facts = [
        ("Split", _text(metrics.get("split"))),
        ("Images", _count(metrics.get("num_images"))),
        ("Task", _text(metrics.get("task"))),
        (
            "Classes",
            ", ".join(_swatch_name(i, n, len(class_names)) for i, n in enumerate(class_names)),
        ),
        ("Checkpoint", f"<code>{_text(metrics.get('checkpoint'))}</code>"),
        ("Time taken", _duration(metrics.get("seconds"))),
    ]
    items = "".join(f"<div><dt>{label}</dt><dd>{value}</dd></div>" for label, value in facts)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<header><h1>{_text(page_title)}</h1><p class="sub">unetkit evaluation report, written '
        f'{stamp}</p><dl class="facts">{items}</dl>{_nav(sections)}</header>'
    )


def _nav(sections: Sequence[tuple[str, str, str]]) -> str:
    links = "".join(f'<a href="#{anchor}">{heading}</a>' for anchor, heading, _ in sections)
    return f"<nav>{links}</nav>"


def _headline_body(metrics: Mapping[str, Any]) -> str:
    cards = "".join(_card(metrics, section, key) for section, key in _hero_keys(metrics))
    rows = _headline_rows(metrics)
    table = (
        '<table class="metrics"><thead><tr><th>Metric</th><th title="one confusion matrix over '
        'every pixel of the split">Pooled over the split</th><th title="the metric of each image, '
        'then mean ± std over the images where it is defined">Per image (mean ± std)</th>'
        f'<th title="images the per-image mean is over">Images</th></tr></thead><tbody>{rows}'
        "</tbody></table>"
    )
    return f'<div class="cards">{cards}</div>{table}'


def _class_body(metrics: Mapping[str, Any], class_names: list[str]) -> str:
    """Pixel overlap in one table; the optional families, when present, in a second one."""
    columns = [column for column in _CLASS_COLUMNS if column[0] in metrics]
    overlap = [column for column in columns if column[0] in ("dataset", "per_image")]
    families = [column for column in columns if column not in overlap]
    tables = [_class_table(metrics, overlap, class_names, grouped=False)]
    if families:
        tables.append(_class_table(metrics, families, class_names, grouped=True))
    note = (
        '<p class="note">Click a column title to sort. The bar under a number shows it on a 0 '
        "to 1 scale.</p>"
    )
    return "".join(f'<div class="scroll">{table}</div>' for table in tables) + note


def _class_table(
    metrics: Mapping[str, Any],
    columns: Sequence[tuple[str, str, str, str]],
    class_names: list[str],
    grouped: bool,
) -> str:
    lookups = {section: _by_name(metrics[section]) for section in {c[0] for c in columns}}
    header = "".join(
        f'<th class="sortable" title="{_attr(tip)}; click to sort">{label}</th>'
        for _, _, label, tip in columns
    )
    rows = []
    for index, name in enumerate(class_names):
        cells = [_class_cell(lookups[section].get(name), key) for section, key, _, _ in columns]
        name_cell = (
            f'<th scope="row" data-v="{index}">{_swatch_name(index, name, len(class_names))}</th>'
        )
        rows.append(f"<tr>{name_cell}{''.join(cells)}</tr>")
    groups = _group_header(columns) if grouped else ""
    return (
        f'<table class="metrics sortable-table"><thead>{groups}<tr><th class="sortable" '
        f'title="click to sort">Class</th>{header}</tr></thead><tbody>{"".join(rows)}</tbody>'
        "</table>"
    )


def _charts_body(metrics: Mapping[str, Any], class_names: list[str]) -> str:
    dataset, per_image = metrics["dataset"], metrics.get("per_image", {})
    dataset_rows, image_rows = _by_name(dataset), _by_name(per_image)
    iou = [dataset_rows.get(name, {}).get("iou") for name in class_names]
    means = [_stat(image_rows.get(name, {}).get("iou"), "mean") for name in class_names]
    stds = [_stat(image_rows.get(name, {}).get("iou"), "std") for name in class_names]
    has_spread = any(mean is not None for mean in means)
    bars = figures.class_iou_chart(
        class_names, iou, means if has_spread else None, stds if has_spread else None
    )
    heat = figures.confusion_heatmap(dataset["confusion_matrix"], class_names)
    bars_caption = (
        "IoU per class. Bars: pooled over the split. Diamonds: per-image mean ± std, over the "
        "images where the class is present or predicted."
    )
    heat_caption = (
        "Confusion matrix. Rows: ground truth, columns: prediction; each row sums to 1 (grey: no "
        "ground-truth pixel of that class)."
    )
    figures_html = _figure(bars, "IoU per class", bars_caption) + _figure(
        heat, "Confusion matrix", heat_caption
    )
    return f'<div class="grid2">{figures_html}</div>'


def _curves_body(
    metrics: Mapping[str, Any], curves: Mapping[str, Mapping[str, Sequence[float]]]
) -> str:
    summaries = _by_name(metrics.get("threshold_free", {}))
    png = figures.roc_pr_curves(curves, summaries, _class_names(metrics))
    caption = (
        "Every decision threshold at once, from the binned probabilities. The legends give ROC AUC "
        "and average precision; the dashed PR line is a classifier that guesses."
    )
    return _figure(png, "ROC and PR", caption)


def _history_body(history: Sequence[Mapping[str, Any]]) -> str:
    png = figures.training_curves(history)
    caption = "Loss and validation metrics per epoch, from history.csv (gaps: undefined)."
    return _figure(png, "Training curves", caption)


def _examples_body(
    best: Sequence[Panel], worst: Sequence[Panel], ranking_metric: str, class_names: list[str]
) -> str:
    if not best and not worst:
        return '<p class="note">No example images were given.</p>'
    metric = _metric_label(ranking_metric)
    legends = _class_legend(class_names) + _error_legend()
    groups = [
        _panel_group(f"Best {len(best)} by {metric}", best, ranking_metric, class_names),
        _panel_group(f"Worst {len(worst)} by {metric}", worst, ranking_metric, class_names),
    ]
    return legends + "".join(groups)


def _reading_body(metrics: Mapping[str, Any]) -> str:
    points = [
        "<b>Pooled</b> numbers come from one confusion matrix over every scored pixel of the "
        "split, so large images and large objects weigh more. <b>Per image</b> numbers are "
        "computed on each image, then averaged: every image weighs the same, and ± is the "
        "standard deviation between images (the spread, not the uncertainty of the mean).",
        "<b>–</b> means undefined, e.g. a class absent from both the ground truth and the "
        "prediction has no IoU. Undefined values are left out of every mean (the Images column "
        "says how many images a mean is over); they are never counted as 0 or 1.",
        "<b>Ignore pixels</b> (void labels, outside the region of interest) are left out of every "
        "number. They are white in the mask pictures and grey in the error maps.",
        _background_point(_is_binary(metrics)),
    ]
    points.extend(_optional_reading_points(metrics))
    items = "".join(f"<li>{point}</li>" for point in points)
    return f"<ul>{items}</ul>"


def _background_point(binary: bool) -> str:
    if binary:
        return (
            "<b>Foreground</b> numbers score the one foreground class alone; the means over "
            "classes also count the background, which a large, easy background can lift."
        )
    return (
        "<b>Without background</b> variants leave class 0 out of the mean, so a large, easy "
        "background cannot lift the score."
    )


def _optional_reading_points(metrics: Mapping[str, Any]) -> list[str]:
    points = []
    intervals = metrics.get("confidence_intervals")
    if intervals:
        points.append(
            f"<b>{_ci_label(metrics)}</b> intervals (small grey text) come from "
            f"{_count(intervals.get('resamples'))} bootstrap resamples of the images: how much the "
            "number could move on another sample of images like these."
        )
    if "threshold_free" in metrics:
        points.append(
            "<b>Threshold-free</b> scores (AUC, AP) use the predicted probabilities, binned into "
            f"{_count(metrics['threshold_free'].get('bins'))} bins, not the thresholded masks."
        )
    if "instance" in metrics:
        points.append(
            "<b>Instance</b> scores treat each connected component as one object (components "
            f"smaller than {_count(metrics['instance'].get('min_area'))} px are dropped)."
        )
    if "boundary" in metrics:
        points.append(
            "<b>Boundary</b> scores look only at outlines: HD95 and ASSD are distances in pixels "
            "(lower is better); boundary IoU uses a band of "
            f"{_text(metrics['boundary'].get('boundary_width'))} px."
        )
    return points


# ----------------------------------------------------------------------------- headline parts


def _hero_keys(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    if _is_binary(metrics):
        keys = [("dataset", f"foreground_{m}") for m in ("iou", "dice", "precision", "recall")]
        keys.append(("threshold_free", "roc_auc"))
    else:
        keys = [
            ("dataset", k)
            for k in ("mean_iou", f"mean_iou{_NO_BACKGROUND}", "mean_dice", "pixel_accuracy")
        ]
        keys.append(("threshold_free", "mean_roc_auc"))
    keys += [("instance", "pq"), ("boundary", "hd95")]
    return [(section, key) for section, key in keys if key in metrics.get(section, {})]


def _card(metrics: Mapping[str, Any], section: str, key: str) -> str:
    """One big number; boundary metrics exist per image only, so their mean is the big number."""
    if section == "boundary":
        stats = metrics[section][key]
        big, ci = _stat(stats, "mean"), _interval(metrics, f"per_image.{key}")
        detail = f"mean over images, std {_number(_stat(stats, 'std'), key)}"
    else:
        big, ci = metrics[section][key], _interval(metrics, f"{section}.{key}")
        per_image = metrics.get("per_image", {}).get(key)
        detail = f"per image {_spread_text(per_image, key)}" if per_image else ""
    lines = [
        f'<div class="big">{_number(big, key)}</div>',
        f'<div class="label">{_label(key)}</div>',
    ]
    lines += [f'<div class="detail">{text}</div>' for text in (detail, ci) if text]
    return f'<div class="card">{"".join(lines)}</div>'


def _headline_rows(metrics: Mapping[str, Any]) -> str:
    dataset, per_image = metrics["dataset"], metrics.get("per_image", {})
    keys = _ordered_headline_keys(dataset, _is_binary(metrics))
    rows = [_group_row("Overlap (thresholded masks)")]
    rows += [
        _metric_row(metrics, key, dataset.get(key), per_image.get(key), "dataset") for key in keys
    ]
    for section, (heading, section_keys) in _POOLED_SECTIONS.items():
        present = [key for key in section_keys if key in metrics.get(section, {})]
        if present:
            rows.append(_group_row(heading))
            rows += [
                _metric_row(metrics, key, metrics[section][key], None, section) for key in present
            ]
    boundary = metrics.get("boundary", {})
    present = [key for key in _BOUNDARY_KEYS if key in boundary]
    if present:
        rows.append(_group_row("Boundary (per image; mean over foreground classes)"))
        rows += [_metric_row(metrics, key, None, boundary[key], None) for key in present]
    return "".join(rows)


def _ordered_headline_keys(dataset: Mapping[str, Any], binary: bool) -> list[str]:
    """Foreground metrics first; a binary task's "without background" means only repeat them."""
    scalar = [key for key, value in dataset.items() if not isinstance(value, (list, dict))]
    foreground = [key for key in scalar if key.startswith("foreground_")]
    without = [key for key in scalar if key.endswith(_NO_BACKGROUND)]
    rest = [key for key in scalar if key not in foreground and key not in without]
    return foreground + rest + ([] if binary else without)


def _metric_row(
    metrics: Mapping[str, Any],
    key: str,
    pooled: Any,
    per_image: Mapping[str, Any] | None,
    pooled_section: str | None,
) -> str:
    pooled_cell = (
        _value_cell(pooled, key, _interval(metrics, f"{pooled_section}.{key}"))
        if pooled_section
        else '<td class="na" title="not pooled: computed per image only"></td>'
    )
    if per_image is None:
        image_cell = '<td class="na" title="computed over the whole split only"></td><td></td>'
    else:
        ci = _interval(metrics, f"per_image.{key}")
        image_cell = (
            f"<td>{_spread_html(per_image, key)}{ci}</td>"
            f'<td class="count">{_count(per_image.get("images"))}</td>'
        )
    return f'<tr><th scope="row">{_label(key)}</th>{pooled_cell}{image_cell}</tr>'


def _group_row(heading: str) -> str:
    return f'<tr class="group"><th colspan="4">{_text(heading)}</th></tr>'


# ----------------------------------------------------------------------------- class table parts


def _group_header(columns: Sequence[tuple[str, str, str, str]]) -> str:
    spans: list[list[Any]] = []
    for section, *_ in columns:
        group = _COLUMN_GROUPS[section]
        if spans and spans[-1][0] == group:
            spans[-1][1] += 1
        else:
            spans.append([group, 1])
    cells = "".join(f'<th colspan="{span}" class="grouphead">{name}</th>' for name, span in spans)
    return f"<tr><th></th>{cells}</tr>"


def _class_cell(entry: Mapping[str, Any] | None, key: str) -> str:
    if entry is None or key not in entry:
        return f'<td class="num" data-v="">{_undefined(MISSING_TIP)}</td>'
    value = entry[key]
    if isinstance(value, dict):
        mean = value.get("mean")
        return f'<td class="num" data-v="{_sort_value(mean)}">{_spread_html(value, key)}</td>'
    return _value_cell(value, key)


def _value_cell(value: Any, key: str, extra: str = "") -> str:
    bar = ""
    if isinstance(value, (int, float)) and _is_ratio(key) and 0 <= value <= 1:
        bar = f' style="--v:{value:.4f}"'
    css = "num bar" if bar else "num"
    return f'<td class="{css}" data-v="{_sort_value(value)}"{bar}>{_number(value, key)}{extra}</td>'


def _spread_html(stats: Mapping[str, Any] | None, key: str) -> str:
    mean = _stat(stats, "mean")
    if mean is None:
        return _undefined()
    std = _stat(stats, "std")
    images = _stat(stats, "images")
    tip = f"over {images} images" if images is not None else "over the images where it is defined"
    spread = f' <span class="pm">± {_number(std, key)}</span>' if std is not None else ""
    return f'<span title="{_attr(tip)}">{_number(mean, key)}</span>{spread}'


def _spread_text(stats: Mapping[str, Any] | None, key: str) -> str:
    mean, std = _stat(stats, "mean"), _stat(stats, "std")
    if mean is None:
        return _undefined()
    return _number(mean, key) + ("" if std is None else f" ± {_number(std, key)}")


# ----------------------------------------------------------------------------- examples parts


def _panel_group(
    heading: str, panels: Sequence[Panel], ranking_metric: str, class_names: list[str]
) -> str:
    if not panels:
        return ""
    captions = "".join(
        f"<span>{name}</span>" for name in ("image", "ground truth", "prediction", "error map")
    )
    rows = []
    for panel in panels:
        picture = panel_row(panel, len(class_names), class_names)
        score = _number(panel.score, ranking_metric)
        alt = f"{panel.name}: image, ground truth, prediction, error map"
        rows.append(
            f'<figure class="panel"><figcaption><b>{_text(panel.name)}</b> '
            f'<span class="score">{_metric_label(ranking_metric)} {score}</span></figcaption>'
            f'<div class="tiles"><div class="tilecaps">{captions}</div>'
            f"{_img(_encode_png(picture), alt, _display_scale(picture.shape[1]))}"
            "</div></figure>"
        )
    return f"<h3>{_text(heading)}</h3>{''.join(rows)}"


def _class_legend(class_names: list[str]) -> str:
    items = [
        _legend_item(tuple(colour), name)
        for colour, name in zip(class_palette(len(class_names)).tolist(), class_names, strict=True)
    ]
    items.append(_legend_item((255, 255, 255), "ignored"))
    return f'<div class="legend"><b>Masks:</b> {"".join(items)}</div>'


def _error_legend() -> str:
    items = "".join(_legend_item(colour, name) for name, colour in ERROR_LEGEND.items())
    return f'<div class="legend"><b>Error map:</b> {items}</div>'


def _legend_item(colour: Sequence[int], name: str) -> str:
    red, green, blue = colour
    return (
        f'<span class="item"><i style="background:rgb({red},{green},{blue})"></i>'
        f"{_text(name)}</span>"
    )


# ----------------------------------------------------------------------------- formatting


def _number(value: Any, key: str) -> str:
    """``value`` as shown in a cell: "–" with a tooltip when undefined."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return _undefined()
    if not isinstance(value, (int, float)):
        return _text(value)
    if key in _COUNTS or key == "images":
        return _count(value)
    if key in _DISTANCES:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _undefined(tip: str = UNDEFINED_TIP) -> str:
    return f'<span class="undef" title="{_attr(tip)}">–</span>'


def _interval(metrics: Mapping[str, Any], ci_key: str) -> str:
    section = metrics.get("confidence_intervals") or {}
    bounds = (section.get("intervals") or {}).get(ci_key)
    if not bounds or bounds[0] is None or bounds[1] is None:
        return ""
    key = ci_key.rsplit(".", 1)[-1]
    low, high = _number(bounds[0], key), _number(bounds[1], key)
    return (
        f' <span class="ci" title="bootstrap over images">{_ci_label(metrics)} {low}–{high}</span>'
    )


def _ci_label(metrics: Mapping[str, Any]) -> str:
    level = (metrics.get("confidence_intervals") or {}).get("level") or 0.95
    return f"{level * 100:.0f}% CI"


def _count(value: Any) -> str:
    if value is None:
        return _undefined()
    return f"{int(value):,}" if isinstance(value, (int, float)) else _text(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return _undefined("the time taken was not recorded")
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _label(key: str) -> str:
    if key.endswith(_NO_BACKGROUND):
        return f"{_label(key[: -len(_NO_BACKGROUND)])} <small>without background</small>"
    return _LABELS.get(key) or _text(key.replace("_", " ").capitalize())


def _metric_label(key: str) -> str:
    return _label(key).replace(" <small>without background</small>", " without background")


def _swatch_name(index: int, name: str, num_classes: int) -> str:
    red, green, blue = class_palette(num_classes)[index].tolist()
    return f'<span class="swatch" style="background:rgb({red},{green},{blue})"></span>{_text(name)}'


def _sort_value(value: Any) -> str:
    return f"{value}" if isinstance(value, (int, float)) and np.isfinite(value) else ""


def _is_ratio(key: str) -> bool:
    return key not in _DISTANCES and key not in _COUNTS


def _text(value: Any) -> str:
    return _undefined() if value is None else html.escape(str(value), quote=True)


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


# ----------------------------------------------------------------------------- page parts


def _figure(png: bytes, alt: str, caption: str) -> str:
    return (
        f'<figure class="chart">{_img(png, alt)}<figcaption>{_text(caption)}</figcaption></figure>'
    )


def _img(png: bytes, alt: str, scale: int = 1) -> str:
    """An inline PNG, shown ``scale`` times its size (with crisp pixels when enlarged)."""
    width, height = Image.open(io.BytesIO(png)).size
    data = base64.b64encode(png).decode("ascii")
    crisp = ' class="pixelated"' if scale > 1 else ""
    return (
        f'<img src="data:image/png;base64,{data}" width="{width * scale}" '
        f'height="{height * scale}"{crisp} alt="{_attr(alt)}">'
    )


def _display_scale(width: int) -> int:
    """Whole-number zoom that shows a row of tiny pictures at a readable width."""
    return max(1, min(4, _MIN_PANEL_WIDTH // max(width, 1)))


def _encode_png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def _page(page_title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_text(page_title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}<footer>Written by unetkit. Self-contained: no network needed."
        f"</footer></main><script>{_SORT_SCRIPT}</script></body></html>\n"
    )


# ----------------------------------------------------------------------------- input checks


def _check_metrics(metrics: Mapping[str, Any]) -> None:
    dataset = metrics.get("dataset") if isinstance(metrics, Mapping) else None
    if not isinstance(dataset, Mapping):
        raise ValueError(
            "metrics has no 'dataset' section; pass the dict that evaluation writes to "
            "metrics.json (json.load of that file)"
        )
    for key in ("per_class", "confusion_matrix"):
        if key not in dataset:
            raise ValueError(
                f"metrics['dataset'] has no {key!r}; it has {sorted(dataset)}. Pass the full "
                "metrics.json dict"
            )


def _class_names(metrics: Mapping[str, Any]) -> list[str]:
    names = metrics.get("class_names") or [
        entry["name"] for entry in metrics["dataset"]["per_class"]
    ]
    return [str(name) for name in names]


def _is_binary(metrics: Mapping[str, Any]) -> bool:
    task = metrics.get("task")
    return task == "binary" if task else len(_class_names(metrics)) == 2


def _by_name(section: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(entry.get("name")): entry for entry in section.get("per_class", [])}


def _stat(stats: Mapping[str, Any] | None, key: str) -> Any:
    return stats.get(key) if isinstance(stats, Mapping) else None


_CSS = """
:root{--ink:#1d232b;--muted:#5b6573;--line:#dfe3e8;--soft:#f5f7f9;--accent:#1f6fb2;
--bar:#6aa6d8}
*{box-sizing:border-box}
body{margin:0;background:#eef1f4;color:var(--ink);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:24px 28px 40px;background:#fff;min-height:100vh}
h1{margin:0;font-size:26px}h2{margin:0 0 12px;font-size:20px;border-bottom:2px solid var(--line);
padding-bottom:4px}h3{font-size:16px;margin:18px 0 8px}
section{margin-top:30px}
.sub{margin:2px 0 14px;color:var(--muted)}
.facts{display:flex;flex-wrap:wrap;gap:8px 28px;margin:0}
.facts div{min-width:0}.facts dt{font-size:12px;text-transform:uppercase;letter-spacing:.04em;
color:var(--muted)}.facts dd{margin:0;overflow-wrap:anywhere}
code{font-size:13px;background:var(--soft);padding:1px 4px;border-radius:3px}
nav{margin-top:14px;display:flex;flex-wrap:wrap;gap:6px}
nav a{color:var(--accent);text-decoration:none;border:1px solid var(--line);border-radius:14px;
padding:2px 12px;font-size:13px}nav a:hover{background:var(--soft)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px;
margin-bottom:18px}
.card{background:var(--soft);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .big{font-size:30px;font-weight:650;line-height:1.1;font-variant-numeric:tabular-nums}
.card .label{font-weight:600;margin-top:2px}.card .detail{font-size:12.5px;color:var(--muted)}
table.metrics{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:14px}
table.metrics th,table.metrics td{padding:5px 10px;border-bottom:1px solid var(--line);
text-align:left;white-space:nowrap}
table.metrics thead th{background:var(--soft);font-size:13px;vertical-align:bottom}
table.metrics td.num,table.metrics td.count{text-align:right}
#headline table.metrics td.num{text-align:left}
table.metrics td.bar{background:linear-gradient(90deg,var(--bar) calc(var(--v)*100%),
var(--soft) 0) no-repeat 6px calc(100% - 3px)/calc(100% - 12px) 4px}
table.metrics tr.group th{background:#fff;color:var(--accent);font-size:13px;padding-top:12px;
text-transform:uppercase;letter-spacing:.04em}
th.grouphead{text-align:center!important;border-left:2px solid #fff}
th.sortable{cursor:pointer;user-select:none}th.sortable:hover{color:var(--accent)}
th.sorted-asc::after{content:" \\25B2";font-size:10px}
th.sorted-desc::after{content:" \\25BC";font-size:10px}
.scroll{overflow-x:auto;margin-bottom:14px}
.pm{color:var(--muted);font-size:12.5px}
.ci{color:var(--muted);font-size:12px;margin-left:4px}
.undef{color:var(--muted);cursor:help;border-bottom:1px dotted var(--muted)}
.na{background:repeating-linear-gradient(45deg,#fff 0 4px,var(--soft) 4px 8px)}
.swatch{display:inline-block;width:12px;height:12px;border:1px solid #888;border-radius:2px;
margin-right:6px;vertical-align:-1px}
.note{color:var(--muted);font-size:13px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:18px;
align-items:start}
figure{margin:0}
figure.chart img,.tiles img{max-width:100%;height:auto;display:block}
img.pixelated{image-rendering:pixelated}
figure.chart figcaption{font-size:13px;color:var(--muted);margin-top:4px}
.legend{margin:6px 0;font-size:13px}
.legend .item{display:inline-flex;align-items:center;margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:14px;height:14px;border:1px solid #888;margin-right:5px}
figure.panel{margin:0 0 14px;padding:8px 10px 10px;border:1px solid var(--line);border-radius:8px}
figure.panel figcaption{font-size:14px;margin-bottom:4px;overflow-wrap:anywhere}
.score{color:var(--muted);margin-left:8px}
.tiles{width:fit-content;max-width:100%}
.tilecaps{display:grid;grid-template-columns:repeat(4,1fr);font-size:12px;color:var(--muted);
text-align:center}
#reading li{margin-bottom:6px}
footer{margin-top:36px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);
padding-top:8px}
"""

_SORT_SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    return v === null ? cell.textContent.trim().toLowerCase() : v;
  }
  function compare(a, b, descending) {
    if (a === "" && b === "") return 0;
    if (a === "") return 1;
    if (b === "") return -1;
    var x = parseFloat(a), y = parseFloat(b);
    var order = (isNaN(x) || isNaN(y)) ? (a < b ? -1 : a > b ? 1 : 0) : x - y;
    return descending ? -order : order;
  }
  document.querySelectorAll("table.sortable-table").forEach(function (table) {
    var head = table.tHead.rows[table.tHead.rows.length - 1];
    Array.prototype.forEach.call(head.cells, function (th, column) {
      th.addEventListener("click", function () {
        var descending = !th.classList.contains("sorted-desc");
        Array.prototype.forEach.call(head.cells, function (other) {
          other.classList.remove("sorted-asc", "sorted-desc");
        });
        th.classList.add(descending ? "sorted-desc" : "sorted-asc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r, s) {
          return compare(key(r.cells[column]), key(s.cells[column]), descending);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
    table.setAttribute("data-sort-ready", "yes");
  });
})();
"""
