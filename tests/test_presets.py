"""Every shipped preset builds its model, and that model takes an odd-sized input."""

from __future__ import annotations

import pytest
import torch

from unetkit import Task, build_model
from unetkit.config import available_presets, load_config

EXPECTED = {
    "ccagt-silu-unet": {"num_classes": 8, "loss": "ce", "accum_steps": 4, "seed": 12},
    "se-unet-ce-dice": {"loss": "ce:0.7,dice:0.3"},
    "pet-unet": {"num_classes": 2, "scheduler": "plateau"},
    "pet-resnet34-unet": {"num_classes": 2, "scheduler": "plateau"},
    "drive-vessel-unet": {"num_classes": 2},
}


def test_the_five_reference_systems_are_shipped():
    assert set(EXPECTED) <= set(available_presets())


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_recipe(preset):
    cfg = load_config(preset)
    want = EXPECTED[preset]
    assert cfg.task.num_classes == want.get("num_classes", cfg.task.num_classes)
    assert cfg.loss.spec == want.get("loss", cfg.loss.spec)
    assert cfg.optim.scheduler == want.get("scheduler", cfg.optim.scheduler)
    assert cfg.train.accum_steps == want.get("accum_steps", 1)
    assert cfg.train.seed == want.get("seed", cfg.train.seed)


@pytest.mark.parametrize("preset", available_presets())
def test_preset_model_takes_an_odd_size(preset):
    cfg = load_config(preset)
    options = (
        {**cfg.model.options, "pretrained": False}
        if "pretrained" in cfg.model.options
        else cfg.model.options
    )
    task = Task(cfg.task.num_classes or 4)
    torch.manual_seed(0)
    model = build_model(cfg.model.name, cfg.data.in_channels, task.out_channels, **options).eval()
    with torch.inference_mode():
        logits = model(torch.randn(1, cfg.data.in_channels, 100, 130))
    assert logits.shape == (1, task.out_channels, 100, 130)
    assert torch.isfinite(logits).all()
