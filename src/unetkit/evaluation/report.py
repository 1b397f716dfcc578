"""The evaluation report: one self-contained HTML page built from ``metrics.json``.

The page is meant to be looked at: headline numbers first, then per-class numbers, charts and the
best and worst images, and a short guide to reading it. It opens from disk with no server and no
network: CSS and the one small sorting script are inline, every picture is an inline PNG data URI,
and no address outside the page is ever referenced.

Undefined values (``None`` in the metrics) are shown as "–" with a tooltip that says why, never as
0; a value the metrics do not have at all (a section switched off, a class a family does not
score) is shown the same way with a "not computed" tooltip. Every string taken from the data
(class names, image names, paths, the title) is HTML-escaped. The small pieces the page is made
of (escaped text, numbers, cells, pictures, the CSS and script) live in ``report_html``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from unetkit.evaluation import figures
from unetkit.evaluation.calibration import UNCERTAINTY_COLUMN, after_label
from unetkit.evaluation.panels import Panel
from unetkit.evaluation.report_ensemble import ensemble_body
from unetkit.evaluation.report_html import (
    NO_BACKGROUND,
    chart_figure,
    ci_label,
    class_cell,
    class_legend,
    count,
    duration,
    error_legend,
    escaped,
    escaped_attr,
    group_row,
    html_page,
    interval,
    metric_label,
    metric_label_inline,
    metric_row,
    number,
    panel_figure,
    spread_text,
    stat,
    swatch_name,
)
from unetkit.metrics.split import BOUNDARY_METRICS

__all__ = ["write_report"]

_POOLED_SECTIONS = {
    "threshold_free": (
        "Threshold-free (from probabilities)",
        ("roc_auc", "average_precision", "mean_roc_auc", "mean_average_precision"),
    ),
    "instance": ("Instances (connected components)", ("map", "map_50", "map_75", "pq", "sq", "rq")),
}
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
    uncertain: Sequence[Panel] = (),
) -> Path:
    """Write the report of ``metrics`` (the dict of ``metrics.json``) to ``out_path``; return it.

    ``curves`` (class name -> ROC/PR points), ``best``/``worst`` example panels ranked by
    ``ranking_metric``, the most ``uncertain`` images (scored by their mean predictive entropy)
    and the training ``history`` rows add their sections when given.
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
        ("calibration", "Calibration and uncertainty", _calibration_body(metrics)),
        ("ensemble", "Ensemble and its members", ensemble_body(metrics)),
        ("training", "Training", _history_body(history) if history else ""),
        (
            "examples",
            "Examples",
            _examples_body(best, worst, ranking_metric, class_names, uncertain),
        ),
        ("reading", "How to read these numbers", _reading_body(metrics)),
    ]
    shown = [(anchor, heading, body) for anchor, heading, body in sections if body]
    body = _header(metrics, page_title, class_names, shown) + "".join(
        f'<section id="{anchor}"><h2>{heading}</h2>{content}</section>'
        for anchor, heading, content in shown
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(html_page(page_title, body), encoding="utf-8")
    return out_path


# ----------------------------------------------------------------------------- sections


def _header(
    metrics: Mapping[str, Any],
    page_title: str,
    class_names: list[str],
    sections: Sequence[tuple[str, str, str]],
) -> str:
    facts = [
        ("Split", escaped(metrics.get("split"))),
        ("Images", count(metrics.get("num_images"))),
        ("Task", escaped(metrics.get("task"))),
        (
            "Classes",
            ", ".join(_swatch(metrics, i, n, class_names) for i, n in enumerate(class_names)),
        ),
        ("Checkpoint", f"<code>{escaped(metrics.get('checkpoint'))}</code>"),
        ("Time taken", duration(metrics.get("seconds"))),
    ]
    items = "".join(f"<div><dt>{label}</dt><dd>{value}</dd></div>" for label, value in facts)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<header><h1>{escaped(page_title)}</h1><p class="sub">unetkit evaluation report, written '
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
        f'<th class="sortable" title="{escaped_attr(tip)}; click to sort">{label}</th>'
        for _, _, label, tip in columns
    )
    rows = []
    for index, name in enumerate(class_names):
        cells = [class_cell(lookups[section].get(name), key) for section, key, _, _ in columns]
        name_cell = (
            f'<th scope="row" data-v="{index}">{_swatch(metrics, index, name, class_names)}</th>'
        )
        rows.append(f"<tr>{name_cell}{''.join(cells)}</tr>")
    groups = _group_header(columns) if grouped else ""
    return (
        f'<table class="metrics sortable-table"><thead>{groups}<tr><th class="sortable" '
        f'title="click to sort">Class</th>{header}</tr></thead><tbody>{"".join(rows)}</tbody>'
        "</table>"
    )


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


