"""The report's ensemble section: how many members, each one's score and calibration beside the
ensemble's, and the ensemble's difference from its best member (``metrics.json``'s ``ensemble``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unetkit.evaluation.report_html import escaped, metric_label, metric_label_inline, number


def ensemble_body(metrics: Mapping[str, Any]) -> str:
    """The section's HTML; empty for one model."""
    section = metrics.get("ensemble")
    if not section:
        return ""
    comparison = section["versus_best_member"]
    key = comparison["metric"]
    rows = "".join(
        _row(_member_name(m["checkpoint"]), m["dataset"].get(key), m["per_image"].get(key),
             m["calibration"]["ece_before"], m["calibration"]["ece_after"],
             bold=i == section["best_member"])
        for i, m in enumerate(section["members"])
    )  # fmt: skip
    calibration = metrics.get("calibration") or {}
    ensemble = _row(
        f"ensemble of {len(section['members'])}",
        metrics["dataset"].get(key),
        (metrics["per_image"].get(key) or {}).get("mean"),
        (calibration.get("before") or {}).get("ece"),
        (calibration.get("after") or {}).get("ece"),
        bold=True,
    )
    table = (
        f'<table class="metrics"><thead><tr><th>Model</th><th>{metric_label(key)} (pooled)</th>'
        f"<th>{metric_label(key)} (per-image mean)</th><th>ECE at T = 1</th>"
        f"<th>ECE calibrated</th></tr></thead><tbody>{rows}{ensemble}</tbody></table>"
    )
    return table + f'<p class="note">{_verdict(comparison)}</p>'


def _row(name: str, *values: Any, bold: bool = False) -> str:
    cells = "".join(f"<td>{number(value, 'score')}</td>" for value in values)
    label = f"<strong>{escaped(name)}</strong>" if bold else escaped(name)
    return f"<tr><td>{label}</td>{cells}</tr>"


def _verdict(comparison: Mapping[str, Any]) -> str:
    bounds, level = comparison["interval"], round(100 * comparison["level"])
    spread = "undefined" if bounds is None else f"{bounds[0]:+.4f} to {bounds[1]:+.4f}"
    share = comparison["share_above_zero"]
    return (
        f"The ensemble minus its best member (in bold), pooled "
        f"{metric_label_inline(comparison['metric'])}: {comparison['difference']:+.4f}; "
        f"{level}% paired bootstrap interval over images {spread} "
        f"({comparison['resamples']} resamples, the ensemble better in "
        f"{'–' if share is None else f'{share:.0%}'} of them). The best member is picked on "
        f"this split, which flatters it."
    )


def _member_name(checkpoint: str) -> str:
    """``fold_2/checkpoints/best.pt`` reads as ``fold_2``; other files by their last parts."""
    path = Path(checkpoint)
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name} ({path.name})"
    return str(Path(*path.parts[-2:]))
