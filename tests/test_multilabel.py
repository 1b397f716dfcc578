"""Multi-label tasks (issue 14): labels that overlap, one sigmoid each.

The task, the three mask layouts of the folder dataset, augmentation, the losses and the metrics
are checked by hand on tiny arrays; one end-to-end run trains on the synthetic demo, evaluates,
predicts, exports to ONNX and serves.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import TINY as CLI_TINY

from unetkit.checkpoint import load_checkpoint, model_from_checkpoint
from unetkit.cli.main import main
from unetkit.config import EvalConfig, load_config
from unetkit.data import DataError, build_splits, check_splits
from unetkit.data.registry import build_contents
from unetkit.data.transforms import augment, build_train_transform
from unetkit.losses import build_loss
from unetkit.losses.deep_supervision import resize_masks
from unetkit.metrics.multilabel import LabelConfusion, MultilabelMetrics, summarise_labels
from unetkit.palette import blend_labels, class_palette
from unetkit.tasks import IGNORE_INDEX, Task

LABELS = Task(2, multilabel=True)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- the task ------------------------------------------------------------------------------------


def test_a_multilabel_task_has_one_sigmoid_per_label():
    task = Task(3, threshold=0.6, multilabel=True)
    assert (task.out_channels, task.is_binary, task.is_multilabel, task.kind) == (
        3,
        False,
        True,
        "multilabel",
    )
    logits = torch.tensor([0.0, 1.0, -2.0]).view(1, 3, 1, 1)
    probs = task.probabilities(logits)
    expected = [0.5, sigmoid(1.0), sigmoid(-2.0)]
    np.testing.assert_allclose(probs.flatten().numpy(), expected, rtol=1e-6)
    # 0.5 and 0.12 are below the threshold 0.6, 0.73 above: labels are not exclusive
    assert task.labels(logits).flatten().tolist() == [0, 1, 0]
    assert task.labels_from_probabilities(probs).shape == (1, 3, 1, 1)


def test_two_labels_are_not_a_binary_task():
    assert LABELS.out_channels == 2 and not LABELS.is_binary
    assert Task(2).out_channels == 1 and Task(2).is_binary


def test_the_record_carries_the_type_and_leaves_other_tasks_as_they_were():
    assert Task(2).to_dict() == {"num_classes": 2, "threshold": 0.5}
    record = Task(3, 0.4, multilabel=True).to_dict()
    assert record == {"num_classes": 3, "threshold": 0.4, "type": "multilabel"}
    assert Task.from_dict(record) == Task(3, 0.4, multilabel=True)
    assert Task.from_dict({"num_classes": 3}) == Task(3)
    with pytest.raises(TypeError, match="run"):
        Task.from_dict({"num_classes": 3, "run": "os.system"})


def test_task_type_from_the_config():
    assert Task.from_config(4, 0.5, "auto") == Task(4)
    assert Task.from_config(1, 0.5, "multilabel") == Task(1, multilabel=True)
    with pytest.raises(ValueError, match="does not fit task.num_classes=3"):
        Task.from_config(3, 0.5, "binary")
    with pytest.raises(ValueError, match="accepted: auto, binary, multiclass, multilabel"):
        Task.from_config(3, 0.5, "multi-label")


# --- losses by hand ------------------------------------------------------------------------------

# one image 2 x 2, two labels; label 0 has an ignored pixel, label 1 is absent everywhere
LOGITS = torch.tensor([[[[2.0, -2.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])
TARGET = torch.tensor([[[[1, 0], [IGNORE_INDEX, 1]], [[0, 0], [0, 0]]]])


def test_ce_is_bce_per_label_over_the_counted_label_pixels():
    loss = build_loss("ce", LABELS)(LOGITS, TARGET)
    softplus_minus_2 = math.log(1 + math.exp(-2.0))  # logit 2 for a 1, logit -2 for a 0
    expected = (2 * softplus_minus_2 + 5 * math.log(2.0)) / 7  # 3 + 4 counted label pixels
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert build_loss("bce", LABELS)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    focal = build_loss("focal", LABELS, focal_gamma=0.0)(LOGITS, TARGET)
    assert focal.item() == pytest.approx(expected, rel=1e-5)


def test_label_weights_weigh_the_label_pixels():
    weighted = build_loss("ce", LABELS, class_weights=[1.0, 0.0])(LOGITS, TARGET)
    softplus_minus_2 = math.log(1 + math.exp(-2.0))
    expected = (2 * softplus_minus_2 + math.log(2.0)) / 3  # label 0's three pixels only
    assert weighted.item() == pytest.approx(expected, rel=1e-6)


def test_dice_is_averaged_over_the_labels_present():
    loss = build_loss("dice", LABELS)(LOGITS, TARGET)
    # label 0: p = s(2), s(-2), 0.5 at the counted pixels, targets 1, 0, 1
    intersection = sigmoid(2.0) + 0.5
    denominator = sigmoid(2.0) + sigmoid(-2.0) + 0.5 + 2
    # label 1 is neither in the target nor predicted (0.5 is not above 0.5): left out
    assert loss.item() == pytest.approx(1 - 2 * intersection / denominator, rel=1e-6)


def test_losses_refuse_a_target_that_is_not_one_map_per_label():
    with pytest.raises(ValueError, match=r"\(N, L, H, W\)"):
        build_loss("ce", LABELS)(LOGITS, TARGET[:, 0])
    with pytest.raises(ValueError, match=r"class ids \[2\]"):
        build_loss("ce", LABELS)(LOGITS, TARGET.clamp(max=1) * 2)


def test_deep_supervision_resizes_every_label_map():
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.int64)
    masks[0, 1, :2] = 1
    small = resize_masks(masks, (2, 2))
    assert small.shape == (1, 2, 2, 2)
    assert small[0, 1].tolist() == [[1, 1], [0, 0]] and small[0, 0].sum() == 0


# --- metrics by hand -----------------------------------------------------------------------------


def two_label_image() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 x 4 maps of labels A and B with known counts (see the test)."""
    target = np.zeros((2, 4, 4), dtype=np.uint8)
    prediction = np.zeros((2, 4, 4), dtype=np.uint8)
    target[0, :2, :2] = 1  # A: 4 pixels
    prediction[0, :2, :3] = 1  # 6 predicted, 4 right
    target[1, :, 3] = 1  # B: the right column ...
    target[1, 3, 3] = IGNORE_INDEX  # ... its last pixel not counted: 3 pixels
    prediction[1, 0, 3] = prediction[1, 3, 3] = 1  # 1 right, 1 on the ignored pixel
    probs = np.where(prediction == 1, 0.95, 0.05).astype(np.float32)
    return probs, prediction, target


