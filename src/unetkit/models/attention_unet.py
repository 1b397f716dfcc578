"""Attention U-Net (Oktay et al. 2018): the U-Net whose skips pass through additive attention gates.

Each gate weighs the skip ``x`` (level l) pixel by pixel with a coefficient computed from ``x`` and
the gating signal ``g``, the decoder features one level coarser (the bottleneck for the deepest
gate), before those are upsampled. As in the paper's grid attention, ``x`` is brought to ``g``'s
grid by a 2x2 stride-2 conv: ``alpha = sigmoid(psi(relu(W_x x + W_g g)))`` at the coarse grid,
bilinearly upsampled to ``x``'s size; the gated skip ``alpha * x`` goes through a 1x1 conv + norm.
Everything else (options, widths, deep supervision) is :class:`~unetkit.models.unet.UNet`'s.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unetkit.models.blocks import make_norm
from unetkit.models.registry import register_model
from unetkit.models.unet import UNet


class AttentionGate(nn.Module):
    """Additive attention gate for a skip of ``skip_channels`` and a coarser gating signal."""

    def __init__(self, skip_channels: int, gating_channels: int, norm: str = "batch") -> None:
        super().__init__()
        inter = max(1, skip_channels // 2)  # Oktay et al.'s intermediate width
        self.theta_x = nn.Conv2d(skip_channels, inter, kernel_size=2, stride=2, bias=False)
        self.phi_g = nn.Conv2d(gating_channels, inter, kernel_size=1)
        self.psi = nn.Conv2d(inter, 1, kernel_size=1)
        self.output = nn.Sequential(
            nn.Conv2d(skip_channels, skip_channels, kernel_size=1), make_norm(norm, skip_channels)
        )

    def coefficients(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        """Attention coefficients in (0, 1), one per pixel of ``skip``: ``(N, 1, H, W)``."""
        coarse = torch.sigmoid(self.psi(F.relu(self.theta_x(skip) + self.phi_g(gating))))
        return F.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return self.output(skip * self.coefficients(skip, gating))


@register_model(
    "attention-unet", "U-Net with additive attention gates on the skips (Oktay et al. 2018)"
)
class AttentionUNet(UNet):
    """U-Net with additive attention gates on every skip (Oktay et al. 2018); UNet's options."""

    def __init__(self, in_channels: int, out_channels: int, **options: Any) -> None:
        super().__init__(in_channels, out_channels, **options)
        deep_first = self.widths[::-1]  # gate ``level`` gets skip deep_first[level + 1]
        self.gates = nn.ModuleList(
            AttentionGate(skip, gating, self.norm)
            for gating, skip in zip(deep_first[:-1], deep_first[1:], strict=True)
        )

    def gate_skip(self, level: int, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return self.gates[level](skip, gating)


AttentionUNet.__signature__ = inspect.signature(UNet)  # the registry checks options against it
