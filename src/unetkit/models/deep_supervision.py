"""Deep supervision: auxiliary logits from inside the decoder, for training only.

A model built with ``deep_supervision=True`` answers ``model(images)`` as any model does, with
the main logits alone, in training and eval mode alike (the precision probe, ``bench``, export
and inference all call it so). Only ``model(images, aux_heads=True)`` in training mode returns a
:class:`DeepSupervisionOutput`: the main logits first, then the auxiliary logits, each with its
loss weight. In eval mode the auxiliary heads are never run, so an exported graph has one output
and holds none of their weights. Training steps ask with :func:`forward_options`, and
:func:`unetkit.losses.deep_supervision.deep_supervision_loss` turns either answer into one loss.

An auxiliary head at 1/s of the padded resolution is cropped by the padding // s on each side:
its map then covers the whole input, maybe with up to one coarse pixel more.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from unetkit.models.padding import AnySizeSegmenter, Padding, pad_to_multiple


class DeepSupervisionOutput(NamedTuple):
    """Logits of every head, the main (full resolution) first, and their loss weights (sum 1)."""

    heads: tuple[torch.Tensor, ...]
    weights: tuple[float, ...]


def halving_weights(count: int) -> tuple[float, ...]:
    """Loss weights 1, 1/2, 1/4, ... for ``count`` heads, main first, normalised to sum 1.

    nnU-Net's rule; nnU-Net v2 also zeroes its coarsest head, which here simply has no head.
    """
    raw = [0.5**level for level in range(count)]
    return tuple(weight / sum(raw) for weight in raw)


def forward_options(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments that ask ``model`` for its auxiliary heads, if it has any."""
    return {"aux_heads": True} if getattr(model, "deep_supervision", False) else {}


class DeepSupervisedSegmenter(AnySizeSegmenter):
    """An :class:`AnySizeSegmenter` that can also return auxiliary heads while training.

    Subclasses implement :meth:`forward_heads` and set ``deep_supervision``; ``head_weights``
    defaults to :func:`halving_weights` (heads at halving resolutions).
    """

    deep_supervision: bool = False

    def head_weights(self, count: int) -> tuple[float, ...]:
        """Loss weight of each of ``count`` heads, main first."""
        return halving_weights(count)

    def forward(
        self, images: torch.Tensor, aux_heads: bool = False
    ) -> torch.Tensor | DeepSupervisionOutput:
        """Main logits; with ``aux_heads`` in training mode, every head (see the module doc).

        That training path skips the base class's shape message: its batches come from checked
        data, and a wrong channel count still stops at the first conv, naming both counts.
        """
        if not (aux_heads and self.training and self.deep_supervision):
            return super().forward(images)
        padded, padding = pad_to_multiple(images, self.size_multiple)
        heads = self.forward_heads(padded, aux=True)
        cropped = tuple(_crop_scaled(head, padding, padded.shape[-1]) for head in heads)
        return DeepSupervisionOutput(cropped, self.head_weights(len(cropped)))

    def forward_padded(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_heads(images, aux=False)[0]

    def forward_heads(self, images: torch.Tensor, aux: bool) -> list[torch.Tensor]:
        """Main logits, then (with ``aux``) the auxiliary ones, for a size-multiple input."""
        raise NotImplementedError

    def heads_of_levels(self, levels: list[torch.Tensor], aux: bool) -> list[torch.Tensor]:
        """``self.head`` on the last decoder level; with ``aux``, ``self.aux_heads`` on the
        others, finest first (``levels`` is coarsest first)."""
        main = self.head(levels[-1])
        if not aux or self.aux_heads is None:
            return [main]
        finer_first = levels[-2::-1]
        return [
            main,
            *(head(level) for head, level in zip(self.aux_heads, finer_first, strict=True)),
        ]


def _crop_scaled(head: torch.Tensor, padding: Padding, padded_width: int) -> torch.Tensor:
    """Crop a head at 1/s of the padded size by ``padding // s`` on each side."""
    scale = padded_width // head.shape[-1]
    return F.pad(head, [-(side // scale) for side in padding])


def aux_head_layers(widths: list[int], out_channels: int, enabled: bool) -> nn.ModuleList | None:
    """One 1x1 conv head per feature width, or None without deep supervision."""
    if not enabled:
        return None
    return nn.ModuleList(nn.Conv2d(width, out_channels, kernel_size=1) for width in widths)
