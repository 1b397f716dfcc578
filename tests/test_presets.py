"""Every shipped preset: its recipe, the architecture its options build, a few training steps.

The architecture is read off the built model, module by module (:func:`architecture`), so a
preset whose YAML lost an option (the SiLU, the strided down-sampling, the SE block, a dropout)
fails here rather than quietly training the default U-Net.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import SqueezeExcitation

from unetkit import Task, build_model
from unetkit.checkpoint import load_checkpoint, model_from_checkpoint
from unetkit.cli.main import main
from unetkit.config import available_presets, load_config

pytestmark = pytest.mark.usefixtures("one_thread")

EXPECTED = {
    "ccagt-silu-unet": {"num_classes": 8, "loss": "ce", "accum_steps": 4, "seed": 12},
    "se-unet-ce-dice": {"loss": "ce:0.7,dice:0.3"},
    "pet-unet": {"num_classes": 2, "scheduler": "plateau"},
    "pet-resnet34-unet": {"num_classes": 2, "scheduler": "plateau"},
    "drive-vessel-unet": {"num_classes": 2},
    "pet-adamw-dice-unet": {"num_classes": 2, "loss": "dice", "optimizer": "adamw"},
    "pet-adamw-dice-resnet34-unet": {"num_classes": 2, "loss": "dice", "optimizer": "adamw"},
}

PLAIN_UNET = {"activation": {"ReLU"}, "norm": {"BatchNorm2d"}, "width": 64, "down": {"maxpool"},
              "up": {"transpose"}, "se": 0, "dropout": set(), "resnet_blocks": 0}  # fmt: skip
RESNET34_UNET = {**PLAIN_UNET, "down": {"maxpool", "strided"}, "up": set(), "resnet_blocks": 16}
ARCHITECTURES = {
    "ccagt-silu-unet": {**PLAIN_UNET, "activation": {"SiLU"}, "width": 32},
    "drive-vessel-unet": {
        **PLAIN_UNET,
        "activation": {"LeakyReLU"},
        "width": 32,
        "down": {"strided"},
        "up": {"nearest"},
        "dropout": {0.2},
    },  # fmt: skip
    "pet-unet": PLAIN_UNET,
    "se-unet-ce-dice": {**PLAIN_UNET, "se": 1, "dropout": {0.3, 0.4}},
    "pet-resnet34-unet": RESNET34_UNET,
    "pet-adamw-dice-unet": PLAIN_UNET,
    "pet-adamw-dice-resnet34-unet": RESNET34_UNET,
}
RESNET_ENCODER = {"pet-resnet34-unet", "pet-adamw-dice-resnet34-unet"}
OVERLAY_PRESETS = {"pet-adamw-dice-unet", "pet-adamw-dice-resnet34-unet"}

# A few steps on tiny generated images in exact fp32: the preset's recipe with the data swapped
# for the synthetic set, U-Net widths shrunk to 4 and no warm-up (it must be shorter than 1 epoch)
TINY_RUN = ["--dataset", "synthetic", "--img-size", "32", "--epochs", "1", "--batch-size", "2",
            "--no-progress", "--precision", "fp32", "--no-channels-last", "--plan", "off",
            "data.synthetic_count=10", "optim.warmup_epochs=0", "eval.report=false",
            "eval.boundary=false", "eval.instances=false"]  # fmt: skip


def architecture(model: nn.Module) -> dict[str, object]:
    """What a model's modules say it is. SE blocks are counted, their inner ReLU left out."""
    in_se = {id(m) for se in model.modules() if isinstance(se, SqueezeExcitation)
             for m in se.modules()}  # fmt: skip
    own = [m for m in model.modules() if id(m) not in in_se]

    def names(*types: type) -> set[str]:
        return {type(m).__name__ for m in own if isinstance(m, types)}

    convs = [m for m in own if type(m) is nn.Conv2d]
    down = {"maxpool"} if names(nn.MaxPool2d) else set()
    if any(c.stride == (2, 2) and c.kernel_size == (3, 3) for c in convs):
        down.add("strided")
    up = {"transpose"} if names(nn.ConvTranspose2d) else set()
    up |= {m.mode for m in own if isinstance(m, nn.Upsample)}
    return {
        "activation": names(nn.ReLU, nn.SiLU, nn.LeakyReLU, nn.GELU),
        "norm": names(nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm),
        "width": convs[0].out_channels,
        "down": down,
        "up": up,
        "se": sum(isinstance(m, SqueezeExcitation) for m in model.modules()),
        "dropout": {m.p for m in own if isinstance(m, nn.Dropout | nn.Dropout2d)},
        "resnet_blocks": sum(isinstance(m, BasicBlock) for m in own),
    }


