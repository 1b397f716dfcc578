"""timm encoders behind the U-Net decoder: sizes, channels, training, export, pretrained weights."""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from test_export import TOLERANCE, raw_onnx_logits, write_checkpoint
from test_models import overfit

from unetkit.checkpoint import model_from_checkpoint
from unetkit.inference.export import export_model
from unetkit.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"encoder": "resnet18", "decoder_widths": (16, 8, 8, 8, 4)}


def tiny(in_channels: int = 3, out_channels: int = 2, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("timm-unet", in_channels, out_channels, **{**SMALL, **options})


@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_any_input_size_and_channel_count(in_channels: int) -> None:
    model = tiny(in_channels, out_channels=3).eval()
    assert model.size_multiple == 32
    logits = model(torch.randn(2, in_channels, 45, 61))
    assert logits.shape == (2, 3, 45, 61) and torch.isfinite(logits).all()


def test_stride_4_encoder_reaches_full_resolution_with_tu_prefix() -> None:
    model = tiny(encoder="tu-convnext_atto", upsampling="bilinear").eval()
    assert model.scales == [2, 2, 2, 2, 2]  # three between features, two without skips
    assert model(torch.randn(1, 3, 45, 61)).shape == (1, 2, 45, 61)


def test_training_steps_reduce_the_loss() -> None:
    loss_drop, _ = overfit(tiny(out_channels=1), num_classes=2, lr=1e-2, steps=15)
    assert loss_drop > 0.3


def test_onnx_export_matches_pytorch(tmp_path) -> None:
    checkpoint = write_checkpoint(tmp_path / "t.pt", 2, "timm-unet", dict(SMALL))
    report = export_model(checkpoint, tmp_path / "t.onnx")
    assert all(diff < TOLERANCE for diff in report.max_abs_diff.values())
    images = torch.randn(1, 3, 45, 61, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model_from_checkpoint(checkpoint).model(images).numpy()
    assert np.abs(raw_onnx_logits(report.path, images) - expected).max() < TOLERANCE


def _reference_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model("resnet18", pretrained=False).state_dict()


def _assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.encoder.state_dict()
    assert torch.equal(loaded["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert all(torch.equal(loaded[key], state[key]) for key in loaded)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_from_a_local_file(tmp_path, suffix: str) -> None:
    state = _reference_state()
    path = tmp_path / f"r18{suffix}"
    (save_file if suffix == ".safetensors" else torch.save)(state, str(path))
    _assert_loaded(tiny(pretrained=str(path)), state)


def test_pretrained_from_a_local_server_is_downloaded_once(tmp_path, monkeypatch) -> None:
    state = _reference_state()
    served = tmp_path / "served"
    served.mkdir()
    torch.save(state, served / "r18.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/r18.pth"
        _assert_loaded(tiny(pretrained=url), state)
        (served / "r18.pth").unlink()  # a second build must read the cached copy
        _assert_loaded(tiny(pretrained=url), state)
    finally:
        server.shutdown()
        server.server_close()
    assert (tmp_path / "home" / "hub" / "checkpoints" / "r18.pth").is_file()


def test_a_file_missing_encoder_keys_is_refused_by_name(tmp_path) -> None:
    state = _reference_state()
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"broken\.pth.*1 missing keys \['layer1\.0\.conv1"):
        tiny(pretrained=str(path))


def test_an_unknown_encoder_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown timm encoder 'resnet1888'.*resnet18"):
        tiny(encoder="resnet1888")


def test_unet_with_an_encoder_option_is_the_timm_unet_under_unet_names(tmp_path) -> None:
    torch.manual_seed(0)
    routed = build_model("unet", 3, 1, encoder="tu-resnet18", base_width=4, up="bilinear")
    assert type(routed).__name__ == "TimmUNet" and routed.upsampling == "bilinear"
    assert [block[-1][0].out_channels for block in routed.decoder] == [64, 32, 16, 8, 4]
    assert routed(torch.randn(1, 3, 45, 61)).shape == (1, 1, 45, 61)
    checkpoint = write_checkpoint(
        tmp_path / "u.pt", 2, "unet", {"encoder": "tu-resnet18", "base_width": 4}
    )
    assert type(model_from_checkpoint(checkpoint).model).__name__ == "TimmUNet"
    assert type(build_model("unet", 3, 1, encoder=None, base_width=4)).__name__ == "UNet"


def test_unet_options_that_do_not_apply_to_a_timm_encoder_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'unet' with encoder='resnet18' has no option 'norm'"):
        build_model("unet", 3, 1, encoder="resnet18", norm="group")
    with pytest.raises(ValueError, match=r"no option 'pretrained' \(it applies with encoder="):
        build_model("unet", 3, 1, pretrained=True)
    with pytest.raises(ValueError, match=r"up must be one of \('nearest', 'bilinear'\)"):
        build_model("unet", 3, 1, encoder="resnet18", up="transpose")
