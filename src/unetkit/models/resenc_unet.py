"""Residual-encoder U-Net, as nnU-Net's ResEnc U-Net (Isensee et al. 2024, "nnU-Net Revisited").

Encoder: a stem (one 3x3 conv-norm-LeakyReLU), then ``n_stages`` stages of residual basic blocks
(:class:`~unetkit.models.blocks.ResidualBlock`); the first block of every stage but the first
downsamples with stride 2. Decoder: per stage a 2x2 transposed conv to the skip's width, the skip
concatenated, one 3x3 conv-norm-LeakyReLU; a 1x1 head. Instance norm by default, as nnU-Net.

``size`` picks a preset; ``n_stages``, ``blocks_per_stage``, ``widths``, ``base_width`` and
``max_width`` override its parts (widths default to ``base_width * 2**s`` capped at ``max_width``).

* ``m`` and ``l``: nnU-Net's 2D ResEnc layout: widths 32, 64, ... capped at 512, encoder blocks
  1, 3, 4, 6, 6, ..., one decoder conv per stage. nnU-Net's M and L presets share that layout and
  differ by GPU-memory target, which its planner spends on patch and batch size; the number of
  stages follows the patch (down to a 4-pixel map). Here ``m`` has the 7 stages it plans for a
  256x256 patch, ``l`` the 8 stages of a 512x512 patch.
* ``cpu``: 5 stages, widths 16 ... 256, blocks 1, 2, 2, 2, 2: 3.4M parameters, 7.6 GFLOPs at
  256x256 (``m``: 106M, 65 GFLOPs; ``l``: 140M, 65 GFLOPs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from unetkit.models.blocks import ResidualBlock, check_choice, conv_norm_act, init_kaiming
from unetkit.models.deep_supervision import DeepSupervisedSegmenter, aux_head_layers
from unetkit.models.registry import register_model

ACTIVATION = "leaky_relu"  # nnU-Net's nonlinearity throughout


@dataclass(frozen=True)
class ResEncPreset:
    """One preset's stage count, encoder blocks per stage and width rule."""

    n_stages: int
    blocks_per_stage: tuple[int, ...]
    base_width: int
    max_width: int


PRESETS = {
    "cpu": ResEncPreset(5, (1, 2, 2, 2, 2), 16, 256),
    "m": ResEncPreset(7, (1, 3, 4, 6, 6, 6, 6), 32, 512),
    "l": ResEncPreset(8, (1, 3, 4, 6, 6, 6, 6, 6), 32, 512),
}


@register_model("resenc-unet", "nnU-Net residual-encoder U-Net (ResEnc), presets size=cpu|m|l")
class ResEncUNet(DeepSupervisedSegmenter):
    """Residual-encoder U-Net (nnU-Net ResEnc), presets ``size`` cpu, m (default), l."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        size: str = "m",
        n_stages: int | None = None,
        blocks_per_stage: Sequence[int] | None = None,
        widths: Sequence[int] | None = None,
        base_width: int | None = None,
        max_width: int | None = None,
        norm: str = "instance",
        leaky_slope: float = 0.01,
        deep_supervision: bool = False,
    ) -> None:
        check_choice("size", size, tuple(PRESETS))
        widths, blocks = _layout(
            PRESETS[size], n_stages, blocks_per_stage, widths, base_width, max_width
        )
        # 2**n_stages, one more halving than the encoder has: its deepest map keeps at least 2x2
        # pixels, which instance norm needs (a 1x1 map has no spatial statistics)
        super().__init__(in_channels, out_channels, size_multiple=2 ** len(widths))
        style = {"norm": norm, "activation": ACTIVATION, "leaky_slope": leaky_slope}
        self.stem = conv_norm_act(in_channels, widths[0], **style)
        stage_inputs = [widths[0], *widths[:-1]]
        self.stages = nn.ModuleList(
            _stage(cin, cout, count, stride=2 if s else 1, **style)
            for s, (cin, cout, count) in enumerate(zip(stage_inputs, widths, blocks, strict=True))
        )
        pairs = list(zip(widths[:0:-1], widths[-2::-1], strict=True))  # (deep, shallow)
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(deep, shallow, kernel_size=2, stride=2) for deep, shallow in pairs
        )
        self.decoder = nn.ModuleList(conv_norm_act(2 * w, w, **style) for _, w in pairs)
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        init_kaiming(self, ACTIVATION, leaky_slope)  # convs only: the zeroed norms stay zero
        self.head.reset_parameters()
        self.widths, self.blocks_per_stage = tuple(widths), tuple(blocks)
        self.deep_supervision = deep_supervision
        self.aux_heads = aux_head_layers(list(widths[1:-1]), out_channels, deep_supervision)

    def forward_heads(self, images: torch.Tensor, aux: bool) -> list[torch.Tensor]:
        skips = []
        features = self.stem(images)
        for stage in self.stages:
            features = stage(features)
            skips.append(features)
        features = skips.pop()
        levels = []
        for upsample, block in zip(self.upsamplers, self.decoder, strict=True):
            features = block(torch.cat([upsample(features), skips.pop()], dim=1))
            levels.append(features)
        return self.heads_of_levels(levels, aux)


def _stage(in_channels: int, out_channels: int, count: int, stride: int, **style) -> nn.Sequential:
    """``count`` residual blocks; the first changes width and resolution (``stride``)."""
    first = ResidualBlock(in_channels, out_channels, stride, **style)
    rest = (ResidualBlock(out_channels, out_channels, **style) for _ in range(count - 1))
    return nn.Sequential(first, *rest)


def _layout(
    preset: ResEncPreset,
    n_stages: int | None,
    blocks_per_stage: Sequence[int] | None,
    widths: Sequence[int] | None,
    base_width: int | None,
    max_width: int | None,
) -> tuple[list[int], list[int]]:
    """Widths and encoder blocks per stage: the preset's, with the given parts replaced."""
    stages = n_stages or (len(widths) if widths else None) or preset.n_stages
    base, cap = base_width or preset.base_width, max_width or preset.max_width
    widths = list(widths) if widths else [min(base * 2**s, cap) for s in range(stages)]
    if blocks_per_stage:
        blocks = list(blocks_per_stage)
    else:
        extra = max(0, stages - len(preset.blocks_per_stage))
        blocks = [*preset.blocks_per_stage, *[preset.blocks_per_stage[-1]] * extra][:stages]
    if stages < 2 or len(widths) != stages or len(blocks) != stages:
        raise ValueError(
            f"resenc-unet needs n_stages >= 2 and one width and one block count per stage; got "
            f"n_stages={stages}, widths={widths}, blocks_per_stage={blocks}. Give lists of "
            f"{stages} numbers, or leave them out to take the preset's"
        )
    if min(widths) < 1 or min(blocks) < 1:
        raise ValueError(f"resenc-unet widths and blocks must be >= 1; got {widths}, {blocks}")
    return widths, blocks
