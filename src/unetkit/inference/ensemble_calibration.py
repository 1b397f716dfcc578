"""The calibration of a ``unetkit cv`` ensemble as a whole, fitted after averaging (pool, then
calibrate), and the check that it still belongs to the members it was fitted on.

Averaging members that were each calibrated on their own validation fold does not give a
calibrated mean: averaging pulls probabilities towards the middle, so a mean of calibrated
members tends to be under-confident (Rahaman & Thiery, NeurIPS 2021, "Uncertainty
Quantification and Deep Ensembles"; Wu & Gales, ICLR 2021, "Should ensemble members be
calibrated?"). On the Pet subset the mean of calibrated folds had a test ECE of 0.034 against
0.013 for the raw mean (``benchmarks/README.md``, issue 15). The fix is one temperature (and
bias, threshold) on the ensemble's mean, fitted on samples none of the members trained or
validated on: ``unetkit cv --calibration-holdout`` sets them aside and writes
``CV/ensemble_calibration.json`` (:mod:`unetkit.training.calibrate_ensemble`).

The file names each member's checkpoint with its SHA-256, so a fold trained again, or a folder
whose checkpoints were swapped, is refused rather than calibrated with another model's numbers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unetkit.inference.calibration import Calibration
from unetkit.inference.ensemble import checkpoint_paths

FILE = "ensemble_calibration.json"


def member_digests(folder: Path, paths: Sequence[Path]) -> list[dict[str, str]]:
    """``[{"checkpoint": path relative to folder, "sha256": hex}]`` of each member, in order."""
    rows = []
    for path in paths:
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        rows.append({"checkpoint": path.relative_to(folder).as_posix(), "sha256": digest})
    return rows


def cv_folder(sources: Sequence[str | Path]) -> Path | None:
    """The ``unetkit cv`` folder when ``sources`` is exactly one folder holding :data:`FILE`."""
    if len(sources) != 1 or not Path(sources[0]).is_dir():
        return None
    folder = Path(sources[0])
    return folder if (folder / FILE).is_file() else None


def read_record(folder: Path) -> dict[str, Any]:
    """The stored record of ``folder`` (its members, the calibration and the fit's figures)."""
    path = folder / FILE
    try:
        record = json.loads(path.read_text())
        Calibration.from_dict(record["calibration"])
        members = [(row["checkpoint"], row["sha256"]) for row in record["members"]]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not an ensemble calibration ({error!r}); rerun the `unetkit cv` command "
            f"that made {folder} to fit it again, or delete the file"
        ) from error
    if not members:
        raise ValueError(f"{path} names no members; rerun the `unetkit cv` command or delete it")
    return record


def pooled_record(sources: Sequence[str | Path]) -> dict[str, Any] | None:
    """The ensemble calibration record of a cv folder given alone, or None (no folder, no file).

    Refused, naming the member, when the folder's checkpoints are not those it was fitted on."""
    folder = cv_folder(sources)
    if folder is None:
        return None
    record = read_record(folder)
    current = member_digests(folder, checkpoint_paths([folder]))
    if current != record["members"]:
        raise ValueError(stale_message(folder, record["members"], current))
    return record


def pooled_calibration(sources: Sequence[str | Path]) -> Calibration | None:
    """The calibration of :func:`pooled_record`, or None."""
    record = pooled_record(sources)
    return None if record is None else Calibration.from_dict(record["calibration"])


def stale_message(folder: Path, stored: list[dict[str, str]], current: list[dict[str, str]]) -> str:
    """Which member differs from what :data:`FILE` was fitted on, and the two ways out."""
    fitted = {row["checkpoint"]: row["sha256"] for row in stored}
    changed = [
        row["checkpoint"] for row in current if fitted.get(row["checkpoint"]) != row["sha256"]
    ]
    missing = sorted(set(fitted) - {row["checkpoint"] for row in current})
    what = ", ".join(
        [f"{name} changed or is new" for name in changed] + [f"{name} is gone" for name in missing]
    )
    return (
        f"{folder / FILE} was fitted on other members than {folder} holds now ({what}); rerun "
        f"the `unetkit cv` command that made the folder to fit it again, or delete the file to "
        f"average the members with their own calibrations"
    )