def test_label_metrics_by_hand():
    probs, prediction, target = two_label_image()
    metrics = MultilabelMetrics(["A", "B"], EvalConfig(instances=False, cldice=False))
    metrics.add("img", probs, prediction, target)
    result = metrics.result()
    rows = {row["name"]: row for row in result["dataset"]["per_class"]}
    assert rows["A"]["iou"] == pytest.approx(4 / 6) and rows["A"]["dice"] == pytest.approx(0.8)
    assert rows["B"]["iou"] == pytest.approx(1 / 3) and rows["B"]["dice"] == pytest.approx(0.5)
    assert rows["B"]["support"] == 3 and rows["B"]["predicted"] == 1  # the ignored pixel is out
    assert result["dataset"]["mean_iou"] == pytest.approx(0.5)
    assert result["dataset"]["mean_dice"] == pytest.approx(0.65)
    assert result["per_image"]["mean_iou"]["mean"] == pytest.approx(0.5)
    # A: 4 positives at 0.95; of 12 negatives 2 at 0.95 (ties count 1/2) and 10 at 0.05
    free = {row["name"]: row for row in result["threshold_free"]["per_class"]}
    assert free["A"]["roc_auc"] == pytest.approx((4 * 10 + 4 * 2 * 0.5) / (4 * 12))
    assert free["A"]["average_precision"] == pytest.approx(4 / 6)
    assert set(result["boundary"]) >= {"hd95", "assd", "boundary_iou", "per_class"}
    assert [label["name"] for label in result["per_label"]] == ["A", "B"]
    assert result["per_label"][0]["dataset"]["foreground_iou"] == pytest.approx(4 / 6)


def test_per_image_rows_have_a_column_per_label():
    probs, prediction, target = two_label_image()
    metrics = MultilabelMetrics(["A", "B"], EvalConfig(instances=False, boundary=False))
    metrics.add("img", probs, prediction, target)
    empty = np.zeros_like(target)
    metrics.add("empty", np.zeros_like(probs), empty, empty)  # no label anywhere: undefined
    first, second = metrics.rows()
    assert first["iou/A"] == pytest.approx(4 / 6) and first["dice/B"] == pytest.approx(0.5)
    assert first["mean_iou"] == pytest.approx(0.5)
    assert second["mean_iou"] is None and second["iou/A"] is None
    assert metrics.result()["per_image"]["mean_iou"] == {
        "mean": pytest.approx(0.5),
        "std": 0.0,
        "images": 1,
    }


