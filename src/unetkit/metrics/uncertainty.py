"""Where the model is unsure, and whether that is where it errs: entropy, mutual information and
risk-coverage.

* :func:`predictive_entropy`: per pixel ``-sum_c p_c log p_c / log C`` of the class probabilities,
  0 for a one-hot prediction and 1 for a uniform one (``C`` = the classes, 2 for binary).
* :func:`mutual_information`: for an ensemble, the entropy of the members' mean minus the mean of
  their entropies (the BALD score), normalised the same way: 0 where the members agree, large
  where each is sure but they disagree (uncertainty about the model rather than the pixel).
* :func:`image_uncertainty`: an image's score, the mean of a map over its valid pixels.
* :class:`RiskCoverage`: refer the most uncertain share ``x`` of pixels to a human; what share of
  the model's errors goes with them? At random, ``x`` of them (in expectation); a useful
  uncertainty removes more. Histograms of the uncertainty of all pixels and of the wrong ones
  (``2 x bins`` integers, adding up across images and processes) give the curve; pixels in one bin
  are taken to be referred in proportion, so with distinct values in distinct bins it is exact.

Every map function takes NumPy arrays or tensors (the class axis third from last: ``(C, H, W)``
or ``(N, C, H, W)``; members first for an ensemble) and returns the same kind.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from unetkit.metrics.confusion import as_tensor
from unetkit.tasks import IGNORE_INDEX

DEFAULT_REFERRED = 0.1  # the share of pixels referred that the headline number is read at


def predictive_entropy(probs: Any) -> Any:
    """Normalised entropy in [0, 1] of ``probs`` ``(C, H, W)`` or ``(N, C, H, W)``: ``(H, W)`` or
    ``(N, H, W)``. ``probs`` are :meth:`Task.probabilities` (two channels for binary)."""
    values = _probabilities(probs, "predictive_entropy")
    return _like(_entropy(values), probs)


def mutual_information(member_probs: Any) -> Any:
    """Normalised mutual information between ensemble members, from their probabilities stacked
    on a first axis: ``(M, C, H, W)`` -> ``(H, W)``, ``(M, N, C, H, W)`` -> ``(N, H, W)``."""
    values = _probabilities(member_probs, "mutual_information")
    if values.ndim < 4:
        raise ValueError(
            f"mutual_information takes member probabilities stacked first, (M, C, H, W) or "
            f"(M, N, C, H, W); got shape {tuple(values.shape)}"
        )
    information = _entropy(values.mean(dim=0)) - _entropy(values).mean(dim=0)
    return _like(information.clamp_(min=0.0), member_probs)


def image_uncertainty(uncertainty: Any, target: Any = None, valid: Any = None) -> float | None:
    """The mean of an ``(H, W)`` uncertainty map over the pixels that count: ``valid`` (default
    all) and, with a ``target``, not 255. ``None`` when no pixel counts."""
    values = as_tensor(uncertainty).double()
    counted = _counted(values, target, valid)
    if not bool(counted.any()):
        return None
    return float(values[counted].mean())


def uncertainty_image(uncertainty: Any, colour_map: str = "magma") -> np.ndarray:
    """An ``(H, W)`` map in [0, 1] as an RGB ``uint8`` image ``(H, W, 3)``, bright = unsure."""
    from matplotlib import colormaps  # the metrics core itself needs no plotting library

    values = np.clip(np.asarray(as_tensor(uncertainty).float().cpu()), 0.0, 1.0)
    return (colormaps[colour_map](values)[..., :3] * 255).round().astype(np.uint8)


class RiskCoverage:
    """Histograms of per-pixel uncertainty over all counted pixels and over the wrong ones."""

    def __init__(self, bins: int = 1000, device: Any = None) -> None:
        if bins < 1:
            raise ValueError(f"bins must be a positive number of histogram bins; got {bins}")
        self.bins = bins
        self.counts = torch.zeros((2, bins), dtype=torch.int64, device=device)  # all, wrong

    @classmethod
    def from_counts(cls, counts: torch.Tensor | np.ndarray) -> RiskCoverage:
        """Rebuild from a ``(2, bins)`` count tensor (:attr:`state`), e.g. one all-reduced."""
        counts = torch.as_tensor(counts)
        if counts.ndim != 2 or counts.shape[0] != 2 or counts.dtype.is_floating_point:
            raise ValueError(
                f"risk-coverage counts are integers of shape (2, bins); got {counts.dtype} "
                f"{tuple(counts.shape)}"
            )
        risk = cls(counts.shape[1], device=counts.device)
        risk.counts = counts.to(torch.int64).clone()
        return risk

    @property
    def state(self) -> torch.Tensor:
        """The count tensor itself (not a copy), for in-place all-reduce."""
        return self.counts

    def update(self, uncertainty: Any, prediction: Any, target: Any, valid: Any = None) -> None:
        """Count one image or batch: ``uncertainty`` in [0, 1], ``prediction`` and ``target`` class
        ids, all the same shape; pixels whose target is 255 or ``valid`` False are not counted."""
        device = self.counts.device
        values = as_tensor(uncertainty, device=device).double()
        prediction, target = as_tensor(prediction, device=device), as_tensor(target, device=device)
        if not values.shape == prediction.shape == target.shape:
            raise ValueError(
                f"risk-coverage update: uncertainty, prediction and target must have one shape; "
                f"got {tuple(values.shape)}, {tuple(prediction.shape)}, {tuple(target.shape)}"
            )
        counted = _counted(values, target, valid)
        values, wrong = values[counted], (prediction != target)[counted]
        if bool(((values < 0) | (values > 1) | values.isnan()).any()):
            raise ValueError(
                f"risk-coverage update: uncertainty must lie in [0, 1]; got values from "
                f"{float(values.min())} to {float(values.max())}; pass the normalised "
                f"predictive_entropy or mutual_information"
            )
        bin_index = (values * self.bins).floor_().long().clamp_(max=self.bins - 1)
        self.counts[0] += torch.bincount(bin_index, minlength=self.bins)
        self.counts[1] += torch.bincount(bin_index[wrong], minlength=self.bins)

    def merge(self, other: RiskCoverage) -> RiskCoverage:
        """Add ``other``'s counts into these (in place) and return self."""
        if not isinstance(other, RiskCoverage) or other.bins != self.bins:
            raise ValueError(
                f"can only merge risk-coverage counts of {self.bins} bins; got {other!r}"
            )
        self.counts += other.counts.to(self.counts.device)
        return self

    def errors_removed(self, referred: Any) -> Any:
        """The share of the errors among the most uncertain ``referred`` share of pixels (a float
        or an array of them in [0, 1]); ``None`` when there is no error to remove."""
        curve = self._cumulative()
        if curve is None:
            return None
        shares = np.asarray(referred, dtype=np.float64)
        if bool(((shares < 0) | (shares > 1)).any()):
            raise ValueError(f"referred shares lie in [0, 1]; got {referred}")
        removed = np.interp(shares, *curve)
        return float(removed) if removed.ndim == 0 else removed

    def result(self, referred: float = DEFAULT_REFERRED, points: int = 101) -> dict[str, Any]:
        """The JSON-ready summary: totals, the values at ``referred`` (model and random) and the
        curve at ``points`` evenly spaced shares (``remaining_error_rate``: the error rate of the
        pixels kept, ``None`` once all are referred)."""
        pixels, errors = (int(n) for n in self.counts.sum(dim=1).cpu())
        grid = np.linspace(0.0, 1.0, points)
        removed = self.errors_removed(grid)
        summary: dict[str, Any] = {
            "bins": self.bins,
            "pixels": pixels,
            "errors": errors,
            "error_rate": errors / pixels if pixels else None,
            "referred": referred,
            "errors_removed": self.errors_removed(referred),
            "errors_removed_random": referred if errors else None,
        }
        summary["curve"] = {
            "referred": grid.tolist(),
            "errors_removed": None if removed is None else removed.tolist(),
            "remaining_error_rate": None
            if removed is None
            else [
                errors * (1 - r) / (pixels * (1 - x)) if x < 1 else None
                for x, r in zip(grid, removed, strict=True)
            ],
        }
        return summary

    def __repr__(self) -> str:
        pixels, errors = (int(n) for n in self.counts.sum(dim=1).cpu())
        return f"RiskCoverage(bins={self.bins}, pixels={pixels}, errors={errors})"

    def _cumulative(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Referred share of pixels and of errors after each non-empty bin, most uncertain first."""
        everything, wrong = self.counts.cpu().numpy()[:, ::-1].astype(np.float64)
        if wrong.sum() == 0:
            return None
        filled = everything > 0
        pixels = np.concatenate([[0.0], np.cumsum(everything)[filled] / everything.sum()])
        errors = np.concatenate([[0.0], np.cumsum(wrong)[filled] / wrong.sum()])
        return pixels, errors


def risk_coverage_plot(result: Mapping[str, Any], label: str = "predictive entropy") -> bytes:
    """PNG of :meth:`RiskCoverage.result` (as stored in metrics.json): the share of errors removed
    against the share of pixels referred, most uncertain first, beside referring at random."""
    from matplotlib.figure import Figure  # the metrics core itself needs no plotting library

    curve = result.get("curve", {})
    if curve.get("errors_removed") is None:
        raise ValueError(
            "this risk-coverage result has no curve (no error was counted): nothing to plot"
        )
    fig = Figure(figsize=(5.2, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="referred at random")
    ax.plot(curve["referred"], curve["errors_removed"], color="tab:blue", label=label)
    referred, removed = result["referred"], result["errors_removed"]
    ax.axvline(referred, color="0.4", linewidth=0.8, linestyle=":")
    ax.plot([referred], [removed], marker="o", color="tab:blue")
    ax.annotate(
        f"{referred:.0%} referred: {removed:.0%} of errors (random {referred:.0%})",
        (referred, removed),
        xytext=(8, -14),
        textcoords="offset points",
        fontsize=8,
    )
    ax.set_xlabel("share of pixels referred (most uncertain first)")
    ax.set_ylabel("share of errors removed")
    ax.set_title("Risk-coverage", fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _probabilities(probs: Any, where: str) -> torch.Tensor:
    values = as_tensor(probs)
    if values.ndim < 3 or values.shape[-3] < 2:
        raise ValueError(
            f"{where} takes class probabilities with the class axis third from last, e.g. "
            f"(C, H, W), C >= 2 (Task.probabilities gives two channels for binary); got shape "
            f"{tuple(values.shape)}"
        )
    if not values.dtype.is_floating_point:
        raise ValueError(f"{where} takes probabilities as floats; got dtype {values.dtype}")
    return values.double()


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy over the class axis (third from last), 0 log 0 = 0, divided by log C."""
    terms = torch.special.xlogy(probs, probs)
    return (-terms.sum(dim=-3) / math.log(probs.shape[-3])).clamp_(0.0, 1.0)


def _counted(values: torch.Tensor, target: Any, valid: Any) -> torch.Tensor:
    """The pixels that count: ``valid`` (default all) and, where a target is given, not 255."""
    counted = torch.ones_like(values, dtype=torch.bool)
    if valid is not None:
        counted &= as_tensor(valid, device=values.device).bool()
    if target is not None:
        counted &= as_tensor(target, device=values.device) != IGNORE_INDEX
    return counted


def _like(result: torch.Tensor, given: Any) -> Any:
    """``result`` as float32 in the kind of ``given``: NumPy for NumPy, a tensor for a tensor."""
    if isinstance(given, torch.Tensor):
        return result.float()
    return result.float().cpu().numpy()
