"""The U-Net family: ResEnc U-Net, U-Net++, Attention U-Net and deep supervision for all of them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from test_export import TOLERANCE, raw_onnx_logits, write_checkpoint
from test_models import count_parameters, overfit
from torch import nn

from unetkit.checkpoint import model_from_checkpoint
from unetkit.inference.export import export_model
from unetkit.losses import build_loss
from unetkit.losses.deep_supervision import deep_supervision_loss, resize_masks
from unetkit.models import DeepSupervisionOutput, build_model, list_models, model_description
from unetkit.models.attention_unet import AttentionGate
from unetkit.models.blocks import ResidualBlock
from unetkit.models.deep_supervision import forward_options, halving_weights
from unetkit.models.resenc_unet import PRESETS
from unetkit.speed.bench import count_flops
from unetkit.tasks import Task

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "resenc-unet": {"widths": (4, 8, 16, 16), "blocks_per_stage": (1, 2, 1, 1)},
    "unet-plus-plus": {"base_width": 4, "depth": 3},
    "attention-unet": {"base_width": 4, "depth": 3},
    "unet": {"base_width": 4, "depth": 3},
}
FAMILY = sorted(TINY)


def tiny(name: str, out_channels: int = 2, **options: object) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, 3, out_channels, **{**TINY[name], **options})


def test_registry_holds_the_family_with_one_line_descriptions() -> None:
    assert set(FAMILY) | {"resnet34-unet"} <= set(list_models())
    for name in list_models():
        description = model_description(name)
        assert description and "\n" not in description, name
        assert "``" not in description and not description.endswith("."), description
    assert "Oktay" in model_description("attention-unet")


def test_unetkit_list_prints_each_model_with_its_description(capsys) -> None:
    from unetkit.cli.commands import list_things

    list_things(None)
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.strip().startswith("unet-plus-plus "))
    assert "U-Net++" in row and "Zhou" in row


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("train", [True, False])
def test_family_returns_logits_of_any_input_size(name: str, train: bool) -> None:
    model = tiny(name, out_channels=3).train(train)
    sizes = [(37, 53), (48, 32)] + ([] if train else [(1, 1), (5, 3)])  # 1x1: no batch statistics
    for height, width in sizes:
        logits = model(torch.randn(2, 3, height, width))
        assert logits.shape == (2, 3, height, width)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "lr"),
    [("resenc-unet", 1e-2), ("unet-plus-plus", 1e-2), ("attention-unet", 1e-2)],
)
def test_family_overfits_one_batch(name: str, lr: float) -> None:
    model = tiny(name, out_channels=1)
    loss_drop, accuracy = overfit(model, num_classes=2, lr=lr, steps=40)
    assert loss_drop > 0.5
    assert accuracy > 0.9


def test_parameter_counts_match_the_references() -> None:
    assert 9.0e6 < count_parameters(build_model("unet-plus-plus", 3, 1)) < 9.1e6  # paper: 9.04M
    unet = count_parameters(build_model("unet", 3, 1))
    gated = count_parameters(build_model("attention-unet", 3, 1))
    # four gates, skip width C: 2x2 conv C->C/2, 1x1 2C->C/2, 1x1 C/2->1, 1x1 C->C, norm 2C
    expected = 0
    for c in (64, 128, 256, 512):
        half = c // 2
        expected += 4 * c * half + (2 * c * half + half) + (half + 1) + (c * c + c) + 2 * c
    assert gated - unet == expected
    cpu, m, large = (
        count_parameters(build_model("resenc-unet", 3, 1, size=size)) for size in ("cpu", "m", "l")
    )
    assert 3e6 < cpu < 4e6 and 100e6 < m < 110e6 and large > m


def test_resenc_presets_follow_nnunet_2d_layout() -> None:
    model = build_model("resenc-unet", 1, 2, size="m")
    assert model.widths == (32, 64, 128, 256, 512, 512, 512)
    assert model.blocks_per_stage == (1, 3, 4, 6, 6, 6, 6) == PRESETS["m"].blocks_per_stage
    assert model.size_multiple == 128  # 2**7: the deepest map keeps 2x2 pixels
    assert [len(stage) for stage in model.stages] == list(model.blocks_per_stage)
    strides = [stage[0].conv1[0].stride[0] for stage in model.stages]
    assert strides == [1, 2, 2, 2, 2, 2, 2]  # the first block of each later stage downsamples
    assert all(block.conv1[0].stride == (1, 1) for stage in model.stages for block in stage[1:])
    assert all(isinstance(layer, nn.InstanceNorm2d) for layer in model.stem if "Norm" in str(layer))
    assert sum(isinstance(layer, nn.ConvTranspose2d) for layer in model.modules()) == 6
    assert isinstance(model.decoder[0][2], nn.LeakyReLU)
    assert build_model("resenc-unet", 1, 2, size="l").widths[-1] == 512
    capped = build_model("resenc-unet", 1, 2, size="cpu", n_stages=4, max_width=64)
    assert capped.widths == (16, 32, 64, 64) and capped.blocks_per_stage == (1, 2, 2, 2)


def test_residual_blocks_start_as_their_shortcut() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(4, 4, norm="batch").eval()
    features = torch.randn(1, 4, 8, 8)
    assert torch.allclose(block(features), F.leaky_relu(features, 0.01))  # branch zero at start
    down = ResidualBlock(4, 8, stride=2)
    assert [type(m) for m in down.shortcut] == [nn.AvgPool2d, nn.Conv2d, nn.InstanceNorm2d]
    assert down(features).shape == (1, 8, 4, 4)


def test_attention_gate_weighs_each_skip_pixel_in_zero_one() -> None:
    torch.manual_seed(0)
    gate = AttentionGate(8, 16, norm="none")
    skip, gating = torch.randn(2, 8, 12, 10), torch.randn(2, 16, 6, 5)
    alpha = gate.coefficients(skip, gating)
    assert alpha.shape == (2, 1, 12, 10) and alpha.min() > 0 and alpha.max() < 1
    with torch.no_grad():
        gate.psi.bias.fill_(-50.0)  # coefficients ~0: the gate shuts the skip
        assert torch.allclose(gate(skip, gating), gate.output(torch.zeros_like(skip)), atol=1e-6)
    model = tiny("attention-unet")
    assert len(model.gates) == 3 and model.gates[0].theta_x.in_channels == 16


def test_options_are_checked_and_typos_refused() -> None:
    with pytest.raises(ValueError, match=r"'base_widht'.*did you mean 'base_width'"):
        build_model("attention-unet", 3, 1, base_widht=8)
    with pytest.raises(ValueError, match=r"'deep_supervison'.*did you mean 'deep_supervision'"):
        build_model("unet-plus-plus", 3, 1, deep_supervison=True)
    with pytest.raises(ValueError, match=r"'block_per_stage'.*did you mean 'blocks_per_stage'"):
        build_model("resenc-unet", 3, 1, block_per_stage=(1, 2))
    with pytest.raises(ValueError, match=r"size must be one of cpu, m, l; got 'xl'"):
        build_model("resenc-unet", 3, 1, size="xl")
    with pytest.raises(ValueError, match=r"one width and one block count per stage.*n_stages=3"):
        build_model("resenc-unet", 3, 1, widths=(4, 8, 16), blocks_per_stage=(1, 2))
    with pytest.raises(ValueError, match=r"prune_to=2 needs a trained head.*deep_supervision"):
        build_model("unet-plus-plus", 3, 1, base_width=4, prune_to=2)
    with pytest.raises(ValueError, match=r"prune_to must lie in 1\.\.3"):
        tiny("unet-plus-plus", deep_supervision=True, prune_to=4)


# --- deep supervision -----------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILY)
def test_deep_supervision_heads_in_training_only(name: str) -> None:
    model = tiny(name, deep_supervision=True).train()
    images = torch.randn(2, 3, 37, 53)
    assert forward_options(model) == {"aux_heads": True}
    assert forward_options(tiny(name)) == {}
    output = model(images, aux_heads=True)
    assert isinstance(output, DeepSupervisionOutput) and len(output.heads) == 3
    assert output.heads[0].shape == (2, 2, 37, 53)
    if name == "unet-plus-plus":  # the top row: all at full resolution, equal weights
        assert all(head.shape == (2, 2, 37, 53) for head in output.heads)
        assert output.weights == pytest.approx((1 / 3,) * 3)
    else:  # 1/2 and 1/4 of the padded 40x56, cropped to cover the input
        assert [tuple(h.shape[-2:]) for h in output.heads[1:]] == [(19, 27), (10, 14)]
        assert output.weights == pytest.approx((4 / 7, 2 / 7, 1 / 7))
    assert model(images).shape == (2, 2, 37, 53)  # a plain call: main logits, as before
    model.eval()
    with torch.no_grad():
        main = model(images, aux_heads=True)
    assert isinstance(main, torch.Tensor) and main.shape == (2, 2, 37, 53)


def test_halving_weights_are_nnunet_s() -> None:
    assert halving_weights(1) == (1.0,)
    assert halving_weights(4) == pytest.approx((8 / 15, 4 / 15, 2 / 15, 1 / 15))


def test_deep_supervision_loss_is_the_weighted_sum_over_downsampled_targets() -> None:
    torch.manual_seed(0)
    masks = torch.randint(0, 3, (2, 8, 12))
    masks[0, :2, :2] = 255  # ignored pixels stay ignored after resizing
    small = resize_masks(masks, (4, 6))
    assert torch.equal(small, masks[:, ::2, ::2]) and small.dtype == masks.dtype
    assert (small == 255).sum() == 1
    criterion = build_loss("ce", Task(3))
    heads = (torch.randn(2, 3, 8, 12), torch.randn(2, 3, 4, 6))
    loss = deep_supervision_loss(criterion, DeepSupervisionOutput(heads, (2 / 3, 1 / 3)), masks)
    expected = 2 / 3 * criterion(heads[0], masks) + 1 / 3 * criterion(heads[1], small)
    assert torch.allclose(loss, expected)
    assert torch.allclose(
        deep_supervision_loss(criterion, heads[0], masks), criterion(heads[0], masks)
    )


def test_aux_heads_receive_gradients_and_change_the_loss() -> None:
    model = tiny("unet", out_channels=1, deep_supervision=True).train()
    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    criterion = build_loss("ce:0.5,dice:0.5", Task(2))
    output = model(images, **forward_options(model))
    loss = deep_supervision_loss(criterion, output, masks)
    loss.backward()
    assert all(head.weight.grad.abs().sum() > 0 for head in model.aux_heads)
    assert not torch.allclose(loss, criterion(output.heads[0], masks))


def test_training_with_deep_supervision_uses_every_head(tmp_path, monkeypatch) -> None:
    from test_training_control import TINY as FLAGS

    from unetkit.cli.main import main
    from unetkit.training import steps

    seen = []
    real = steps.deep_supervision_loss

    def spy(criterion, logits, masks):
        seen.append(len(logits.heads) if isinstance(logits, DeepSupervisionOutput) else 1)
        return real(criterion, logits, masks)

    monkeypatch.setattr(steps, "deep_supervision_loss", spy)
    keys = ["data.synthetic_count=8", "model.options.base_width=4", "model.options.depth=2"]
    args = [*FLAGS, "--epochs", "1", *keys, "model.options.deep_supervision=true"]
    assert main(["train", "--out", str(tmp_path / "run"), *args]) == 0
    assert seen and set(seen) == {2}  # main + the 1/2-resolution head at every step


@pytest.mark.parametrize("name", FAMILY)
def test_onnx_export_has_one_output_no_aux_weights_and_parity(name, tmp_path) -> None:
    options = {**TINY[name], "deep_supervision": True}
    checkpoint = write_checkpoint(tmp_path / "m.pt", 3, name, options)
    report = export_model(checkpoint, tmp_path / "m.onnx")
    assert all(0 <= d < TOLERANCE for d in report.max_abs_diff.values())
    graph = onnx.load(str(report.path)).graph
    assert len(graph.output) == 1
    assert not [i.name for i in graph.initializer if "aux_heads" in i.name]
    model = model_from_checkpoint(checkpoint).model
    assert model.aux_heads is not None  # the checkpoint has them; the export does not
    images = torch.randn(1, 3, 45, 38, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(images).numpy()
    assert np.abs(raw_onnx_logits(report.path, images) - expected).max() < TOLERANCE


# --- U-Net++ pruning ------------------------------------------------------------------------


def test_unet_plus_plus_pruning_keeps_shape_and_cuts_flops() -> None:
    model = build_model("unet-plus-plus", 3, 2, base_width=8, deep_supervision=True).eval()
    images = torch.randn(1, 3, 64, 64)
    flops = {}
    with torch.no_grad():
        full = model(images)
        grid_top = model.nested(images, 4)[0]  # 64x64: no padding
        for columns in (4, 3, 2, 1):
            model.prune(columns)
            logits = model(images)
            assert logits.shape == full.shape
            flops[columns] = count_flops(lambda: model(images))
            # X[0][L] of the pruned network is the full network's X[0][L]
            assert torch.allclose(logits, model._head(columns)(grid_top[columns]), atol=1e-5)
    assert flops[4] > flops[3] > flops[2] > flops[1]
    assert flops[1] < 0.2 * flops[4]
    model.prune(4)
    assert torch.equal(model(images), full)
    model.prune(2)
    assert model.train()(images).shape == full.shape  # training always runs every column
    assert len(model.train()(images, aux_heads=True).heads) == 4


PLANNABLE = {**TINY, "unet": {"encoder": "resnet18", "base_width": 4}}  # the timm route too


@pytest.mark.parametrize("name", sorted(PLANNABLE))
def test_bench_counts_flops_and_the_planner_measures_each_family_model(name, tmp_path) -> None:
    from test_planning import blob, folder_config, write_folder

    from unetkit.config import load_config
    from unetkit.planning.plan import make_plan
    from unetkit.speed.bench import benchmark

    result = benchmark(name, 64, 1, steps=1, warmup=0, model_options=PLANNABLE[name], gemm_size=0)
    assert result["gflops_per_image"] > 0 and result["inference"]["images_per_s"] > 0
    root = write_folder(tmp_path / "blob", blob, count=6, size=(64, 64))
    base = folder_config(root, batch_size=2, precision="fp32", channels_last=False).to_dict()
    options = {f"model.options.{key}": value for key, value in PLANNABLE[name].items()}
    cfg = load_config(base=base, overrides={"model.name": name, "data.img_size": [64, 64]})
    cfg = load_config(base=cfg.to_dict(), overrides=options)
    fixed = {"model.name", "data.img_size", *options}
    plan = make_plan(cfg, budget_seconds=30.0, progress=False, fixed=fixed)
    assert [label.split(" ")[0] for label in plan.measured["candidates_ms_per_step"]] == [name]
    assert "model.name" not in plan.overrides(fixed)