def test_a_label_never_seen_nor_predicted_is_left_out_of_the_mean():
    probs, prediction, target = two_label_image()
    target[1], prediction[1] = 0, 0
    metrics = MultilabelMetrics(["A", "B"], EvalConfig(threshold_free=False, instances=False))
    metrics.add("img", probs, prediction, target)
    dataset = metrics.result()["dataset"]
    assert dataset["per_class"][1]["iou"] is None
    assert dataset["mean_iou"] == pytest.approx(4 / 6)


def test_validation_counts_with_one_binary_matrix_per_label():
    _, prediction, target = two_label_image()
    confusion = LabelConfusion(2)
    confusion.update(torch.from_numpy(prediction)[None], torch.from_numpy(target)[None])
    assert confusion.state[0].tolist() == [[10, 2], [0, 4]]  # rows: target, columns: prediction
    assert confusion.state[1].tolist() == [[12, 0], [2, 1]]
    summary = summarise_labels(confusion.state, ["A", "B"])
    assert summary["mean_iou"] == pytest.approx(0.5)


def test_metrics_refuse_maps_of_the_wrong_shape():
    probs, prediction, target = two_label_image()
    metrics = MultilabelMetrics(["A", "B", "C"])
    with pytest.raises(ValueError, match=r"must both be \(labels, H, W\) = \(3, 4, 4\)"):
        metrics.add("img", probs, prediction, target)


# --- the folder dataset: three ways to store labels ----------------------------------------------

SIZE = (6, 8)


def label_maps(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((2, *SIZE)) > 0.5).astype(np.uint8)


def write_images(root: Path, names: list[str]) -> None:
    (root / "images").mkdir(parents=True)
    for i, name in enumerate(names):
        picture = np.random.default_rng(i).integers(0, 255, (*SIZE, 3), dtype=np.uint8)
        Image.fromarray(picture).save(root / "images" / f"{name}.png")


