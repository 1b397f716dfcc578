"""Model registry and architectures: any-size shapes, options, overfitting, pretrained weights."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet34_Weights, resnet34

from unetkit.models import build_model, list_models, model_options
from unetkit.models.blocks import group_count, make_activation, make_norm
from unetkit.models.padding import crop_padding, pad_to_multiple
from unetkit.models.resnet_unet import load_encoder_weights

SMALL = {"unet": {"base_width": 8}, "resnet34-unet": {"decoder_widths": (32, 16, 16, 8, 8)}}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: on a busy 2-core machine torch's thread pool spins, ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_registry_lists_the_models_sorted() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"attention-unet", "resenc-unet", "resnet34-unet", "unet", "unet-plus-plus"} <= set(
        names
    )
    assert model_options("unet")["base_width"] == 64


@pytest.mark.parametrize("name", sorted(SMALL))
def test_models_take_out_channels_not_num_classes(name: str) -> None:
    assert not {"in_channels", "out_channels", "num_classes"} & set(model_options(name))
    model = build_model(name, in_channels=3, out_channels=5, **SMALL[name]).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5, 32, 32)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize(
    ("batch", "channels", "height", "width", "train"),
    [(2, 3, 100, 130, True), (2, 1, 37, 41, True), (1, 3, 1, 1, False), (1, 2, 65, 3, False)],
)
def test_every_model_returns_logits_of_the_input_size(
    name: str, batch: int, channels: int, height: int, width: int, train: bool
) -> None:
    torch.manual_seed(0)
    model = build_model(name, channels, 4, **SMALL[name]).train(train)
    logits = model(torch.randn(batch, channels, height, width))
    assert logits.shape == (batch, 4, height, width)
    assert torch.isfinite(logits).all()


UNET_VARIANTS = [
    {},
    {"down": "strided"},
    {"up": "bilinear"},
    {"up": "nearest", "down": "strided"},
    {"norm": "group", "activation": "silu"},
    {"norm": "instance", "activation": "gelu"},
    {"norm": "none", "activation": "leaky_relu", "leaky_slope": 0.2},
    {"se_bottleneck": True, "dropout": 0.2, "bottleneck_dropout": 0.5},
    {"depth": 2},
    {"depth": 5},
]


@pytest.mark.parametrize("options", UNET_VARIANTS, ids=lambda o: ",".join(o) or "default")
def test_unet_options_keep_shapes(options: dict) -> None:
    torch.manual_seed(0)
    model = build_model("unet", 3, 2, base_width=8, **options)
    assert model(torch.randn(2, 3, 100, 130)).shape == (2, 2, 100, 130)
    assert model.eval()(torch.randn(1, 3, 37, 41)).shape == (1, 2, 37, 41)


def test_unet_options_change_the_architecture() -> None:
    base = build_model("unet", 3, 1, base_width=8)
    assert any(isinstance(m, nn.ConvTranspose2d) for m in base.modules())
    assert sum(isinstance(m, nn.MaxPool2d) for m in base.modules()) == 4
    varied = build_model(
        "unet", 3, 1, base_width=8, depth=3, down="strided", up="bilinear", norm="group"
    )
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.MaxPool2d)) for m in varied.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in varied.modules())
    assert varied.encoder[-1][-1][-1][0].out_channels == 8 * 2**3
    se = build_model("unet", 3, 1, base_width=8, se_bottleneck=True, dropout=0.1)
    assert count_parameters(se) > count_parameters(base)
    assert sum(isinstance(m, nn.Dropout2d) for m in se.modules()) == 9  # one per conv block


def test_classic_unet_has_about_31m_parameters() -> None:
    model = build_model("unet", 3, 1).eval()
    assert 30.5e6 < count_parameters(model) < 31.5e6  # Ronneberger's U-Net: ~31.0M
    with torch.no_grad():
        assert model(torch.randn(1, 3, 20, 27)).shape == (1, 1, 20, 27)


def test_resnet34_unet_has_about_24m_parameters_and_frozen_encoder_stays_eval() -> None:
    model = build_model("resnet34-unet", 3, 1, freeze_encoder=True).train()
    assert 24e6 < count_parameters(model) < 25e6  # resnet34 (21.3M without fc) + decoder
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert not model.encoder.training and model.decoder.training


def overfit(model: nn.Module, num_classes: int, lr: float, steps: int = 60) -> tuple[float, float]:
    """Train on 2 images of noisy shapes; return (loss drop as a fraction, pixel accuracy)."""
    torch.manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(48), indexing="ij")
    disk = ((rows - 14) ** 2 + (cols - 20) ** 2 < 81).long()
    bar = ((cols > 30) & (rows > 5) & (rows < 28)).long()
    masks = torch.stack([disk, bar + 2 * disk * (num_classes > 2)]).clamp(max=num_classes - 1)
    images = masks[:, None].float().repeat(1, 3, 1, 1) + 0.3 * torch.randn(2, 3, 32, 48)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    losses = []
    for _ in range(steps):
        logits = model(images)
        if num_classes == 2:
            loss = F.binary_cross_entropy_with_logits(logits[:, 0], masks.float())
            predicted = (logits[:, 0] > 0).long()
        else:
            loss = F.cross_entropy(logits, masks)
            predicted = logits.argmax(dim=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    accuracy = (predicted == masks).float().mean().item()
    return 1 - losses[-1] / losses[0], accuracy


@pytest.mark.parametrize(
    ("name", "num_classes", "lr", "steps"),
    [("unet", 2, 1e-2, 40), ("unet", 3, 1e-2, 40), ("resnet34-unet", 2, 1e-2, 25)],
)
def test_every_model_overfits_one_batch(name: str, num_classes: int, lr: float, steps: int) -> None:
    torch.manual_seed(0)
    out_channels = 1 if num_classes == 2 else num_classes
    model = build_model(name, 3, out_channels, **SMALL[name])
    loss_drop, accuracy = overfit(model, num_classes, lr, steps)
    assert loss_drop > 0.6
    assert accuracy > 0.95


def test_unknown_model_and_option_are_explained() -> None:
    known = r"known models: attention-unet, resenc-unet, resnet34-unet, timm-unet, unet, unet-plus"
    with pytest.raises(ValueError, match=r"'unte'.*did you mean 'unet'.*" + known):
        build_model("unte", 3, 1)
    with pytest.raises(ValueError, match=r"'base_widht'.*did you mean 'base_width'.*depth"):
        build_model("unet", 3, 1, base_widht=8)
    with pytest.raises(ValueError, match=r"norm must be one of batch, group, instance, none"):
        build_model("unet", 3, 1, base_width=8, norm="layer")
    with pytest.raises(ValueError, match=r"up must be one of"):
        build_model("unet", 3, 1, base_width=8, up="pixelshuffle")
    with pytest.raises(ValueError, match=r"out_channels must be a positive integer"):
        build_model("unet", 3, 0)
    with pytest.raises(ValueError, match=r"decoder_widths needs 5"):
        build_model("resnet34-unet", 3, 1, decoder_widths=(8, 8))
    with pytest.raises(ValueError, match=r"expects images shaped \(N, 3, H, W\).*\(1, 1, 8, 8\)"):
        build_model("unet", 3, 1, base_width=8)(torch.zeros(1, 1, 8, 8))


def test_blocks_factories() -> None:
    assert [group_count(c) for c in (64, 12, 3, 7, 1)] == [8, 6, 3, 7, 1]
    assert make_norm("group", 12).num_groups == 6
    assert make_norm("instance", 4).affine
    assert isinstance(make_norm("none", 4), nn.Identity)
    assert make_activation("leaky_relu", 0.2).negative_slope == 0.2
    assert isinstance(make_activation("gelu"), nn.GELU)


def test_padding_reflects_when_possible_and_crops_back() -> None:
    image = torch.arange(15.0).reshape(1, 1, 3, 5)
    padded, padding = pad_to_multiple(image, 4)
    assert padded.shape == (1, 1, 4, 8) and padding == (1, 2, 0, 1)
    assert padded[0, 0, 0, :3].tolist() == [1.0, 0.0, 1.0]  # reflected, not zero or repeated
    assert torch.equal(crop_padding(padded, padding), image)
    tiny, padding = pad_to_multiple(torch.ones(1, 1, 1, 1), 32)
    assert tiny.shape == (1, 1, 32, 32) and torch.equal(tiny, torch.ones_like(tiny))
    assert crop_padding(tiny, padding).shape == (1, 1, 1, 1)


# --- pretrained encoder weights -------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A state dict of a freshly initialised torchvision resnet34, saved to a .pth file."""
    torch.manual_seed(1)
    state = resnet34().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet34-local.pth"
    torch.save(state, path)
    return path, state


