"""Several trained models as one: their class probabilities averaged (nnU-Net's fold ensemble).

The ensemble is an ``nn.Module`` that returns *logits* whose probabilities are exactly the
members' mean, so every path that takes one model (the Segmenter, evaluation, ONNX export and its
parity check, serve) takes an ensemble unchanged, and an exported ensemble is one graph. The logits
are computed in log space (log-sum-exp of the members' log-probabilities), never as ``log(p)`` of a
rounded mean, so they stay finite and exact where a member is certain. An ensemble calibrated as
a whole (:mod:`unetkit.inference.ensemble_calibration`) maps those logits once more, in the
graph too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from unetkit.checkpoint import LoadedModel, load_checkpoint, model_from_checkpoint
from unetkit.inference.calibration import Calibration
from unetkit.inference.options import RECORD_KEY
from unetkit.inference.tta import FLIPS, Flips, checked_flips
from unetkit.tasks import Task

FOLD_CHECKPOINT = "checkpoints/best.pt"  # inside each fold_<k> folder of `unetkit cv`


class ProbabilityAverage(nn.Module):
    """Logits of the mean of the members' probabilities (all members share ``task``), under
    ``calibration`` when the ensemble was calibrated as a whole."""

    def __init__(
        self, members: Sequence[nn.Module], task: Task, calibration: Calibration | None = None
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.task = task
        mapped = calibration is not None and calibration.maps_logits
        self.calibration = calibration if mapped else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = average_logits(self.member_logits(images), self.task)
        return logits if self.calibration is None else self.calibration.apply(logits)

    def mean_probabilities(self, member_probs: torch.Tensor) -> torch.Tensor:
        """The ensemble's probabilities from its members' ``(M, ...)``: their mean, under the
        ensemble's calibration if it has one."""
        mean = member_probs.mean(dim=0)
        if self.calibration is None:
            return mean
        return self.calibration.apply_to_probabilities(mean[None], self.task)[0]

    @property
    def size_multiple(self) -> int | None:
        """The largest size multiple a member pads to (what an export checks sides against)."""
        multiples = [getattr(member, "size_multiple", None) for member in self.members]
        known = [multiple for multiple in multiples if multiple]
        return max(known) if known else None

    def member_logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(members, N, out_channels, H, W)``: each member's logits (for their disagreement)."""
        return torch.stack([member(images).float() for member in self.members])


def average_logits(member_logits: torch.Tensor, task: Task) -> torch.Tensor:
    """Logits ``(N, out_channels, H, W)`` whose :meth:`Task.probabilities` are the mean of the
    members' probabilities, from their logits ``(members, N, out_channels, H, W)``.

    Sigmoid channels: log(sum of p) - log(sum of 1 - p); softmax: log of the summed
    probabilities (softmax ignores the constant log(members) both leave out).
    """
    if task.is_binary or getattr(task, "is_multilabel", False):
        positive = torch.logsumexp(log_sigmoid(member_logits), dim=0)
        return positive - torch.logsumexp(log_sigmoid(-member_logits), dim=0)
    return torch.logsumexp(torch.log_softmax(member_logits, dim=2), dim=0)


def log_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """``log(sigmoid(x))`` from ops that export exactly: ONNX's ``Sigmoid`` (what
    ``F.logsigmoid`` becomes) is accurate in absolute terms only, so ``log`` of its tail was
    off by 3e-3 at x = -13 in ONNX Runtime."""
    return logits.clamp(max=0.0) - torch.log1p(torch.exp(-logits.abs()))


def checkpoint_paths(sources: Sequence[str | Path]) -> list[Path]:
    """The checkpoint files named by ``sources``: files as given, and for a folder of
    ``unetkit cv`` every ``fold_*/checkpoints/best.pt`` in fold order."""
    if not sources:
        raise FileNotFoundError(
            "no checkpoint given: pass --checkpoint FILE [FILE ...] or a cv folder"
        )
    paths: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            folds = sorted(source.glob(f"fold_*/{FOLD_CHECKPOINT}"), key=_fold_number)
            if not folds:
                runs = (source / "checkpoints" / "best.pt", source / "best.pt")
                hint = next((f"; did you mean {p}?" for p in runs if p.is_file()), "")
                raise FileNotFoundError(
                    f"{source} is a folder without fold_*/{FOLD_CHECKPOINT}; pass checkpoint "
                    f"files, or the output folder of `unetkit cv`{hint}"
                )
            paths += folds
        elif source.is_file():
            paths.append(source)
        else:
            raise FileNotFoundError(f"checkpoint {source} does not exist")
    return paths


