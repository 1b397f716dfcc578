"""Per-epoch history: ``history.csv`` and the loss / metric / learning-rate plots drawn from it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from unetkit.evaluation.figures import TRAINING_METRICS


def write_history_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Rewrite the file from ``rows`` (kept in the checkpoint, so a resume never loses one)."""
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_history_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``history.csv`` with numbers as floats (``epoch`` as int), blanks as None."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{key: _number(value) for key, value in row.items()} for row in rows]


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def plot_history(rows: list[dict[str, Any]], plots_dir: Path) -> list[Path]:
    """Draw ``loss.png``, ``metrics.png`` and ``lr.png`` in ``plots_dir``; return their paths."""
    if not rows:
        return []
    plots_dir.mkdir(parents=True, exist_ok=True)
    epochs = [row["epoch"] for row in rows]
    metric_keys = [key for key in TRAINING_METRICS if rows[-1].get(key) is not None]
    figures = {
        "loss.png": (["train_loss", "val_loss"], "loss"),
        "metrics.png": (metric_keys, "validation metric"),
        "lr.png": (["lr"], "learning rate"),
    }
    written = []
    for filename, (keys, ylabel) in figures.items():
        fig = Figure(figsize=(6, 4), dpi=100)
        ax = fig.subplots()
        for key in keys:
            values = [row.get(key) for row in rows]
            ax.plot(
                epochs, [float("nan") if v is None else v for v in values], marker="o", label=key
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if filename == "metrics.png":
            ax.set_ylim(0, 1)
        ax.legend()
        fig.tight_layout()
        fig.savefig(plots_dir / filename)
        written.append(plots_dir / filename)
    return written