def assert_encoder_matches(model: nn.Module, state: dict, in_channels: int = 3) -> None:
    layer4, stem_conv = model.encoder[4], model.encoder[0][0]
    assert torch.equal(layer4[2].conv2.weight, state["layer4.2.conv2.weight"])
    assert torch.equal(model.encoder[0][1].running_var, state["bn1.running_var"])
    rgb = state["conv1.weight"]
    if in_channels == 1:
        assert torch.allclose(stem_conv.weight, rgb.sum(dim=1, keepdim=True))
    elif in_channels == 3:
        assert torch.equal(stem_conv.weight, rgb)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_pretrained_from_local_file(resnet_weights: tuple[Path, dict], in_channels: int) -> None:
    path, state = resnet_weights
    model = build_model("resnet34-unet", in_channels, 2, pretrained=str(path))
    assert_encoder_matches(model, state, in_channels)
    assert model(torch.rand(2, in_channels, 40, 30)).shape == (2, 2, 40, 30)


def test_pretrained_with_four_channels_repeats_and_scales_rgb(resnet_weights) -> None:
    path, state = resnet_weights
    model = build_model("resnet34-unet", 4, 1, pretrained=path)
    rgb = state["conv1.weight"]
    expected = torch.cat([rgb, rgb[:, :1]], dim=1) * 0.75
    assert torch.allclose(model.encoder[0][0].weight, expected)