def _charts_body(metrics: Mapping[str, Any], class_names: list[str]) -> str:
    dataset, per_image = metrics["dataset"], metrics.get("per_image", {})
    dataset_rows, image_rows = _by_name(dataset), _by_name(per_image)
    iou = [dataset_rows.get(name, {}).get("iou") for name in class_names]
    means = [stat(image_rows.get(name, {}).get("iou"), "mean") for name in class_names]
    stds = [stat(image_rows.get(name, {}).get("iou"), "std") for name in class_names]
    has_spread = any(mean is not None for mean in means)
    bars = figures.class_iou_chart(
        class_names, iou, means if has_spread else None, stds if has_spread else None
    )
    bars_caption = (
        "IoU per class. Bars: pooled over the split. Diamonds: per-image mean ± std, over the "
        "images where the class is present or predicted."
    )
    heat_caption = (
        "Confusion matrix. Rows: ground truth, columns: prediction; each row sums to 1 (grey: no "
        "ground-truth pixel of that class)."
    )
    figures_html = chart_figure(bars, "IoU per class", bars_caption)
    if "confusion_matrix" in dataset:  # a multi-label task has one 2 x 2 matrix per label
        heat = figures.confusion_heatmap(dataset["confusion_matrix"], class_names)
        figures_html += chart_figure(heat, "Confusion matrix", heat_caption)
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
    return chart_figure(png, "ROC and PR", caption)


def _calibration_body(metrics: Mapping[str, Any]) -> str:
    """The reliability diagram before / after the stored calibration and the risk-coverage curve
    (metrics.json's ``calibration`` and ``uncertainty``); empty when neither was measured."""
    calibration, uncertainty = metrics.get("calibration"), metrics.get("uncertainty")
    charts = ""
    if calibration:
        before, after = calibration["before"]["ece"], calibration["after"]["ece"]
        caption = (
            f"Reliability: of the pixels given a probability, the share that is right (the "
            f"dashed diagonal is perfect calibration). Expected calibration error "
            f"{_plain(before)} at T = 1, {_plain(after)} calibrated "
            f"({escaped(after_label(calibration))})."
        )
        png = figures.reliability_before_after(calibration)
        charts += chart_figure(png, "Reliability diagram", caption)
    png = figures.risk_coverage(uncertainty) if uncertainty else None
    if png is not None:
        risk = uncertainty["risk_coverage"]
        caption = (
            f"Risk-coverage: refer the most uncertain pixels (predictive entropy) to a human; "
            f"referring {risk['referred']:.0%} of them removes {risk['errors_removed']:.1%} of "
            f"the errors, against {risk['errors_removed_random']:.0%} at random."
        )
        charts += chart_figure(png, "Risk-coverage curve", caption)
    return f'<div class="grid2">{charts}</div>' if charts else ""


