"""Building blocks shared by the architectures: norms, activations, conv blocks, SE, init."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

NORMS = ("batch", "group", "instance", "none")
ACTIVATIONS = ("relu", "silu", "leaky_relu", "gelu")


def check_choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    """Reject an option value that is not one of ``choices``, listing them."""
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(choices)}; got {value!r}")


def group_count(channels: int, max_groups: int = 8) -> int:
    """Largest number of groups <= ``max_groups`` that divides ``channels`` (8 for 64, 6 for 12)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def make_norm(kind: str, channels: int) -> nn.Module:
    """A normalisation layer for ``channels`` feature maps: batch, group, instance or none."""
    check_choice("norm", kind, NORMS)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def make_activation(kind: str, leaky_slope: float = 0.01) -> nn.Module:
    """An activation layer: relu, silu, leaky_relu (with ``leaky_slope``) or gelu."""
    check_choice("activation", kind, ACTIVATIONS)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "silu":
        return nn.SiLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(leaky_slope, inplace=True)
    return nn.GELU()


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    norm: str = "batch",
    activation: str = "relu",
    leaky_slope: float = 0.01,
    stride: int = 1,
) -> nn.Sequential:
    """3x3 conv, norm, activation. The conv has a bias only without a norm (a norm cancels it)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=norm == "none"),
        make_norm(norm, out_channels),
        make_activation(activation, leaky_slope),
    )


class ConvBlock(nn.Sequential):
    """Two :func:`conv_norm_act` layers, with optional ``Dropout2d`` between them."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str = "batch",
        activation: str = "relu",
        dropout: float = 0.0,
        leaky_slope: float = 0.01,
    ) -> None:
        layers = [conv_norm_act(in_channels, out_channels, norm, activation, leaky_slope)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers.append(conv_norm_act(out_channels, out_channels, norm, activation, leaky_slope))
        super().__init__(*layers)


def squeeze_excitation(channels: int, reduction: int = 16) -> SqueezeExcitation:
    """Channel attention (Hu et al. 2018) from torchvision, squeezing ``channels / reduction``."""
    return SqueezeExcitation(channels, max(1, channels // reduction))


def init_kaiming(module: nn.Module, activation: str = "relu", leaky_slope: float = 0.01) -> None:
    """He initialisation of every conv in ``module`` for the activation that follows it.

    SiLU and GELU have no gain of their own in torch; their ReLU-like shape makes ReLU's gain fit.
    """
    nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
    slope = leaky_slope if activation == "leaky_relu" else 0.0
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(
                layer.weight, a=slope, mode="fan_out", nonlinearity=nonlinearity
            )
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class ResidualBlock(nn.Module):
    """Residual basic block, ResNet-D style (He et al. 2019), as nnU-Net's ResEnc encoder uses.

    Two 3x3 conv-norm layers (the first with ``stride`` and an activation) added to a shortcut,
    then an activation. The shortcut is the identity, or where the stride or width changes an
    average pool (``stride``) followed by a 1x1 conv + norm. The last norm starts at zero (its
    weight, when it has one), so every block begins as its shortcut (nnU-Net does the same).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm: str = "instance",
        activation: str = "leaky_relu",
        leaky_slope: float = 0.01,
    ) -> None:
        super().__init__()
        self.conv1 = conv_norm_act(in_channels, out_channels, norm, activation, leaky_slope, stride)
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm == "none"),
            make_norm(norm, out_channels),
        )
        shortcut: list[nn.Module] = [nn.AvgPool2d(stride)] if stride > 1 else []
        if in_channels != out_channels:
            shortcut += [
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                make_norm(norm, out_channels),
            ]
        self.shortcut = nn.Sequential(*shortcut)  # empty: the identity
        self.activation = make_activation(activation, leaky_slope)
        last_norm = self.conv2[1]
        if getattr(last_norm, "weight", None) is not None:
            nn.init.zeros_(last_norm.weight)  # the residual branch starts at zero

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv2(self.conv1(features)) + self.shortcut(features))