def test_pretrained_from_http_url_is_cached_in_torch_home(
    resnet_weights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, state = resnet_weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(variable, raising=False)

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    try:
        model = build_model("resnet34-unet", 1, 1, pretrained=url)
    finally:
        server.shutdown()
        server.server_close()
    assert_encoder_matches(model, state, in_channels=1)
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / path.name
    assert cached.stat().st_size == path.stat().st_size
    loaded = load_encoder_weights(url)  # the server is down: this must come from the cache
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])


def test_unreachable_url_explains_the_offline_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens on this port now
    with pytest.raises(OSError, match=r"could not download.*pretrained=<file.pth>"):
        load_encoder_weights(f"http://127.0.0.1:{port}/resnet34.pth")


def test_pretrained_true_uses_torchvision_imagenet_weights(resnet_weights, monkeypatch) -> None:
    _, state = resnet_weights
    requested = []

    def fake_download(url: str, **kwargs: object) -> dict:
        requested.append((url, kwargs["check_hash"]))
        return dict(state)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = build_model("resnet34-unet", 3, 1, pretrained=True)
    assert requested == [(ResNet34_Weights.IMAGENET1K_V1.url, True)]
    assert_encoder_matches(model, state)


def test_bad_weight_files_are_explained(resnet_weights, tmp_path: Path) -> None:
    _, state = resnet_weights
    with pytest.raises(FileNotFoundError, match=r"missing\.pth.*does not exist"):
        build_model("resnet34-unet", 3, 1, pretrained=str(tmp_path / "missing.pth"))
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing keys \['layer4.*1 unexpected keys"):
        build_model("resnet34-unet", 3, 1, pretrained=tmp_path / "partial.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"does not hold a state dict"):
        load_encoder_weights(tmp_path / "list.pth")