def preset_model(preset: str) -> tuple[nn.Module, int]:
    """The preset's model as configured (ImageNet weights off: no download), and its out size."""
    cfg = load_config(preset)
    options = dict(cfg.model.options)
    if "pretrained" in options:
        options["pretrained"] = False
    task = Task(cfg.task.num_classes or 4)
    torch.manual_seed(0)
    model = build_model(cfg.model.name, cfg.data.in_channels, task.out_channels, **options)
    return model.eval(), task.out_channels


def test_every_reference_system_is_shipped_and_tested():
    assert set(EXPECTED) == set(available_presets()) == set(ARCHITECTURES)


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_recipe(preset):
    cfg = load_config(preset)
    want = EXPECTED[preset]
    assert cfg.task.num_classes == want.get("num_classes", cfg.task.num_classes)
    assert cfg.loss.spec == want.get("loss", cfg.loss.spec)
    assert cfg.optim.scheduler == want.get("scheduler", cfg.optim.scheduler)
    assert cfg.optim.optimizer == want.get("optimizer", "adam")
    assert cfg.train.accum_steps == want.get("accum_steps", 1)
    assert cfg.train.seed == want.get("seed", cfg.train.seed)
    if preset.startswith("pet-"):
        assert (cfg.data.dataset, cfg.data.mode) == ("oxford-pet", "binary")
    if preset in RESNET_ENCODER:
        assert cfg.model.options["pretrained"] is True  # ImageNet weights, as the reference


@pytest.mark.parametrize("preset", sorted(ARCHITECTURES))
def test_preset_builds_its_architecture(preset):
    model, out_channels = preset_model(preset)
    assert architecture(model) == ARCHITECTURES[preset]
    with torch.inference_mode():
        logits = model(torch.randn(1, 3, 100, 130))  # an odd size: padded inside, cropped back
    assert logits.shape == (1, out_channels, 100, 130)
    assert torch.isfinite(logits).all()


def test_architecture_tells_the_options_apart():
    """The probe itself: each option the presets set changes what it reads."""
    small = {"base_width": 4, "depth": 2}
    plain = architecture(build_model("unet", 3, 1, **small))
    assert plain == {**PLAIN_UNET, "width": 4}
    changed = {"activation": "silu", "norm": "instance", "down": "strided", "up": "bilinear",
               "se_bottleneck": True, "dropout": 0.1}  # fmt: skip
    for option, value in changed.items():
        assert architecture(build_model("unet", 3, 1, **small, **{option: value})) != plain, option


@pytest.mark.parametrize("preset", sorted(ARCHITECTURES))
def test_preset_trains_a_few_steps_on_tiny_data(preset, tmp_path):
    run = tmp_path / "run"
    shrink = [] if preset in RESNET_ENCODER else ["model.options.base_width=4"]
    pretrained = ["model.options.pretrained=false"] if preset in RESNET_ENCODER else []
    assert main(["train", "--config", preset, "--out", str(run), *TINY_RUN, *shrink,
                 *pretrained]) == 0  # fmt: skip
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["processes"]["optimizer_steps_by_rank"][0] >= 1
    assert math.isfinite(last["history"][-1]["train_loss"])
    preset_cfg = load_config(preset)
    assert last["config"]["loss"]["spec"] == preset_cfg.loss.spec
    assert last["config"]["optim"]["optimizer"] == preset_cfg.optim.optimizer
    trained = model_from_checkpoint(run / "checkpoints" / "best.pt").model
    width = 64 if preset in RESNET_ENCODER else 4
    assert architecture(trained) == {**ARCHITECTURES[preset], "width": width}
    assert "mean_iou" in json.loads((run / "metrics.json").read_text())["dataset"]
    if preset in OVERLAY_PRESETS:  # the command its YAML and the README give
        _predicts_overlays(run, tmp_path)


def _predicts_overlays(run, tmp_path) -> None:
    photo = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    best = run / "checkpoints" / "best.pt"
    assert main(["predict", "--checkpoint", str(best), "--input", str(tmp_path / "photo.png"),
                 "--out", str(tmp_path / "masks"), "--overlay", "--no-progress"]) == 0  # fmt: skip
    overlay = np.asarray(Image.open(tmp_path / "masks" / "photo_overlay.png"))
    assert overlay.shape == (40, 50, 3)