def _fold_number(path: Path) -> int:
    suffix = path.parents[1].name.removeprefix("fold_")
    return int(suffix) if suffix.isdigit() else 0


def load_ensemble(
    sources: Sequence[str | Path],
    weights: str = "model",
    prepare: Callable[[LoadedModel], LoadedModel] | None = None,
    calibration: Calibration | None = None,
    tta: bool | None = None,
) -> LoadedModel:
    """One model from several checkpoints (a single one is returned as it is), its mean under
    ``calibration`` (one fitted on the ensemble as a whole) when given, with TTA as ``tta``
    says (the ensemble calibration's check) or else as :func:`ensemble_record` decides.

    Members must share the task, classes and preprocessing; a difference is refused, naming both
    files. The result's checkpoint is the first member's with ``ensemble.members`` (their paths)
    added, so exports and reports can say what they hold. ``prepare`` (if given) turns each
    member, as loaded, into the one averaged, e.g. with its own temperature applied
    (:mod:`unetkit.inference.calibrated`).
    """
    paths = checkpoint_paths(sources)
    prepare = prepare or (lambda member: member)
    if len(paths) == 1:
        return prepare(model_from_checkpoint(paths[0], weights))
    members = [prepare(model_from_checkpoint(load_checkpoint(path), weights)) for path in paths]
    for path, member in zip(paths[1:], members[1:], strict=True):
        _require_compatible(paths[0], members[0], path, member)
    first = members[0]
    model = ProbabilityAverage([m.model for m in members], first.task, calibration).eval()
    checkpoint = {**first.checkpoint, "ensemble": {"members": [str(p) for p in paths]}}
    records = [member.checkpoint for member in members]
    if tta is not None or any(record.get(RECORD_KEY) for record in records):
        checkpoint[RECORD_KEY] = ensemble_record(records, tta)
    return LoadedModel(model, first.task, first.class_names, first.preprocessing, checkpoint)


def ensemble_record(records: Sequence[dict], tta: bool | None = None) -> dict:
    """The inference record an ensemble runs: the first member's, with the flips every member
    trained on (TTA asks no member about a flip it never saw), and TTA as ``tta`` says (the
    ensemble's own check) or else where more than half the members run it. Each member's TTA
    check measured it on its own val, so the majority is their pooled evidence whatever the
    order of the members; a tie goes to the single pass, as in the check
    (:mod:`unetkit.training.tta_check`)."""
    if tta is None:
        votes = sum(bool((record.get(RECORD_KEY) or {}).get("tta")) for record in records)
        tta = 2 * votes > len(records)
    flips = common_flips(records)
    first = records[0].get(RECORD_KEY) or {}
    return {**first, "tta": tta, "tta_flips": [list(f) for f in flips]}


def common_flips(records: Sequence[dict]) -> Flips:
    """The TTA flips every record's inference config names (all four where one names none)."""
    named = [set(checked_flips((r.get(RECORD_KEY) or {}).get("tta_flips", FLIPS))) for r in records]
    return tuple(view for view in FLIPS if all(view in flips for flips in named))


def _require_compatible(
    first_path: Path, first: LoadedModel, path: Path, member: LoadedModel
) -> None:
    for field in ("task", "class_names", "preprocessing"):
        expected, found = getattr(first, field), getattr(member, field)
        if expected != found:
            raise ValueError(
                f"ensemble members disagree on {field}: {first_path} has {expected}, {path} has "
                f"{found}; ensemble only models trained for the same task on the same input"
            )


def member_count(loaded: LoadedModel) -> int:
    """How many models ``loaded`` averages (1 for a single checkpoint)."""
    return len(loaded.checkpoint.get("ensemble", {}).get("members", [])) or 1
