"""The classic U-Net (Ronneberger et al. 2015), with same-padding convs and a few modern options."""

from __future__ import annotations

import torch
from torch import nn

from unetkit.models.blocks import ConvBlock, check_choice, conv_norm_act, init_kaiming
from unetkit.models.blocks import squeeze_excitation as make_squeeze_excitation
from unetkit.models.deep_supervision import DeepSupervisedSegmenter, aux_head_layers
from unetkit.models.registry import register_model

DOWNSAMPLERS = ("maxpool", "strided")
UPSAMPLERS = ("transpose", "bilinear", "nearest")


@register_model(
    "unet",
    "classic U-Net (Ronneberger et al. 2015); norm, activation, down/up-sampling, SE options; "
    "encoder=<timm model> puts a timm encoder under its decoder",
)
class UNet(DeepSupervisedSegmenter):
    """Encoder of ``depth`` down-samplings with widths ``base_width * 2**i``, mirrored decoder.

    ``down``: ``maxpool`` (classic) or ``strided`` (3x3 stride-2 conv + norm + activation).
    ``up``: ``transpose`` (2x2 transposed conv) or ``bilinear``/``nearest`` interpolation followed
    by a 3x3 conv; either way the channels are halved before the skip is concatenated.
    ``dropout`` acts inside every conv block, ``bottleneck_dropout`` after the deepest one, where
    ``se_bottleneck`` adds squeeze-and-excitation. ``deep_supervision`` adds a 1x1 head on each
    decoder level but the last (1/2 ... 1/2**(depth-1) resolution), used in training only (see
    :mod:`unetkit.models.deep_supervision`). Defaults give the ~31M-parameter original.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        base_width: int = 64,
        depth: int = 4,
        norm: str = "batch",
        activation: str = "relu",
        dropout: float = 0.0,
        bottleneck_dropout: float = 0.0,
        down: str = "maxpool",
        up: str = "transpose",
        se_bottleneck: bool = False,
        leaky_slope: float = 0.01,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, size_multiple=2**depth)
        _check_options(base_width, depth, dropout, bottleneck_dropout, down, up)
        widths = [base_width * 2**level for level in range(depth + 1)]
        style = {"norm": norm, "activation": activation, "leaky_slope": leaky_slope}

        def block(cin: int, cout: int) -> ConvBlock:
            return ConvBlock(cin, cout, dropout=dropout, **style)

        def downsample(channels: int) -> nn.Module:
            if down == "maxpool":
                return nn.MaxPool2d(2)
            return conv_norm_act(channels, channels, stride=2, **style)

        self.encoder = nn.ModuleList([block(in_channels, widths[0])])
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            self.encoder.append(nn.Sequential(downsample(cin), block(cin, cout)))
        self.bottleneck = nn.Sequential(
            make_squeeze_excitation(widths[-1]) if se_bottleneck else nn.Identity(),
            nn.Dropout2d(bottleneck_dropout) if bottleneck_dropout > 0 else nn.Identity(),
        )
        decoder_pairs = list(zip(widths[:0:-1], widths[-2::-1], strict=True))  # (deep, shallow)
        self.upsamplers = nn.ModuleList(
            _upsampler(up, deep, shallow) for deep, shallow in decoder_pairs
        )
        self.decoder = nn.ModuleList(block(2 * shallow, shallow) for _, shallow in decoder_pairs)
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        init_kaiming(self, activation, leaky_slope)
        self.head.reset_parameters()  # the head feeds no activation: keep torch's small default
        self.widths, self.norm = widths, norm  # what subclasses build on
        self.deep_supervision = deep_supervision
        self.aux_heads = aux_head_layers(widths[1:depth], out_channels, deep_supervision)

    def forward_heads(self, images: torch.Tensor, aux: bool) -> list[torch.Tensor]:
        return self.heads_of_levels(self.decode(images), aux)

    def decode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The output of every decoder block, coarsest first."""
        skips = []
        features = images
        for stage in self.encoder:
            features = stage(features)
            skips.append(features)
        features = self.bottleneck(skips.pop())
        levels = []
        for level, (upsample, block) in enumerate(zip(self.upsamplers, self.decoder, strict=True)):
            skip = self.gate_skip(level, skips.pop(), features)
            features = block(torch.cat([upsample(features), skip], dim=1))
            levels.append(features)
        return levels

    def gate_skip(self, level: int, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        """The skip that decoder block ``level`` (0: deepest) concatenates; the plain U-Net
        passes it unchanged, :class:`~unetkit.models.attention_unet.AttentionUNet` gates it."""
        return skip


def _upsampler(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    """Double the resolution and map ``in_channels`` to ``out_channels``."""
    if kind == "transpose":
        return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
    align = {"align_corners": False} if kind == "bilinear" else {}
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode=kind, **align),
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
    )


def _check_options(
    base_width: int, depth: int, dropout: float, bottleneck_dropout: float, down: str, up: str
) -> None:
    if base_width < 1 or depth < 1:
        raise ValueError(f"unet needs base_width >= 1 and depth >= 1; got {base_width}, {depth}")
    for name, rate in (("dropout", dropout), ("bottleneck_dropout", bottleneck_dropout)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"unet {name} must lie in [0, 1); got {rate}")
    check_choice("down", down, DOWNSAMPLERS)
    check_choice("up", up, UPSAMPLERS)