def write_label_folders(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        for label, values in zip(("cell", "nucleus"), label_maps(i), strict=True):
            (root / "masks" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(values * 255).save(root / "masks" / label / f"{name}.png")


def write_tiffs(root: Path, names: list[str]) -> None:
    (root / "masks").mkdir(parents=True)
    for i, name in enumerate(names):
        pages = [Image.fromarray(values) for values in label_maps(i)]
        pages[0].save(root / "masks" / f"{name}.tif", save_all=True, append_images=pages[1:])


def write_npz(root: Path, names: list[str]) -> None:
    (root / "masks").mkdir(parents=True)
    for i, name in enumerate(names):
        np.savez(root / "masks" / f"{name}.npz", masks=label_maps(i))


def folder_config(root: Path, *extra: str):
    return load_config(
        dotted=["task.type=multilabel", "data.dataset=folder", f"data.root={root}", *extra]
    )


@pytest.mark.parametrize(
    ("write", "names"),
    [
        (write_label_folders, ["cell", "nucleus"]),
        (write_tiffs, ["label_1", "label_2"]),
        (write_npz, ["label_1", "label_2"]),
    ],
    ids=["label-folders", "multipage-tiff", "npz"],
)
def test_each_mask_layout_reads_as_label_maps(tmp_path, write, names):
    samples = [f"s{i}" for i in range(5)]
    write_images(tmp_path, samples)
    write(tmp_path, samples)
    contents = build_contents(folder_config(tmp_path))
    assert contents.class_names == names
    for index, name in enumerate(contents.source.names):
        image, mask = contents.source.load(index)
        assert image.shape == (*SIZE, 3)
        np.testing.assert_array_equal(mask, label_maps(samples.index(name)))
    splits = build_splits(folder_config(tmp_path, "data.split_ratios=[0.6,0.2,0.2]"))
    assert not [p for p in check_splits(splits) if p.is_error]


def test_label_names_from_labels_txt(tmp_path):
    write_images(tmp_path, ["a"])
    write_npz(tmp_path, ["a"])
    (tmp_path / "labels.txt").write_text("organ\nlesion\n")
    assert build_contents(folder_config(tmp_path)).class_names == ["organ", "lesion"]


def test_a_missing_label_mask_is_an_error_naming_the_file(tmp_path):
    write_images(tmp_path, ["a", "b"])
    write_label_folders(tmp_path, ["a", "b"])
    (tmp_path / "masks" / "nucleus" / "b.png").unlink()
    contents = build_contents(folder_config(tmp_path))
    assert contents.source.names == ["a"]
    errors = [p for p in contents.problems if p.is_error]
    assert len(errors) == 1 and errors[0].where.endswith("b.png")
    assert "['nucleus']" in errors[0].message
    assert str(tmp_path / "masks" / "nucleus" / "b") in errors[0].message


def test_label_masks_of_another_size_are_refused_naming_the_files(tmp_path):
    write_images(tmp_path, ["a"])
    write_label_folders(tmp_path, ["a"])
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "masks" / "cell" / "a.png")
    source = build_contents(folder_config(tmp_path)).source
    with pytest.raises(DataError, match="differ in size") as error:
        source.load(0)
    assert "cell" in str(error.value) and "nucleus" in str(error.value)


def test_an_npz_of_the_wrong_label_count_or_values_is_refused(tmp_path):
    write_images(tmp_path, ["a"])
    write_npz(tmp_path, ["a"])
    source = build_contents(folder_config(tmp_path, "task.class_names=[x,y,z]")).source
    with pytest.raises(DataError, match=r"a\.npz holds 2 label map\(s\) but the task has 3"):
        source.load(0)
    np.savez(tmp_path / "masks" / "a.npz", masks=np.full((2, *SIZE), 7, np.uint8))
    with pytest.raises(DataError, match=r"a\.npz: holds values \[7\]"):
        build_contents(folder_config(tmp_path)).source.load(0)


def test_num_classes_must_count_the_labels(tmp_path):
    write_images(tmp_path, ["a"])
    write_label_folders(tmp_path, ["a"])
    with pytest.raises(DataError, match="task.num_classes says 3 labels but the dataset has 2"):
        build_contents(folder_config(tmp_path, "task.num_classes=3"))


# --- augmentation --------------------------------------------------------------------------------


def test_augmentation_moves_every_label_with_the_image():
    base = np.zeros((32, 32), np.uint8)
    base[4:20, 6:14] = 1
    mask = np.stack([base, base, 1 - base])  # the second label is a copy, the third its inverse
    image = np.repeat((base * 255)[..., None], 3, axis=2)
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    flipped_image, flipped = augment(flip, image, mask)
    np.testing.assert_array_equal(flipped[0], base[:, ::-1])
    np.testing.assert_array_equal(flipped_image[..., 0] // 255, flipped[0])
    strong = build_train_transform((24, 24), "strong")
    for seed in range(5):
        strong.set_random_state(np.random.default_rng(seed), random.Random(seed))
        _, out = augment(strong, image, mask)
        assert out.shape == (3, 24, 24)
        counted = out[0] != IGNORE_INDEX
        np.testing.assert_array_equal(out[0], out[1])
        np.testing.assert_array_equal(out[2][counted], 1 - out[0][counted])


# --- pictures ------------------------------------------------------------------------------------


def test_blended_colours_mix_the_labels_present():
    labels = np.zeros((2, 1, 3), np.uint8)
    labels[0, 0, :2] = 1
    labels[1, 0, 1:] = 1
    picture = blend_labels(labels)
    colours = class_palette(3)[1:].astype(float)
    assert picture[0, 0].tolist() == colours[0].tolist()
    assert picture[0, 1].tolist() == np.round((colours[0] + colours[1]) / 2).tolist()
    assert picture[0, 2].tolist() == colours[1].tolist()


# --- end to end ----------------------------------------------------------------------------------

# test_cli's tiny fp32 run, one epoch (2 steps of 4 images), multi-label
EPOCHS = CLI_TINY.index("--epochs") + 1
TINY = [*CLI_TINY[:EPOCHS], "1", *CLI_TINY[EPOCHS + 1 :], "task.type=multilabel"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("multilabel-run")
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def test_synthetic_labels_overlap():
    cfg = load_config(dotted=["task.type=multilabel", "data.img_size=[48,48]"])
    splits = build_splits(cfg)
    assert splits.class_names == ["cell", "nucleus", "mark"]
    _, labels = splits.train.load(0)
    cell, nucleus, mark = labels.astype(bool)
    assert nucleus.any() and not (nucleus & ~cell).any()  # every nucleus lies inside a cell
    assert (mark & nucleus).any() or (mark & cell).any()


def test_train_records_the_task_and_validates_per_label(trained_run):
    checkpoint = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    assert checkpoint["task"]["type"] == "multilabel"
    assert checkpoint["class_names"] == ["cell", "nucleus", "mark"]
    loaded = model_from_checkpoint(checkpoint)
    assert loaded.task == Task(3, 0.5, multilabel=True)
    with open(trained_run / "history.csv") as handle:
        row = next(csv.DictReader(handle))
    assert {"val_mean_iou", "val_mean_dice", "val_iou_cell", "val_iou_mark"} <= set(row)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["task"] == "multilabel"


def test_evaluate_writes_per_label_metrics(trained_run, tmp_path):
    best = trained_run / "checkpoints" / "best.pt"
    assert (
        main(["evaluate", "--checkpoint", str(best), "--out", str(tmp_path), "--no-progress"]) == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    names = [row["name"] for row in metrics["dataset"]["per_class"]]
    assert names == ["cell", "nucleus", "mark"]
    assert {"mean_iou", "mean_dice"} <= set(metrics["dataset"])
    assert "mean_roc_auc" in metrics["threshold_free"] and "hd95" in metrics["boundary"]
    with open(tmp_path / "per_image.csv") as handle:
        header = next(csv.reader(handle))
    assert {"mean_iou", "iou/cell", "dice/nucleus", "hd95/mark"} <= set(header)
    report = (tmp_path / "report.html").read_text()
    assert "Multi-label" in report and "nucleus" in report


def test_predict_writes_a_mask_per_label_and_an_overlay(trained_run, tmp_path):
    best = trained_run / "checkpoints" / "best.pt"
    picture = np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "x.png")
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(best), "--input", str(tmp_path / "x.png")]
    assert main([*args, "--out", str(out), "--overlay", "--backend", "torch"]) == 0
    for label in ("cell", "nucleus", "mark"):
        mask = np.asarray(Image.open(out / label / "x.png"))
        assert mask.shape == (20, 28) and set(np.unique(mask)) <= {0, 255}
    assert (out / "x_overlay.png").is_file() and (out / "x_colour.png").is_file()
    with open(out / "summary.csv") as handle:
        row = next(csv.DictReader(handle))
    assert row["status"] == "written" and "pixels/nucleus" in row


def test_onnx_export_carries_the_task_and_predicts_the_same(trained_run, tmp_path):
    best = trained_run / "checkpoints" / "best.pt"
    onnx_file = tmp_path / "model.onnx"
    assert (
        main(["export", "--checkpoint", str(best), "--format", "onnx", "--out", str(onnx_file)])
        == 0
    )
    picture = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "x.png")
    common = ["predict", "--input", str(tmp_path / "x.png"), "--no-progress"]
    assert (
        main(
            [
                *common,
                "--exported",
                str(onnx_file),
                "--backend",
                "onnxruntime",
                "--out",
                str(tmp_path / "onnx"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                *common,
                "--checkpoint",
                str(best),
                "--backend",
                "torch",
                "--out",
                str(tmp_path / "torch"),
            ]
        )
        == 0
    )
    for label in ("cell", "nucleus", "mark"):
        exported = np.asarray(Image.open(tmp_path / "onnx" / label / "x.png"))
        direct = np.asarray(Image.open(tmp_path / "torch" / label / "x.png"))
        assert (exported != direct).mean() < 0.01  # a logit at the threshold may round apart


def test_serve_answers_per_label(trained_run):
    from test_serve import decoded_png, get_json, png_file, running, upload

    from unetkit.serve import build_server

    best = trained_run / "checkpoints" / "best.pt"
    picture = np.random.default_rng(2).integers(0, 255, (24, 30, 3), dtype=np.uint8)
    server = build_server(best, port=0, device="cpu", batch_size=2, log_level="warning")
    with running(server) as url:
        status, info = get_json(f"{url}/model")
        assert status == 200 and info["task"] == "multilabel" and info["threshold"] == 0.5
        assert [c["name"] for c in info["classes"]] == ["cell", "nucleus", "mark"]
        status, _, body = upload(url, png_file(picture), "?format=json&overlay=true")
        assert status == 200
        answer = json.loads(body)
        assert [label["name"] for label in answer["labels"]] == ["cell", "nucleus", "mark"]
        assert len(answer["classes"]) == 3 and "overlay_png_base64" in answer
        status, _, body = upload(url, png_file(picture))
        assert status == 200 and decoded_png(body).shape == (24, 30, 3)


def test_resume_continues_a_multilabel_run(trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    args = ["train", "--resume", "auto", "--out", str(out), "--epochs", "2", "--no-progress"]
    assert main(args) == 0
    with open(out / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["task"]["type"] == "multilabel"


def test_int8_export_of_a_multilabel_model_is_refused_leaving_no_file(trained_run, tmp_path):
    from unetkit.inference.export import export_model

    best = trained_run / "checkpoints" / "best.pt"
    with pytest.raises(ValueError, match="does not take multi-label models yet"):
        export_model(best, tmp_path / "m.onnx", quantize="int8")
    assert not (tmp_path / "m.onnx").exists()
