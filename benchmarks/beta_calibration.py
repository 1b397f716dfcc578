"""Would a three-parameter calibration map reach half the ECE where temperature and bias do not?

    python benchmarks/beta_calibration.py --no-tta runs/cv-pet10/pet/fold_0 [RUN ...]

The stored calibration of a binary task is ``sigmoid(z / T + b)``: one slope for the whole logit
axis. Beta calibration (Kull, Silva Filho & Flach, AISTATS 2017) gives the two sides their own
slopes, ``sigmoid(a * log p - c * log(1 - p) + d)`` with ``p = sigmoid(z)``, i.e. logits
``c * softplus(z) - a * softplus(-z) + d``; with ``a = c = 1 / T`` it is the stored map. Its
likelihood is convex in ``(a, c, d)`` (a logistic regression on two features of ``z``).

For each finished binary run (one view, so ``--no-tta``): the validation split is sampled as the
end of training samples it, the map is fitted there by maximum likelihood, and the test ECE and
NLL of the Segmenter's probabilities under it are printed beside the raw ones and those under the
stored fit for temperature and bias, refitted on the same sample. Not wired into the product:
this measures whether it is worth it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn.functional import softplus
from view_calibration import raw_run, scores_on_test

from unetkit.inference.calibration import Calibration
from unetkit.inference.segmenter import Segmenter
from unetkit.inference.view_calibration import ViewSample, fit_for_views
from unetkit.training.calibrate import flip_views, sample_views


class BetaMapped(nn.Module):
    """A binary model whose single logit channel goes through the beta map ``(a, c, d)``."""

    def __init__(self, model: nn.Module, a: float, c: float, d: float) -> None:
        super().__init__()
        self.model, self.a, self.c, self.d = model, a, c, d

    @property
    def size_multiple(self) -> int | None:
        return getattr(self.model, "size_multiple", None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.model(images)
        return self.c * softplus(z) - self.a * softplus(-z) + self.d


def fit_beta(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float, float]:
    """``(a, c, d)`` maximising the likelihood of binary ``targets`` given logits ``(P,)``."""
    z, y = logits.double(), targets.double()
    features = torch.stack([-softplus(-z), softplus(z), torch.ones_like(z)], dim=1)
    weights = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(features @ weights, y)
        loss.backward()
        return loss

    optimiser.step(closure)
    a, c, d = weights.detach().tolist()
    return a, c, d


def beta_segmenter(raw: Segmenter, a: float, c: float, d: float) -> Segmenter:
    """``raw`` with the beta map on its model's logits, everything else as it was."""
    return Segmenter(BetaMapped(raw.model, a, c, d).eval(), raw.task, raw.class_names,
                     raw.preprocessing, raw.device, raw.batch_size, mode=raw.mode,
                     window_size=raw.window_size, overlap=raw.overlap, tta=raw.tta,
                     precision=raw.asked_execution[0],
                     channels_last=raw.asked_execution[1])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-tta", action="store_true", help="required: the map is for one view")
    args = parser.parse_args()
    if not args.no_tta:
        raise SystemExit("pass --no-tta: the beta map here is fitted for one view")
    torch.manual_seed(0)
    print("| run | raw test ECE | T+bias: map, ECE (after/before), NLL | beta: a, c, d, ECE "
          "(after/before), NLL |")  # fmt: skip
    print("| --- | --- | --- | --- |")
    for run_dir in args.runs:
        raw, splits = raw_run(run_dir, args.batch_size, tta=False)
        if not raw.task.is_binary:
            raise SystemExit(f"{run_dir}: not a binary task")
        sample = ViewSample(raw.task)
        sample_views(flip_views(raw), splits.val, sample)
        logits, targets = sample.logits, sample.targets
        platt = fit_for_views(logits, targets, raw.task)
        a, c, d = fit_beta(logits[:, 0, 0], targets)
        raw_ece, _ = scores_on_test(raw, Calibration(), splits.test)
        ece_p, nll_p = scores_on_test(raw, platt, splits.test)
        ece_b, nll_b = scores_on_test(beta_segmenter(raw, a, c, d), Calibration(), splits.test)
        print(f"| {run_dir} | {raw_ece:.4f} | {platt.describe()}, {ece_p:.4f} "
              f"({ece_p / raw_ece:.2f}), {nll_p:.4f} | {a:.2f}, {c:.2f}, {d:+.2f}, {ece_b:.4f} "
              f"({ece_b / raw_ece:.2f}), {nll_b:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
