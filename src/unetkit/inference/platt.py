"""Temperature with a bias: the maximum-likelihood ``beta`` (= ``1 / T``) and biases ``b`` of
``sigmoid(beta * z + b[group])`` for binary pixels, each group (a sigmoid channel: the one of a
binary task, each label of a multi-label task) with its own bias and all sharing ``beta``.

This is Platt scaling (Platt, 1999) applied to a network's logit. A temperature alone can only
sharpen or soften the probabilities around 0.5; when the model's errors lean one way (the
foreground share of pixels it calls 0.9 is 0.8, but of those it calls 0.1 it is 0.1), no single
``T`` fixes both ends, and a bias does. The negative log-likelihood is convex in ``(beta, b)``,
so Newton's method with a halving line search finds its minimum in a few steps. A group whose
pixels are all foreground or all background has no finite best bias: it keeps ``b = 0`` and its
pixels sit out the fit of ``beta`` (unless no group has both kinds, when ``beta`` is fitted on
all pixels and every bias stays 0).
"""

from __future__ import annotations

import torch

_STEPS = 100  # Newton steps at most; a few suffice unless the pixels are separable
_TOLERANCE = 1e-12  # stop when the Newton decrement (predicted NLL decrease) falls below this


def fit_scale_and_biases(
    logits: torch.Tensor,
    targets: torch.Tensor,
    groups: torch.Tensor,
    group_count: int,
    scale_bounds: tuple[float, float],
) -> tuple[float, list[float]]:
    """``beta`` within ``scale_bounds`` and one bias per group minimising the mean binary NLL.

    ``logits``, ``targets`` (0/1) and ``groups`` (ints in ``[0, group_count)``) are one value per
    pixel. Where the unconstrained ``beta`` falls outside the bounds (separable pixels push it to
    infinity), ``beta`` is held at the nearest bound and only the biases are refitted.
    """
    z, y = logits.double().reshape(-1), targets.double().reshape(-1)
    groups = groups.long().reshape(-1)
    if not len(z) == len(y) == len(groups) or len(z) == 0:
        raise ValueError(
            f"Platt fitting takes one logit, target and group per pixel, at least one; got "
            f"{len(z)}, {len(y)} and {len(groups)}"
        )
    counts = torch.bincount(groups, minlength=group_count).double()
    positives = torch.bincount(groups, weights=y, minlength=group_count)
    fittable = (positives > 0) & (positives < counts)
    if bool(fittable.any()):  # a group with one kind of pixel would only drag beta
        kept = fittable[groups]
        z, y, groups = z[kept], y[kept], groups[kept]
    free = torch.cat([torch.ones(1, dtype=torch.bool), fittable])
    theta = torch.zeros(group_count + 1, dtype=torch.float64)
    theta[0] = 1.0
    theta = _newton(theta, free, z, y, groups)
    low, high = scale_bounds
    if not low <= theta[0] <= high:
        theta[0] = min(max(float(theta[0]), low), high)
        free[0] = False
        theta = _newton(theta, free, z, y, groups)
    return float(theta[0]), [float(b) for b in theta[1:]]


def _newton(
    theta: torch.Tensor, free: torch.Tensor, z: torch.Tensor, y: torch.Tensor, groups: torch.Tensor
) -> torch.Tensor:
    """Newton steps on the free entries of ``theta`` until the decrement is negligible."""
    theta = theta.clone()
    for _ in range(_STEPS):
        if not bool(free.any()):
            break
        value, gradient, hessian = _derivatives(theta, z, y, groups)
        g, h = gradient[free], hessian[free][:, free]
        step = torch.linalg.lstsq(h, g[:, None]).solution[:, 0]
        if float(g @ step) < _TOLERANCE:
            break
        size = 1.0
        while size > 1e-8:
            candidate = theta.clone()
            candidate[free] -= size * step
            if _nll(candidate, z, y, groups) <= value:
                break
            size /= 2
        else:
            break  # no step lowers the NLL: at the minimum up to rounding
        theta = candidate
    return theta


def _nll(theta: torch.Tensor, z: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> float:
    u = theta[0] * z + theta[1:][groups]
    return float((torch.nn.functional.softplus(u) - y * u).mean())


def _derivatives(
    theta: torch.Tensor, z: torch.Tensor, y: torch.Tensor, groups: torch.Tensor
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The mean NLL, its gradient and Hessian in ``(beta, b_0, ..., b_{G-1})``."""
    n, count = len(z), len(theta) - 1
    u = theta[0] * z + theta[1:][groups]
    p = torch.sigmoid(u)
    residual, weight = p - y, p * (1 - p)
    gradient = torch.cat([(residual * z).sum()[None], torch.bincount(groups, residual, count)]) / n
    hessian = torch.zeros((count + 1, count + 1), dtype=torch.float64)
    hessian[0, 0] = (weight * z * z).sum() / n
    hessian[0, 1:] = hessian[1:, 0] = torch.bincount(groups, weight * z, count) / n
    hessian[1:, 1:] = torch.diag(torch.bincount(groups, weight, count) / n)
    return _nll(theta, z, y, groups), gradient, hessian