def _plain(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _history_body(history: Sequence[Mapping[str, Any]]) -> str:
    png = figures.training_curves(history)
    caption = "Loss and validation metrics per epoch, from history.csv (gaps: undefined)."
    return chart_figure(png, "Training curves", caption)


def _examples_body(
    best: Sequence[Panel],
    worst: Sequence[Panel],
    ranking_metric: str,
    class_names: list[str],
    uncertain: Sequence[Panel] = (),
) -> str:
    if not best and not worst and not uncertain:
        return '<p class="note">No example images were given.</p>'
    metric = metric_label_inline(ranking_metric)
    multilabel = any(panel.target.ndim == 3 for panel in (*best, *worst, *uncertain))
    # a multi-label picture is black where no label is, else the blend of the labels' colours
    shown = ["no label", *class_names] if multilabel else class_names
    legends = class_legend(shown) + error_legend()
    groups = [
        _panel_group(f"Best {len(best)} by {metric}", best, ranking_metric, class_names),
        _panel_group(f"Worst {len(worst)} by {metric}", worst, ranking_metric, class_names),
        _panel_group(
            f"Most uncertain {len(uncertain)} (mean predictive entropy)",
            uncertain,
            UNCERTAINTY_COLUMN,
            class_names,
        ),
    ]
    return legends + "".join(groups)


def _panel_group(
    heading: str, panels: Sequence[Panel], ranking_metric: str, class_names: list[str]
) -> str:
    if not panels:
        return ""
    examples = "".join(panel_figure(panel, ranking_metric, class_names) for panel in panels)
    return f"<h3>{escaped(heading)}</h3>{examples}"


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
        _multilabel_point() if _is_multilabel(metrics) else _background_point(_is_binary(metrics)),
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


def _multilabel_point() -> str:
    return (
        "<b>Multi-label</b>: labels may overlap, so each label is scored on its own as present "
        "against absent (the rows are labels, not classes), and <b>mean</b> values average the "
        "labels where they are defined. Each label's full binary numbers are in metrics.json "
        "(<code>per_label</code>)."
    )


def _optional_reading_points(metrics: Mapping[str, Any]) -> list[str]:
    points = []
    intervals = metrics.get("confidence_intervals")
    if intervals:
        points.append(
            f"<b>{ci_label(metrics)}</b> intervals (small grey text) come from "
            f"{count(intervals.get('resamples'))} bootstrap resamples of the images: how much the "
            "number could move on another sample of images like these."
        )
    if "threshold_free" in metrics:
        points.append(
            "<b>Threshold-free</b> scores (AUC, AP) use the predicted probabilities, binned into "
            f"{count(metrics['threshold_free'].get('bins'))} bins, not the thresholded masks."
        )
    if "instance" in metrics:
        points.append(
            "<b>Instance</b> scores treat each connected component as one object (components "
            f"smaller than {count(metrics['instance'].get('min_area'))} px are dropped)."
        )
    if "boundary" in metrics:
        points.append(
            "<b>Boundary</b> scores look only at outlines: HD95 and ASSD are distances in pixels "
            "(lower is better); boundary IoU uses a band of "
            f"{escaped(metrics['boundary'].get('boundary_width'))} px."
        )
    return points


# ----------------------------------------------------------------------------- headline parts


def _hero_keys(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    if _is_multilabel(metrics):
        keys = [("dataset", f"mean_{m}") for m in ("iou", "dice", "precision", "recall")]
        keys.append(("threshold_free", "mean_roc_auc"))
    elif _is_binary(metrics):
        keys = [("dataset", f"foreground_{m}") for m in ("iou", "dice", "precision", "recall")]
        keys.append(("threshold_free", "roc_auc"))
    else:
        keys = [
            ("dataset", k)
            for k in ("mean_iou", f"mean_iou{NO_BACKGROUND}", "mean_dice", "pixel_accuracy")
        ]
        keys.append(("threshold_free", "mean_roc_auc"))
    keys += [("instance", "pq"), ("boundary", "hd95")]
    return [(section, key) for section, key in keys if key in metrics.get(section, {})]


def _card(metrics: Mapping[str, Any], section: str, key: str) -> str:
    """One big number; boundary metrics exist per image only, so their mean is the big number."""
    if section == "boundary":
        stats = metrics[section][key]
        big, ci = stat(stats, "mean"), interval(metrics, f"per_image.{key}")
        detail = f"mean over images, std {number(stat(stats, 'std'), key)}"
    else:
        big, ci = metrics[section][key], interval(metrics, f"{section}.{key}")
        per_image = metrics.get("per_image", {}).get(key)
        detail = f"per image {spread_text(per_image, key)}" if per_image else ""
    lines = [
        f'<div class="big">{number(big, key)}</div>',
        f'<div class="label">{metric_label(key)}</div>',
    ]
    lines += [f'<div class="detail">{text}</div>' for text in (detail, ci) if text]
    return f'<div class="card">{"".join(lines)}</div>'


def _headline_rows(metrics: Mapping[str, Any]) -> str:
    dataset, per_image = metrics["dataset"], metrics.get("per_image", {})
    keys = _ordered_headline_keys(dataset, _is_binary(metrics))
    rows = [group_row("Overlap (thresholded masks)")]
    rows += [
        metric_row(metrics, key, dataset.get(key), per_image.get(key), "dataset") for key in keys
    ]
    for section, (heading, section_keys) in _POOLED_SECTIONS.items():
        present = [key for key in section_keys if key in metrics.get(section, {})]
        if present:
            rows.append(group_row(heading))
            rows += [
                metric_row(metrics, key, metrics[section][key], None, section) for key in present
            ]
    boundary = metrics.get("boundary", {})
    present = [key for key in BOUNDARY_METRICS if key in boundary]
    if present:
        rows.append(group_row("Boundary (per image; mean over foreground classes)"))
        rows += [metric_row(metrics, key, None, boundary[key], None) for key in present]
    return "".join(rows)


def _ordered_headline_keys(dataset: Mapping[str, Any], binary: bool) -> list[str]:
    """Foreground metrics first; a binary task's "without background" means only repeat them."""
    scalar = [key for key, value in dataset.items() if not isinstance(value, (list, dict))]
    foreground = [key for key in scalar if key.startswith("foreground_")]
    without = [key for key in scalar if key.endswith(NO_BACKGROUND)]
    rest = [key for key in scalar if key not in foreground and key not in without]
    return foreground + rest + ([] if binary else without)


# ----------------------------------------------------------------------------- input checks


def _check_metrics(metrics: Mapping[str, Any]) -> None:
    dataset = metrics.get("dataset") if isinstance(metrics, Mapping) else None
    if not isinstance(dataset, Mapping):
        raise ValueError(
            "metrics has no 'dataset' section; pass the dict that evaluation writes to "
            "metrics.json (json.load of that file)"
        )
    required = ("per_class",) if _is_multilabel(metrics) else ("per_class", "confusion_matrix")
    for key in required:
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


def _swatch(metrics: Mapping[str, Any], index: int, name: str, class_names: list[str]) -> str:
    """Class ``name``'s colour square; label ``l`` of a multi-label task has class colour
    ``l + 1`` (no background), as its masks are drawn."""
    if _is_multilabel(metrics):
        return swatch_name(index + 1, name, len(class_names) + 1)
    return swatch_name(index, name, len(class_names))


def _is_multilabel(metrics: Mapping[str, Any]) -> bool:
    return metrics.get("task") == "multilabel"


def _by_name(section: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(entry.get("name")): entry for entry in section.get("per_class", [])}
