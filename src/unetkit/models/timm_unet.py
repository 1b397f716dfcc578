"""U-Net decoder behind any timm encoder that offers ``features_only`` (``timm-unet``).

The encoder is ``timm.create_model(encoder, features_only=True, in_chans=in_channels)``; its
``feature_info`` gives each feature's channels and reduction (stride). The decoder walks from the
deepest feature up: upsample (nearest or bilinear) to the next feature's stride, concatenate it,
two conv-BN-ReLU. Encoders whose first feature is at stride 4 (ConvNeXt, ...) get extra blocks
without skips until full resolution, so every encoder needs ``log2(largest reduction)`` blocks.

Pretrained weights (``pretrained``): ``False`` (random), ``True`` for timm's own weights (its cache
and the Hugging Face hub), or a local path / http(s) URL of a state dict of the timm classifier
model (``.pth`` or ``.safetensors``; the URL is downloaded once into
``$TORCH_HOME/hub/checkpoints``). Every encoder key must be in the file (classifier keys may be
absent); timm adapts the first conv to ``in_channels != 3``.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from torch import nn

from unetkit.models.blocks import ConvBlock, init_kaiming
from unetkit.models.padding import AnySizeSegmenter
from unetkit.models.registry import register_model, route_option
from unetkit.models.state_dicts import as_state_dict

TIMM_PREFIX = "tu-"  # segmentation_models_pytorch's spelling of "a timm encoder"
UPSAMPLING_MODES = ("nearest", "bilinear")


@register_model(
    "timm-unet",
    "U-Net decoder on any timm encoder; default mobilenetv3_large_100, chosen for fast CPU use",
)
class TimmUNet(AnySizeSegmenter):
    """U-Net decoder on any timm encoder (default mobilenetv3_large_100, chosen for fast CPU use).

    ``encoder`` is a timm model name (``tu-`` prefix accepted, e.g. ``tu-convnext_tiny``).
    ``decoder_widths`` (deepest first) needs one width per block, ``log2`` of the encoder's
    largest reduction (5 for the usual stride-32 encoders); by default ``base_width`` times
    16, 8, 4, 2, 1 (256, 128, 64, 32, 16), never below ``base_width``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        encoder: str = "mobilenetv3_large_100",
        pretrained: bool | str | os.PathLike[str] = False,
        decoder_widths: Sequence[int] | None = None,
        base_width: int = 16,
        upsampling: str = "nearest",
        decoder_dropout: float = 0.0,
    ) -> None:
        name = timm_name(encoder)
        features = build_encoder(name, in_channels, pretrained)
        reductions = features.feature_info.reduction()
        super().__init__(in_channels, out_channels, size_multiple=max(reductions))
        if upsampling not in UPSAMPLING_MODES:
            raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}; got {upsampling!r}")
        self.encoder = features
        self.upsampling = upsampling
        self.scales = _upsampling_scales(name, reductions)
        widths = _decoder_widths(decoder_widths, base_width, len(self.scales))
        channels = features.feature_info.channels()
        skips = [*channels[-2::-1], *[0] * (len(self.scales) - len(channels) + 1)]
        in_widths = [channels[-1], *widths[:-1]]
        self.decoder = nn.ModuleList(
            ConvBlock(cin + skip, cout, dropout=decoder_dropout)
            for cin, skip, cout in zip(in_widths, skips, widths, strict=True)
        )
        self.head = nn.Conv2d(widths[-1], out_channels, kernel_size=1)
        init_kaiming(self.decoder)

    def forward_padded(self, images: torch.Tensor) -> torch.Tensor:
        skips = list(self.encoder(images))
        features = skips.pop()
        for scale, block in zip(self.scales, self.decoder, strict=True):
            if scale > 1:
                features = F.interpolate(features, scale_factor=float(scale), mode=self.upsampling)
            if skips:
                features = torch.cat([features, skips.pop()], dim=1)
            features = block(features)
        return self.head(features)


def unet_on_timm_encoder(
    in_channels: int,
    out_channels: int,
    *,
    encoder: str,
    pretrained: bool | str | os.PathLike[str] = False,
    base_width: int = 16,
    decoder_widths: Sequence[int] | None = None,
    up: str = "nearest",
    dropout: float = 0.0,
) -> TimmUNet:
    """``unet`` with ``encoder=<timm name>``: :class:`TimmUNet` under ``unet``'s option names
    (``up`` nearest | bilinear, ``dropout`` in the decoder blocks)."""
    if up not in UPSAMPLING_MODES:
        raise ValueError(
            f"unet with a timm encoder upsamples by interpolation: up must be one of "
            f"{UPSAMPLING_MODES}; got {up!r}"
        )
    return TimmUNet(
        in_channels,
        out_channels,
        encoder=encoder,
        pretrained=pretrained,
        decoder_widths=decoder_widths,
        base_width=base_width,
        upsampling=up,
        decoder_dropout=dropout,
    )


