"""Any input size for every model: pad inside ``forward`` to the size the network needs, then crop.

Encoder-decoder networks halve the resolution several times, so their skip connections only line
up when H and W are multiples of ``2 ** depth``. Users should never have to care: the input is
padded (reflected where possible, so the border looks like image content rather than a black
frame) and the logits are cropped back to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Padding = tuple[int, int, int, int]  # left, right, top, bottom, as torch.nn.functional.pad wants


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, Padding]:
    """Pad ``(N, C, H, W)`` so H and W are multiples of ``multiple``, split evenly on both sides.

    Reflection needs each pad to be smaller than the side it reflects; tiny inputs (a 1x1 image
    padded to 32x32) fall back to repeating the edge pixels. F.pad runs even for zero padding,
    and :func:`crop_padding` crops with negative padding, so ``torch.export`` sees no shape branch.
    """
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    reflectable = max(padding[:2]) < width and max(padding[2:]) < height
    return F.pad(images, padding, mode="reflect" if reflectable else "replicate"), padding


def crop_padding(tensor: torch.Tensor, padding: Padding) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on a ``(..., H, W)`` tensor of the padded size."""
    return F.pad(tensor, [-side for side in padding])  # negative padding crops


class AnySizeSegmenter(nn.Module):
    """Base for segmentation models: checks the input, pads, runs :meth:`forward_padded`, crops.

    Subclasses set the size multiple their architecture needs and implement ``forward_padded``,
    which may assume H and W are multiples of it.
    """

    def __init__(self, in_channels: int, out_channels: int, size_multiple: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size_multiple = size_multiple

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, out_channels, H, W)`` for images ``(N, in_channels, H, W)``, any H, W."""
        if images.ndim != 4 or images.shape[1] != self.in_channels or 0 in images.shape[-2:]:
            raise ValueError(
                f"{type(self).__name__} expects images shaped (N, {self.in_channels}, H, W) with "
                f"H, W >= 1; got {tuple(images.shape)}. Check data.in_channels matches the images."
            )
        padded, padding = pad_to_multiple(images, self.size_multiple)
        return crop_padding(self.forward_padded(padded), padding)

    def forward_padded(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for images whose H and W are multiples of ``size_multiple``."""
        raise NotImplementedError
