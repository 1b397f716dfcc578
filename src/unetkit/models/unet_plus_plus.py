"""U-Net++ (Zhou et al. 2018): nested, dense skip pathways between encoder and decoder.

Node ``X[i][j]`` (level i, column j) is a two-conv block. ``X[i][0]`` is the encoder (max pool,
then the block); for j >= 1, ``X[i][j]`` takes the concatenation of every node before it on its
level, ``X[i][0..j-1]``, and ``X[i+1][j-1]`` upsampled by a 2x2 transposed conv. Widths are
``base_width * 2**i`` (32 ... 512 by default, as the paper). The top row ``X[0][1..depth]`` has
full resolution; the main output is a 1x1 head on ``X[0][depth]``.

``deep_supervision`` puts a head on every top-row node, trained with equal loss weights (the
paper averages them). Then ``prune_to=L`` (or ``model.prune(L)`` on a trained model) makes
inference use only the nodes ``X[i][j]`` with i + j <= L and the head of ``X[0][L]``: the
paper's pruned U-Net++ L^L, cheaper by the deeper levels it skips. Training always runs them all.
"""

from __future__ import annotations

import torch
from torch import nn

from unetkit.models.blocks import ConvBlock, init_kaiming
from unetkit.models.deep_supervision import DeepSupervisedSegmenter, aux_head_layers
from unetkit.models.registry import register_model


@register_model(
    "unet-plus-plus", "U-Net++: nested dense skips (Zhou et al. 2018), prunable at inference"
)
class UNetPlusPlus(DeepSupervisedSegmenter):
    """U-Net++ with nested dense skips; optional deep supervision and pruning at inference."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        base_width: int = 32,
        depth: int = 4,
        norm: str = "batch",
        activation: str = "relu",
        deep_supervision: bool = False,
        prune_to: int | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, size_multiple=2**depth)
        if base_width < 1 or depth < 1:
            raise ValueError(
                f"unet-plus-plus needs base_width, depth >= 1; got {base_width}, {depth}"
            )
        widths = [base_width * 2**level for level in range(depth + 1)]
        style = {"norm": norm, "activation": activation}
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            ConvBlock(cin, cout, **style)
            for cin, cout in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        # nodes[i][j - 1] is X[i][j]; ups[i][j - 1] upsamples X[i + 1][j - 1] for it
        self.ups = nn.ModuleList(
            nn.ModuleList(
                nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2)
                for _ in range(depth - i)
            )
            for i in range(depth)
        )
        self.nodes = nn.ModuleList(
            nn.ModuleList(
                ConvBlock((j + 1) * widths[i], widths[i], **style) for j in range(1, depth - i + 1)
            )
            for i in range(depth)
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        init_kaiming(self, activation)
        self.head.reset_parameters()
        self.depth = depth
        self.deep_supervision = deep_supervision
        # aux_heads[j - 1] reads X[0][j], j = 1 .. depth - 1
        self.aux_heads = aux_head_layers([widths[0]] * (depth - 1), out_channels, deep_supervision)
        self.prune_to = depth
        self.prune(depth if prune_to is None else prune_to)

    def prune(self, columns: int) -> None:
        """Use only the first ``columns`` columns at inference (``depth``: the whole network)."""
        if isinstance(columns, bool) or not isinstance(columns, int):
            raise ValueError(f"prune_to must be an integer; got {columns!r}")
        if not 1 <= columns <= self.depth:
            raise ValueError(f"prune_to must lie in 1..{self.depth} (depth); got {columns}")
        if columns < self.depth and not self.deep_supervision:
            raise ValueError(
                f"prune_to={columns} needs a trained head on X[0][{columns}]: build the model "
                f"with deep_supervision=true (only then is every top-row node supervised)"
            )
        self.prune_to = columns

    def head_weights(self, count: int) -> tuple[float, ...]:
        return (1.0 / count,) * count  # same resolution: the paper averages the heads' losses

    def forward_heads(self, images: torch.Tensor, aux: bool) -> list[torch.Tensor]:
        columns = self.depth if self.training else self.prune_to
        top = self.nested(images, columns)[0]
        heads = range(columns, 0, -1) if aux and self.aux_heads is not None else [columns]
        return [self._head(column)(top[column]) for column in heads]

    def _head(self, column: int) -> nn.Module:
        """The 1x1 head reading ``X[0][column]``."""
        return self.head if column == self.depth else self.aux_heads[column - 1]

    def nested(self, images: torch.Tensor, columns: int) -> list[list[torch.Tensor]]:
        """The nodes ``X[i][j]`` with i + j <= ``columns``, as rows ``grid[i][j]``."""
        grid: list[list[torch.Tensor]] = []
        features = images
        for level in range(columns + 1):
            features = self.encoder[level](self.pool(features) if level else features)
            grid.append([features])
        for j in range(1, columns + 1):
            for i in range(columns - j + 1):
                upsampled = self.ups[i][j - 1](grid[i + 1][j - 1])
                grid[i].append(self.nodes[i][j - 1](torch.cat([*grid[i], upsampled], dim=1)))
        return grid