route_option("unet", "encoder", unet_on_timm_encoder)


def timm_name(encoder: str) -> str:
    """The timm model name for ``encoder`` (``tu-`` prefix dropped); unknown names are refused."""
    name = encoder.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        pattern = f"*{name.split('_')[0].rstrip('0123456789')}*"
        close = difflib.get_close_matches(name, timm.list_models(pattern) or timm.list_models())
        raise ValueError(
            f"unknown timm encoder {encoder!r}; close matches: {', '.join(close) or '(none)'}. "
            f"List the names with timm.list_models({pattern!r})"
        )
    return name


def build_encoder(
    name: str, in_channels: int, pretrained: bool | str | os.PathLike[str]
) -> nn.Module:
    """``timm.create_model(name, features_only=True)`` with ``pretrained`` weights loaded."""
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        raise ValueError(f"pretrained must be a bool, a path or a URL; got {pretrained!r}")
    options: dict[str, object] = {"pretrained": pretrained is not False}
    if not isinstance(pretrained, bool):
        path = weights_file(pretrained)
        check_encoder_keys(name, read_state_dict(path), str(pretrained))
        options["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        return timm.create_model(name, features_only=True, in_chans=in_channels, **options)
    except RuntimeError as error:  # timm: "features_only not implemented for ..."
        raise ValueError(
            f"timm encoder {name!r} cannot give features ({error}); pick a model that offers "
            f"features_only, e.g. resnet18, efficientnet_b0, convnext_tiny"
        ) from error


def weights_file(source: str | os.PathLike[str]) -> Path:
    """The local file of ``source``: a path, or an http(s) URL downloaded once into the cache."""
    text = os.fspath(source)
    if text.startswith(("http://", "https://")):
        return _download_once(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file {str(path)!r} does not exist; pass the path of a timm "
            f"state dict (.pth or .safetensors), an http(s) URL, True for timm's weights or False"
        )
    return path


def _download_once(url: str) -> Path:
    """``url`` saved as ``$TORCH_HOME/hub/checkpoints/<its file name>``; reused if present."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    target = folder / (Path(urlparse(url).path).name or "weights.pth")
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except OSError as error:  # URLError and connection failures are OSErrors
        raise OSError(
            f"could not download encoder weights from {url}: {error}. Without internet access, "
            f"fetch the file elsewhere and pass its local path as pretrained=<file>, or put it "
            f"at {target}"
        ) from error
    return target


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or ``.pth`` file (a bare or wrapped state dict)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    how_to_save = "torch.save(timm.create_model(name).state_dict(), path)"
    return as_state_dict(loaded, str(path), how_to_save)


def check_encoder_keys(name: str, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a file that lacks encoder keys or has foreign ones (timm would load it silently)."""
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False)
    expected = set(reference.state_dict())
    classifier = reference.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(
        f"{head}." for head in ([classifier] if isinstance(classifier, str) else classifier)
    )
    missing = sorted(key for key in expected - set(state) if not key.startswith(prefixes))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source} is not a timm {name} state dict: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}. Save it with "
            f"torch.save(timm.create_model({name!r}).state_dict(), path)"
        )


def _upsampling_scales(name: str, reductions: Sequence[int]) -> list[int]:
    """Each decoder block's upsampling factor: between features, then x2 down to stride 1."""
    if any(r < 1 or r & (r - 1) for r in reductions) or list(reductions) != sorted(reductions):
        raise ValueError(
            f"timm encoder {name!r} has feature reductions {list(reductions)}; the U-Net decoder "
            f"needs increasing powers of two"
        )
    between = [
        deep // shallow for shallow, deep in zip(reductions[:-1], reductions[1:], strict=True)
    ]
    return [*between[::-1], *[2] * int(math.log2(reductions[0]))]


def _decoder_widths(widths: Sequence[int] | None, base_width: int, blocks: int) -> list[int]:
    if widths is None:
        if base_width < 1:
            raise ValueError(f"base_width must be a positive integer; got {base_width}")
        return [max(base_width, (base_width * 16) >> index) for index in range(blocks)]
    if len(widths) != blocks or min(widths) < 1:
        raise ValueError(
            f"decoder_widths needs {blocks} positive widths for this encoder (one per block, "
            f"deepest first); got {list(widths)}"
        )
    return list(widths)
