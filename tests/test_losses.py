"""Losses: hand-computed values, ignore handling, weights, spec parsing and equivalences."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unetkit.losses import LOSS_NAMES, build_loss, parse_loss_spec
from unetkit.tasks import IGNORE_INDEX, Task

BINARY = Task(2)
THREE = Task(3)
LN = math.log


def binary_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits with sigmoids [[0.5, 0.75], [0.25, *]] and target [[1, 1], [0, ignore]]."""
    logits = torch.tensor([[[[0.0, LN(3)], [-LN(3), 2.0]]]], requires_grad=True)
    target = torch.tensor([[[1, 1], [0, IGNORE_INDEX]]])
    return logits, target


def multiclass_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Two pixels: softmax [1/2, 1/3, 1/6] (true 0) and [1/5, 3/5, 1/5] (true 1).

    Hard predictions are 0 and 1, so class 2 is neither seen nor predicted.
    """
    pixel_a = [LN(3), LN(2), 0.0]
    pixel_b = [0.0, LN(3), 0.0]
    logits = torch.tensor([pixel_a, pixel_b]).T.reshape(1, 3, 1, 2).clone().requires_grad_(True)
    target = torch.tensor([[[0, 1]]])
    return logits, target


def value(spec: str, task: Task, logits, target, **kwargs) -> float:
    return float(build_loss(spec, task, **kwargs)(logits, target).detach())


# --- hand-computed values -------------------------------------------------------------------


def test_binary_ce_and_bce_by_hand():
    logits, target = binary_case()
    # -log p for the true class: log 2, log 4/3 (p=0.75, y=1), log 4/3 (1-p=0.75, y=0)
    expected = (LN(2) + 2 * LN(4 / 3)) / 3
    assert value("ce", BINARY, logits, target) == pytest.approx(expected, rel=1e-6)
    assert value("bce", BINARY, logits, target) == pytest.approx(expected, rel=1e-6)


def test_binary_dice_by_hand():
    logits, target = binary_case()
    # foreground: intersection 0.5 + 0.75, sum p 1.5, sum t 2 -> dice 2.5 / 3.5
    assert value("dice", BINARY, logits, target) == pytest.approx(1 - 5 / 7, rel=1e-6)


def test_binary_focal_by_hand():
    logits, target = binary_case()
    # (1 - p_t)^2 * -log p_t with p_t = 0.5, 0.75, 0.75
    expected = (0.25 * LN(2) + 2 * 0.0625 * LN(4 / 3)) / 3
    assert value("focal", BINARY, logits, target) == pytest.approx(expected, rel=1e-6)


def test_multiclass_ce_dice_focal_by_hand():
    logits, target = multiclass_case()
    assert value("ce", THREE, logits, target) == pytest.approx((LN(2) + LN(5 / 3)) / 2, rel=1e-6)
    # class 0: 2 * 0.5 / (0.5 + 0.2 + 1) = 10/17; class 1: 2 * 0.6 / (1/3 + 0.6 + 1) = 18/29;
    # class 2 is absent from target and prediction, so it is left out of the mean
    expected_dice = ((1 - 10 / 17) + (1 - 18 / 29)) / 2
    assert value("dice", THREE, logits, target) == pytest.approx(expected_dice, rel=1e-6)
    expected_focal = (0.5**2 * LN(2) + 0.4**2 * LN(5 / 3)) / 2
    assert value("focal", THREE, logits, target) == pytest.approx(expected_focal, rel=1e-6)


def test_weighted_sum_and_components():
    logits, target = multiclass_case()
    loss = build_loss("ce:0.7,dice:0.3", THREE)
    assert loss.last_components == {}
    total = loss(logits, target)
    ce = (LN(2) + LN(5 / 3)) / 2
    dice = ((1 - 10 / 17) + (1 - 18 / 29)) / 2
    assert float(total.detach()) == pytest.approx(0.7 * ce + 0.3 * dice, rel=1e-6)
    assert loss.last_components == pytest.approx({"ce": ce, "dice": dice}, rel=1e-6)
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# --- class weights --------------------------------------------------------------------------


def test_class_weights_by_hand():
    logits, target = multiclass_case()
    weights = [1.0, 3.0, 5.0]
    ce = value("ce", THREE, logits, target, class_weights=weights)
    assert ce == pytest.approx((LN(2) + 3 * LN(5 / 3)) / 4, rel=1e-6)
    dice = value("dice", THREE, logits, target, class_weights=weights)
    assert dice == pytest.approx((1 * (1 - 10 / 17) + 3 * (1 - 18 / 29)) / 4, rel=1e-6)

    logits, target = binary_case()
    # per-pixel weights w[y]: 3, 3, 1
    bce = value("bce", BINARY, logits, target, class_weights=[1.0, 3.0])
    assert bce == pytest.approx((3 * LN(2) + 3 * LN(4 / 3) + LN(4 / 3)) / 7, rel=1e-6)


def test_weighted_ce_matches_torch():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = IGNORE_INDEX
    weights = [0.5, 1.0, 2.0, 4.0]
    expected = F.cross_entropy(
        logits, target, weight=torch.tensor(weights), ignore_index=IGNORE_INDEX
    )
    got = value("ce", Task(4), logits, target, class_weights=weights)
    assert got == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(
    "weights", [[1.0, 2.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, float("nan"), 1.0]]
)
def test_bad_class_weights_rejected(weights):
    with pytest.raises(ValueError, match="class_weights"):
        build_loss("ce", THREE, class_weights=weights)


# --- ignore pixels --------------------------------------------------------------------------


def cases() -> list[tuple[str, Task]]:
    return [(name, task) for task in (BINARY, THREE) for name in LOSS_NAMES if name != "bce"] + [
        ("bce", BINARY)
    ]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("name", "task"), cases())
def test_ignored_pixels_do_not_matter(name, task, weighted):
    torch.manual_seed(1)
    target = torch.randint(0, task.num_classes, (2, 6, 6))
    target[:, :, :3] = IGNORE_INDEX
    weights = [1.0] + [2.0] * (task.num_classes - 1) if weighted else None
    loss = build_loss(name, task, class_weights=weights)
    base = torch.randn(2, task.out_channels, 6, 6)
    changed = base.clone()
    changed[:, :, :, :3] = 30 * torch.randn_like(changed[:, :, :, :3])
    logits = changed.requires_grad_(True)
    value_changed = loss(logits, target)
    value_changed.backward()
    expected = float(loss(base, target))
    assert float(value_changed.detach()) == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert torch.all(logits.grad[:, :, :, :3] == 0)
    assert logits.grad[:, :, :, 3:].abs().sum() > 0


@pytest.mark.parametrize(("name", "task"), cases())
def test_all_ignore_gives_zero_loss_and_zero_gradient(name, task):
    logits = torch.randn(2, task.out_channels, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE_INDEX)
    loss = build_loss(name, task)(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad == 0)


# --- equivalences ---------------------------------------------------------------------------


def test_binary_ce_equals_two_class_softmax_ce():
    torch.manual_seed(2)
    z = torch.randn(2, 1, 5, 5)
    target = torch.randint(0, 2, (2, 5, 5))
    target[1, 0] = IGNORE_INDEX
    two_channel = torch.cat([torch.zeros_like(z), z], dim=1)
    expected = F.cross_entropy(two_channel, target, ignore_index=IGNORE_INDEX)
    assert value("ce", BINARY, z, target) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("task", [BINARY, THREE])
def test_focal_with_gamma_zero_equals_ce(task):
    torch.manual_seed(3)
    logits = torch.randn(2, task.out_channels, 5, 5)
    target = torch.randint(0, task.num_classes, (2, 5, 5))
    target[0, 1:3] = IGNORE_INDEX
    weights = [float(c + 1) for c in range(task.num_classes)]
    focal = value("focal", task, logits, target, class_weights=weights, focal_gamma=0.0)
    ce = value("ce", task, logits, target, class_weights=weights)
    assert focal == pytest.approx(ce, rel=1e-6)
    assert value("focal", task, logits, target) < ce  # gamma=2 down-weights every pixel


@pytest.mark.parametrize("task", [BINARY, THREE])
def test_dice_on_perfect_prediction_is_zero(task):
    torch.manual_seed(4)
    target = torch.randint(0, task.num_classes, (2, 6, 6))
    if task.is_binary:
        logits = (target.float() * 2 - 1).unsqueeze(1) * 30
    else:
        logits = F.one_hot(target, task.num_classes).permute(0, 3, 1, 2).float() * 30
    assert value("dice", task, logits, target) == pytest.approx(0.0, abs=1e-6)
    assert value("dice", task, -logits, target) > 0.99


def test_binary_dice_on_empty_mask():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    background = torch.full((1, 1, 4, 4), -5.0)
    # foreground neither present nor predicted: no Dice term, loss 0
    assert value("dice", BINARY, background, target) == 0.0
    # one false-positive pixel: foreground is predicted, intersection is 0, loss 1
    background[0, 0, 0, 0] = 5.0
    assert value("dice", BINARY, background, target) == pytest.approx(1.0)


# --- spec parsing and errors ----------------------------------------------------------------


def test_parse_spec():
    assert parse_loss_spec("ce:0.7,dice:0.3") == [("ce", 0.7), ("dice", 0.3)]
    assert parse_loss_spec("dice") == [("dice", 1.0)]
    assert parse_loss_spec(" CE : 0.5 , Focal ") == [("ce", 0.5), ("focal", 1.0)]
    assert parse_loss_spec("ce:1,dice:0") == [("ce", 1.0), ("dice", 0.0)]


@pytest.mark.parametrize(
    "spec", ["", "  ", "bce+dice", "ce:abc", "ce:-1", "ce,ce", "ce:0", "ce:0.5,", "ce:0.5:1", "iou"]
)
def test_malformed_spec_is_rejected_with_help(spec):
    with pytest.raises(ValueError) as error:
        parse_loss_spec(spec)
    message = str(error.value)
    assert "accepted names: bce, ce, dice, focal" in message
    assert "ce:0.7,dice:0.3" in message


def test_bce_on_multiclass_points_to_ce():
    with pytest.raises(ValueError, match="use 'ce'"):
        build_loss("bce", THREE)


def test_negative_focal_gamma_rejected():
    with pytest.raises(ValueError, match="focal_gamma"):
        build_loss("focal", BINARY, focal_gamma=-1.0)


def test_bad_inputs_are_explained():
    loss = build_loss("ce", THREE)
    with pytest.raises(ValueError, match="outside 0..2"):
        loss(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 7]]]))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target must be"):
        loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))
