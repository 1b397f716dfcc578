"""U-Net with a torchvision ResNet-34 encoder, optionally ImageNet-pretrained.

The encoder gives skips at strides 2 (stem, after its ReLU), 4 (layer1), 8, 16 and 32 (layer4).
Each decoder block doubles the resolution (nearest), concatenates the matching skip and applies
two conv-BN-ReLU; the last block reaches full resolution with no skip, then a 1x1 head.

Pretrained weights (``pretrained``): ``True`` for torchvision's ``ResNet34_Weights.IMAGENET1K_V1``
(downloaded once into the torch hub cache, ``$TORCH_HOME``), or a path / http(s) URL of a
torchvision ``resnet34`` state dict (``.pth``). The ``fc.`` classifier keys are ignored.
With ``in_channels != 3`` the pretrained first conv is adapted: for 1 channel its RGB filters are
summed (a grey image then gives the response of the same grey RGB image); for C channels the RGB
filters are repeated cyclically (R, G, B, R, ...) and scaled by 3 / C, keeping the response scale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet, ResNet34_Weights, WeightsEnum, resnet34

from unetkit.models.blocks import ConvBlock, init_kaiming
from unetkit.models.padding import AnySizeSegmenter
from unetkit.models.registry import register_model
from unetkit.models.state_dicts import as_state_dict

ENCODER_WIDTHS = (64, 64, 128, 256, 512)  # channels at strides 2, 4, 8, 16, 32


@register_model(
    "resnet34-unet",
    "ResNet-34 encoder (torchvision, ImageNet weights optional) + U-Net decoder of five blocks",
)
class ResNet34UNet(AnySizeSegmenter):
    """ResNet-34 encoder + U-Net decoder of five blocks (``decoder_widths``, deepest first).

    ``freeze_encoder`` stops gradients into the encoder and keeps its BatchNorm statistics fixed
    (the encoder stays in eval mode even while the model trains).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        pretrained: bool | str | os.PathLike[str] = False,
        decoder_widths: Sequence[int] = (256, 128, 64, 32, 16),
        decoder_dropout: float = 0.0,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, size_multiple=32)
        if len(decoder_widths) != 5 or min(decoder_widths) < 1:
            raise ValueError(f"decoder_widths needs 5 positive widths; got {list(decoder_widths)}")
        if not 0.0 <= decoder_dropout < 1.0:
            raise ValueError(f"decoder_dropout must lie in [0, 1); got {decoder_dropout}")
        resnet = _build_resnet34(in_channels, pretrained)
        self.encoder = nn.ModuleList(
            [
                nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu),
                nn.Sequential(resnet.maxpool, resnet.layer1),
                resnet.layer2,
                resnet.layer3,
                resnet.layer4,
            ]
        )
        skip_widths = [*ENCODER_WIDTHS[-2::-1], 0]  # stride 16, 8, 4, 2, then full size: none
        in_widths = [ENCODER_WIDTHS[-1], *decoder_widths[:-1]]
        self.decoder = nn.ModuleList(
            ConvBlock(cin + skip, cout, dropout=decoder_dropout)
            for cin, skip, cout in zip(in_widths, skip_widths, decoder_widths, strict=True)
        )
        self.head = nn.Conv2d(decoder_widths[-1], out_channels, kernel_size=1)
        init_kaiming(self.decoder)
        self.freeze_encoder = freeze_encoder
        self.encoder.requires_grad_(not freeze_encoder)
        self.train()

    def train(self, mode: bool = True) -> ResNet34UNet:
        """Switch train/eval mode; a frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward_padded(self, images: torch.Tensor) -> torch.Tensor:
        skips = []
        features = images
        for stage in self.encoder:
            features = stage(features)
            skips.append(features)
        features = skips.pop()
        for block in self.decoder:
            features = F.interpolate(features, scale_factor=2.0, mode="nearest")
            if skips:
                features = torch.cat([features, skips.pop()], dim=1)
            features = block(features)
        return self.head(features)


def load_encoder_weights(
    source: WeightsEnum | str | os.PathLike[str],
) -> dict[str, torch.Tensor]:
    """A state dict from torchvision weights, an http(s) URL or a local ``.pth`` file.

    Weights and URLs go through ``torch.hub.load_state_dict_from_url``: downloaded once, with a
    progress bar, into ``$TORCH_HOME/hub/checkpoints`` and read from there afterwards.
    """
    if isinstance(source, WeightsEnum):
        return _download(source.url, check_hash=True)
    text = os.fspath(source)
    if text.startswith(("http://", "https://")):
        return _download(text, check_hash=False)
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file {str(path)!r} does not exist; pass the path of a torchvision "
            f"resnet34 state dict (.pth), an http(s) URL, True for ImageNet weights or False"
        )
    return _as_state_dict(torch.load(path, map_location="cpu", weights_only=True), text)


def _download(url: str, check_hash: bool) -> dict[str, torch.Tensor]:
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=True, check_hash=check_hash, weights_only=True
        )
    except OSError as error:  # URLError and connection failures are OSErrors
        raise OSError(
            f"could not download encoder weights from {url}: {error}. Without internet access, "
            f"fetch the file elsewhere and pass its local path as pretrained=<file.pth>, or put it "
            f"into {torch.hub.get_dir()}/checkpoints"
        ) from error
    return _as_state_dict(state, url)


def _as_state_dict(loaded: object, source: str) -> dict[str, torch.Tensor]:
    return as_state_dict(loaded, source, "torch.save(resnet34().state_dict(), path)")


def _build_resnet34(in_channels: int, pretrained: bool | str | os.PathLike[str]) -> ResNet:
    """A torchvision resnet34, loaded with ``pretrained`` weights and fitted to ``in_channels``."""
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        raise ValueError(f"pretrained must be a bool, a path or a URL; got {pretrained!r}")
    resnet = resnet34(weights=None)
    if pretrained is not False:
        source = ResNet34_Weights.IMAGENET1K_V1 if pretrained is True else pretrained
        _load_into(resnet, load_encoder_weights(source), str(source))
    if in_channels != 3:
        resnet.conv1 = _adapt_first_conv(resnet.conv1, in_channels, pretrained is not False)
    return resnet


def _load_into(resnet: ResNet, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``resnet``; every encoder key must match, ``fc.`` keys are ignored."""
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    try:
        missing, unexpected = resnet.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{source} is not a torchvision resnet34 state dict: {error}") from error
    missing = [key for key in missing if not key.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{source} is not a torchvision resnet34 state dict: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}. Keys must look like 'conv1.weight', 'layer1.0.conv1.weight'."
        )


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int, keep_weights: bool) -> nn.Conv2d:
    """``conv`` for ``in_channels`` inputs; pretrained RGB filters are summed or repeated."""
    adapted = nn.Conv2d(in_channels, conv.out_channels, 7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        if not keep_weights:
            nn.init.kaiming_normal_(adapted.weight, mode="fan_out", nonlinearity="relu")
        elif in_channels == 1:
            adapted.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        else:
            repeated = conv.weight[:, torch.arange(in_channels) % 3]
            adapted.weight.copy_(repeated * (3 / in_channels))
    return adapted
