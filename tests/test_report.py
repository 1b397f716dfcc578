"""The HTML evaluation report: self-contained, escaped, honest about undefined values.

Also the error-map colours (hand-made case and a brute-force reference on random masks), the panel
layout and the chart helpers. The builders at the top are shared with test_report_browser.py.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from unetkit.evaluation import figures
from unetkit.evaluation.panels import (
    ERROR_LEGEND,
    FALSE_NEGATIVE_COLOUR,
    FALSE_POSITIVE_COLOUR,
    IGNORE_COLOUR,
    MAX_TILE_SIDE,
    WRONG_CLASS_COLOUR,
    Panel,
    error_map,
    panel_row,
)
from unetkit.evaluation.report import write_report
from unetkit.palette import colourise

NASTY_NAME = "<b>cat&dog</b>"
DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")

# ----------------------------------------------------------------------------- builders


def _spread(mean: float | None, std: float | None, images: int) -> dict[str, Any]:
    return {"mean": mean, "std": std, "images": images}


def binary_metrics(ci: bool = True) -> dict[str, Any]:
    """A metrics.json dict of a 2-class task, shaped like evaluation writes it."""
    dataset = {
        "pixel_accuracy": 0.9412,
        "mean_pixel_accuracy": 0.9011,
        "mean_iou": 0.8501,
        "mean_dice": 0.9177,
        "fw_iou": 0.8893,
        "pixel_accuracy_no_background": 0.8745,
        "mean_pixel_accuracy_no_background": 0.8745,
        "mean_iou_no_background": 0.8123,
        "mean_dice_no_background": 0.8964,
        "fw_iou_no_background": 0.8123,
        "foreground_iou": 0.8123,
        "foreground_dice": 0.8964,
        "foreground_precision": 0.9207,
        "foreground_recall": 0.8745,
        "foreground_specificity": 0.9655,
        "per_class": [
            _class_row("background", 0.8879, 0.9407, 0.9517, 0.9655, 0.8745, 2_600_000, 2_640_000),
            _class_row("pet", 0.8123, 0.8964, 0.9207, 0.8745, 0.9655, 1_234_567, 1_172_600),
        ],
        "confusion_matrix": [[2_510_300, 89_700], [154_967, 1_079_600]],
    }
    keys = [key for key in dataset if key not in ("per_class", "confusion_matrix")]
    per_image: dict[str, Any] = {key: _spread(dataset[key] - 0.02, 0.11, 12) for key in keys}
    per_image["per_class"] = [
        {"name": "background", **{m: _spread(0.88, 0.05, 12) for m in _CLASS_METRICS}},
        {"name": "pet", **{m: _spread(0.7904, 0.1201, 11) for m in _CLASS_METRICS}},
    ]
    per_image["per_class"][1]["specificity"] = _spread(None, None, 0)
    metrics = {
        "split": "test",
        "num_images": 12,
        "checkpoint": "runs/pet/checkpoints/best.pt",
        "task": "binary",
        "class_names": ["background", "pet"],
        "seconds": 41.2,
        "dataset": dataset,
        "per_image": per_image,
        "threshold_free": {
            "bins": 1000,
            "roc_auc": 0.9731,
            "average_precision": 0.9456,
            "per_class": [
                _threshold_free_row("background", 0.9731, 0.9802, 2_600_000, 1_234_567),
                _threshold_free_row("pet", 0.9731, 0.9456, 1_234_567, 2_600_000),
            ],
        },
    }
    metrics["dataset"]["per_class"][0]["recall"] = None  # undefined on purpose
    if ci:
        metrics["confidence_intervals"] = {
            "level": 0.95,
            "resamples": 1000,
            "intervals": {
                "dataset.foreground_iou": [0.7911, 0.8302],
                "per_image.foreground_iou": [0.7402, 0.8299],
                "dataset.mean_iou": None,
            },
        }
    return metrics


def multiclass_metrics(optional_sections: bool = True) -> dict[str, Any]:
    """A 3-class metrics dict with a hostile class name, undefined values and optional sections."""
    names = ["background", NASTY_NAME, "car"]
    dataset = {
        "pixel_accuracy": 0.9021,
        "mean_pixel_accuracy": 0.7013,
        "mean_iou": 0.6234,
        "mean_dice": None,
        "fw_iou": 0.8345,
        "mean_iou_no_background": 0.5012,
        "per_class": [
            _class_row("background", 0.91, 0.95, 0.93, 0.97, 0.80, 900_000, 920_000),
            _class_row(NASTY_NAME, 0.5012, 0.6677, 0.71, 0.63, 0.99, 80_000, 70_000),
            _class_row("car", None, None, None, None, 1.0, 0, 0),
        ],
        "confusion_matrix": [[873_000, 20_000, 7_000], [29_600, 50_400, 0], [0, 0, 0]],
    }
    per_image = {
        "mean_iou": _spread(0.6012, 0.1534, 7),
        "mean_dice": _spread(None, None, 0),
        "per_class": [
            {"name": name, **{m: _spread(0.5, 0.2, 7) for m in _CLASS_METRICS}} for name in names
        ],
    }
    metrics = {
        "split": "val",
        "num_images": 7,
        "checkpoint": 'runs/"camvid"/best.pt',
        "task": "multiclass",
        "class_names": names,
        "seconds": 3725.0,
        "dataset": dataset,
        "per_image": per_image,
    }
    if optional_sections:
        metrics.update(_optional_sections(names))
    return metrics


def _optional_sections(names: list[str]) -> dict[str, Any]:
    boundary_class = {
        "hd95": _spread(4.5678, 1.25, 6),
        "assd": _spread(1.2345, 0.5, 6),
        "boundary_iou": _spread(0.4321, 0.1, 6),
        "cldice": _spread(None, None, 0),
    }
    return {
        "threshold_free": {
            "bins": 1000,
            "mean_roc_auc": 0.9123,
            "mean_average_precision": None,
            "per_class": [_threshold_free_row(name, 0.9123, None, 10, 90) for name in names],
        },
        "instance": {
            "min_area": 10,
            "connectivity": 8,
            "map": 0.3456,
            "map_50": 0.5,
            "map_75": 0.3,
            "pq": 0.4444,
            "sq": 0.8,
            "rq": 0.55,
            "per_class": [
                {
                    "name": name,
                    "ap": 0.3456,
                    "ap_50": 0.5,
                    "ap_75": 0.3,
                    "pq": 0.4444,
                    "sq": 0.8,
                    "rq": 0.55,
                    "gt_instances": 5,
                    "pred_instances": 6,
                }
                for name in names[1:]
            ],
        },
        "boundary": {
            "boundary_width": 3,
            **boundary_class,
            "per_class": [{"name": name, **boundary_class} for name in names[1:]],
        },
        "confidence_intervals": {
            "level": 0.9,
            "resamples": 200,
            "intervals": {"dataset.mean_iou": [0.6011, 0.6499], "per_image.hd95": [3.9, 5.1]},
        },
    }


_CLASS_METRICS = ("iou", "dice", "precision", "recall", "specificity")


def _class_row(
    name: str, iou: Any, dice: Any, precision: Any, recall: Any, spec: Any, support: int, pred: int
) -> dict[str, Any]:
    return {
        "name": name,
        "iou": iou,
        "dice": dice,
        "precision": precision,
        "recall": recall,
        "specificity": spec,
        "support": support,
        "predicted": pred,
    }


def _threshold_free_row(name: str, auc: Any, ap: Any, pos: int, neg: int) -> dict[str, Any]:
    return {
        "name": name,
        "roc_auc": auc,
        "average_precision": ap,
        "positives": pos,
        "negatives": neg,
    }


def binary_curves() -> dict[str, dict[str, list[float]]]:
    rates = np.linspace(0, 1, 50)
    return {
        "pet": {
            "fpr": rates.tolist(),
            "tpr": (rates**0.15).tolist(),
            "recall": rates[::-1].tolist(),
            "precision": (1 - 0.6 * rates[::-1] ** 4).tolist(),
        }
    }


def training_history() -> list[dict[str, Any]]:
    return [
        {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "val_loss": 1.1 / epoch + 0.05,
            "val_mean_iou": None if epoch == 1 else 0.9 - 0.4 / epoch,
            "val_foreground_iou": 0.85 - 0.4 / epoch,
            "lr": 1e-3,
        }
        for epoch in range(1, 11)
    ]


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth colour picture with mild noise: compresses like a photograph, not like noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    base = np.stack(
        [128 + 90 * np.sin(rows / 37 + k) * np.cos(cols / 53 - k) for k in range(3)], axis=2
    )
    return (base + rng.normal(0, 6, base.shape)).clip(0, 255).astype(np.uint8)


def blob_panel(name: str, height: int, width: int, seed: int, score: float | None) -> Panel:
    """An elliptical object, a shifted prediction of it and an ignored border strip."""
    rows, cols = np.mgrid[0:height, 0:width]
    inside = ((rows - height / 2) / (height / 3)) ** 2 + ((cols - width / 2) / (width / 4)) ** 2
    target = (inside < 1).astype(np.uint8)
    target[:, :3] = 255
    shifted = ((rows - height / 2) / (height / 3)) ** 2 + ((cols - width / 1.8) / (width / 4)) ** 2
    prediction = (shifted < 1).astype(np.uint8)
    return Panel(name, photo_like(height, width, seed), target, prediction, score)


def panels(count: int, height: int = 30, width: int = 40) -> list[Panel]:
    return [blob_panel(f"image_{i:03d}.png", height, width, i, 0.9 - 0.1 * i) for i in range(count)]


def binary_report(path: Path, height: int = 30, width: int = 40) -> Path:
    """The full binary report: curves, history, 4 best and 4 worst panels."""
    return write_report(
        binary_metrics(),
        path,
        curves=binary_curves(),
        best=panels(4, height, width),
        worst=panels(4, height, width)[::-1],
        ranking_metric="foreground_iou",
        history=training_history(),
    )


# ----------------------------------------------------------------------------- page readers


def section(page: str, anchor: str) -> str:
    found = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert found, f"section {anchor!r} missing"
    return found.group(1)


def table_rows(fragment: str) -> list[list[str]]:
    """Visible text of every cell, row by row."""
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", fragment, re.S)
    return [
        [
            html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
            for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        ]
        for row in rows
    ]


def tables(fragment: str) -> list[list[list[str]]]:
    """The rows of each table in ``fragment``, table by table."""
    return [table_rows(table) for table in re.findall(r"<table.*?</table>", fragment, re.S)]


def row_of(rows: list[list[str]], first_cell: str) -> list[str]:
    matches = [row for row in rows if row and row[0] == first_cell]
    assert len(matches) == 1, f"{first_cell!r} in {rows}"
    return matches[0]


def decoded_pngs(page: str) -> list[Image.Image]:
    pictures = []
    for data in DATA_URI.findall(page):
        picture = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        picture.load()
        pictures.append(picture)
    return pictures


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def binary_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = binary_report(tmp_path_factory.mktemp("report") / "deep" / "report.html")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def multiclass_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    metrics = multiclass_metrics()
    nasty = Panel(
        '<img src="x">.png',
        np.zeros((8, 8), np.uint8),
        np.full((8, 8), 2, np.uint8),
        np.ones((8, 8), np.uint8),
        None,
    )
    path = write_report(
        metrics, tmp_path_factory.mktemp("report") / "mc.html", worst=[nasty], title="A & B"
    )
    return path.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- error map


def test_error_map_colours_on_a_hand_made_case():
    target = np.array([[0, 0, 1, 1, 255], [2, 1, 0, 2, 255]], dtype=np.uint8)
    prediction = np.array([[0, 1, 0, 1, 0], [1, 2, 0, 2, 1]], dtype=np.uint8)
    black = (0, 0, 0)
    expected = np.array(
        [
            [black, FALSE_POSITIVE_COLOUR, FALSE_NEGATIVE_COLOUR, black, IGNORE_COLOUR],
            [WRONG_CLASS_COLOUR, WRONG_CLASS_COLOUR, black, black, IGNORE_COLOUR],
        ],
        dtype=np.uint8,
    )
    result = error_map(target, prediction)
    assert result.dtype == np.uint8 and result.shape == (2, 5, 3)
    np.testing.assert_array_equal(result, expected)


def test_error_map_matches_a_pixel_by_pixel_reference_on_random_masks():
    rng = np.random.default_rng(7)
    target = rng.choice([0, 1, 2, 3, 255], size=(23, 31)).astype(np.uint8)
    prediction = rng.integers(0, 4, size=(23, 31)).astype(np.uint8)
    reference = np.zeros((23, 31, 3), dtype=np.uint8)
    for (row, col), expected in np.ndenumerate(target):
        guess = prediction[row, col]
        if expected == 255:
            reference[row, col] = IGNORE_COLOUR
        elif expected == guess:
            reference[row, col] = (0, 0, 0)
        elif expected == 0:
            reference[row, col] = FALSE_POSITIVE_COLOUR
        elif guess == 0:
            reference[row, col] = FALSE_NEGATIVE_COLOUR
        else:
            reference[row, col] = WRONG_CLASS_COLOUR
    np.testing.assert_array_equal(error_map(target, prediction), reference)


def test_error_map_rejects_mismatched_shapes_naming_both():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 4\)"):
        error_map(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))


def _simulate(colour: tuple[int, int, int], matrix: np.ndarray) -> np.ndarray:
    """sRGB colour as seen with a colour-vision deficiency (Machado et al. 2009, severity 1)."""
    srgb = np.asarray(colour) / 255
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    seen = np.clip(matrix @ linear, 0, 1)
    return 255 * np.where(seen <= 0.0031308, 12.92 * seen, 1.055 * seen ** (1 / 2.4) - 0.055)


@pytest.mark.parametrize(
    "matrix",
    [
        np.eye(3),
        [
            [0.152286, 1.052583, -0.204868],
            [0.114503, 0.786281, 0.099216],
            [-0.003882, -0.048116, 1.051998],
        ],  # protanopia
        [
            [0.367322, 0.860646, -0.227968],
            [0.280085, 0.672501, 0.047413],
            [-0.011820, 0.042940, 0.953881],
        ],  # deuteranopia
        [
            [1.255528, -0.076749, -0.178779],
            [-0.078411, 0.930809, 0.147602],
            [0.004733, 0.691367, 0.303900],
        ],  # tritanopia
    ],
    ids=["normal", "protanopia", "deuteranopia", "tritanopia"],
)
def test_error_legend_colours_stay_apart_for_colour_blind_readers(matrix):
    seen = [_simulate(colour, np.asarray(matrix)) for colour in ERROR_LEGEND.values()]
    closest = min(np.linalg.norm(a - b) for a, b in itertools.combinations(seen, 2))
    assert len(ERROR_LEGEND) == 5
    assert closest > 80, closest


# ----------------------------------------------------------------------------- panel rows


def test_panel_row_places_image_truth_prediction_and_errors_side_by_side():
    panel = blob_panel("a", 30, 40, 0, 0.5)
    row = panel_row(panel, 2, ["background", "pet"])
    assert row.dtype == np.uint8 and row.shape == (30, 4 * 40 + 3 * 4, 3)
    tiles = [row[:, i * 44 : i * 44 + 40] for i in range(4)]
    np.testing.assert_array_equal(tiles[0], panel.image)
    np.testing.assert_array_equal(tiles[1], colourise(panel.target, 2))
    np.testing.assert_array_equal(tiles[2], colourise(panel.prediction, 2))
    np.testing.assert_array_equal(tiles[3], error_map(panel.target, panel.prediction))
    assert (row[:, 40:44] == 255).all()


def test_panel_row_shrinks_each_picture_to_the_longest_side_limit():
    row = panel_row(blob_panel("big", 300, 640, 1, None), 2, ["background", "pet"])
    tile_width, tile_height = MAX_TILE_SIDE, round(300 * MAX_TILE_SIDE / 640)
    assert row.shape == (tile_height, 4 * tile_width + 12, 3)


@pytest.mark.parametrize("image", [np.full((6, 7), 9, np.uint8), np.full((6, 7, 1), 9, np.uint8)])
def test_panel_row_turns_grey_images_into_rgb(image):
    mask = np.zeros((6, 7), np.uint8)
    row = panel_row(Panel("g", image, mask, mask, 1.0), 2, ["bg", "fg"])
    assert (row[:, :7] == 9).all()


def test_panel_row_errors_say_what_was_wrong():
    mask = np.zeros((6, 7), np.uint8)
    with pytest.raises(ValueError, match="float32.*uint8"):
        panel_row(Panel("f", np.zeros((6, 7, 3), np.float32), mask, mask, 1.0), 2, ["a", "b"])
    with pytest.raises(ValueError, match="1 class names for 2 classes"):
        panel_row(Panel("n", np.zeros((6, 7), np.uint8), mask, mask, 1.0), 2, ["a"])
    with pytest.raises(ValueError, match="image is \\(5, 7\\)"):
        panel_row(Panel("s", np.zeros((5, 7), np.uint8), mask, mask, 1.0), 2, ["a", "b"])


# ----------------------------------------------------------------------------- figures


def test_row_shares_normalise_each_truth_row_and_mask_empty_rows():
    shares = figures.row_shares([[3, 1], [0, 0]])
    np.testing.assert_allclose(shares[0], [0.75, 0.25])
    assert shares.mask[1].all() and not shares.mask[0].any()


def test_charts_are_png_and_reject_mismatched_inputs():
    png = figures.confusion_heatmap([[5, 0, 1], [0, 0, 0], [2, 2, 9]], ["a", "$b$", "c"])
    assert Image.open(io.BytesIO(png)).format == "PNG"
    bars = figures.class_iou_chart(["a", "b"], [0.5, None], [0.4, None], [0.1, None])
    assert Image.open(io.BytesIO(bars)).size[0] > 300
    with pytest.raises(ValueError, match="2 class names"):
        figures.confusion_heatmap([[1, 2, 3]] * 3, ["a", "b"])
    with pytest.raises(ValueError, match="dataset_iou has 1 values for 2 classes"):
        figures.class_iou_chart(["a", "b"], [0.5])
    with pytest.raises(ValueError, match="3 fpr points but 2 tpr"):
        figures.roc_pr_curves(
            {"x": {"fpr": [0, 0.5, 1], "tpr": [0, 1], "precision": [], "recall": []}}
        )
    with pytest.raises(ValueError, match="history is empty"):
        figures.training_curves([])


# ----------------------------------------------------------------------------- the page


def test_report_is_self_contained(binary_page):
    outside_data = DATA_URI.sub("", binary_page)
    for forbidden in ("http://", "https://", 'src="/', "url(", "<link", "@import", "<iframe"):
        assert forbidden not in outside_data, forbidden
    assert not re.search(r"""["'(=]\s*//""", outside_data)
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', binary_page)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', binary_page))
    assert "<script src" not in binary_page


def test_every_picture_is_a_valid_png_of_a_sensible_size(binary_page):
    pictures = decoded_pngs(binary_page)
    # 2 charts, ROC/PR, training curves, 4 best + 4 worst panels
    assert len(pictures) == len(re.findall(r"<img ", binary_page)) == 12
    for picture in pictures:
        assert picture.format == "PNG"
        assert 100 <= picture.size[0] <= 1600 and 20 <= picture.size[1] <= 1600


def test_header_and_headline_numbers(binary_page):
    header = binary_page[: binary_page.index("</header>")]
    for fact in ("test", "12", "binary", "runs/pet/checkpoints/best.pt", "41.2 s", "pet"):
        assert fact in header
    rows = table_rows(section(binary_page, "headline"))
    assert row_of(rows, "Foreground IoU") == [
        "Foreground IoU",
        "0.812 95% CI 0.791–0.830",
        "0.792 ± 0.110 95% CI 0.740–0.830",
        "12",
    ]
    assert row_of(rows, "Pixel accuracy")[1:3] == ["0.941", "0.921 ± 0.110"]
    assert row_of(rows, "ROC AUC")[1] == "0.973"
    cards = section(binary_page, "headline").split("<table")[0]
    assert "0.812" in cards and "0.896" in cards and "95% CI 0.791–0.830" in cards


def test_per_class_table_shows_undefined_as_a_dash_never_zero(binary_page):
    overlap, families = tables(section(binary_page, "classes"))
    assert overlap[0] == [
        "Class",
        "IoU",
        "IoU per image",
        "Dice",
        "Precision",
        "Recall",
        "Specificity",
        "Pixels",
    ]
    assert row_of(overlap, "pet")[1:] == [
        "0.812",
        "0.790 ± 0.120",
        "0.896",
        "0.921",
        "0.875",
        "0.966",
        "1,234,567",
    ]
    assert row_of(overlap, "background")[5] == "–"
    assert 'class="undef" title="undefined' in section(binary_page, "classes")
    assert families[:2] == [["", "Threshold-free"], ["Class", "AUC", "AP"]]
    assert row_of(families, "pet") == ["pet", "0.973", "0.946"]


def test_optional_sections_appear_when_given(binary_page, multiclass_page):
    assert 'id="curves"' in binary_page and 'id="training"' in binary_page
    assert 'id="curves"' not in multiclass_page and 'id="training"' not in multiclass_page
    overlap, families = tables(section(multiclass_page, "classes"))
    assert families[0] == ["", "Threshold-free", "Instances", "Boundary"]
    assert families[1] == [
        "Class",
        "AUC",
        "AP",
        "Inst. AP",
        "PQ",
        "HD95",
        "ASSD",
        "Boundary IoU",
        "clDice",
    ]
    assert row_of(overlap, "car")[1:3] == ["–", "0.500 ± 0.200"]
    assert row_of(families, "car")[1:] == [
        "0.912",
        "–",
        "0.346",
        "0.444",
        "4.57 ± 1.25",
        "1.23 ± 0.50",
        "0.432 ± 0.100",
        "–",
    ]
    background = row_of(families, "background")
    assert background[-6:] == ["–"] * 6  # instance and boundary skip the background: not computed
    assert 'title="not computed' in section(multiclass_page, "classes")


def test_optional_families_table_is_left_out_without_those_sections(tmp_path):
    path = write_report(multiclass_metrics(optional_sections=False), tmp_path / "plain.html")
    found = tables(section(path.read_text(encoding="utf-8"), "classes"))
    assert len(found) == 1 and "AUC" not in found[0][0]


def test_multiclass_headline_with_ci_level_and_undefined(multiclass_page):
    rows = table_rows(section(multiclass_page, "headline"))
    assert row_of(rows, "Mean IoU")[1:] == ["0.623 90% CI 0.601–0.650", "0.601 ± 0.153", "7"]
    assert row_of(rows, "Mean Dice")[1:] == ["–", "–", "0"]
    assert row_of(rows, "HD95 (px, lower is better)")[1:] == [
        "",
        "4.57 ± 1.25 90% CI 3.90–5.10",
        "6",
    ]
    assert "1 h 02 min" in multiclass_page


def test_strings_from_the_data_are_escaped(multiclass_page):
    assert NASTY_NAME not in multiclass_page
    assert html.escape(NASTY_NAME) in multiclass_page
    assert '<img src="x">' not in multiclass_page
    assert "runs/&quot;camvid&quot;/best.pt" in multiclass_page
    assert "<title>A &amp; B</title>" in multiclass_page


def test_panels_show_name_score_and_both_legends(binary_page):
    examples = section(binary_page, "examples")
    assert "Best 4 by Foreground IoU" in examples and "Worst 4 by Foreground IoU" in examples
    assert "image_000.png" in examples and "0.900" in examples
    for name in ERROR_LEGEND:
        assert html.escape(name) in examples
    assert "background" in examples and "ignored" in examples


def test_reading_guide_explains_pooling_undefined_and_ignore(binary_page):
    guide = section(binary_page, "reading")
    for phrase in ("Pooled", "Per image", "undefined", "Ignore pixels", "95% CI"):
        assert phrase in guide


def test_a_realistic_binary_report_stays_small(tmp_path):
    path = binary_report(tmp_path / "big.html", height=375, width=500)
    page = path.read_text(encoding="utf-8")
    assert path.stat().st_size < 3_000_000, path.stat().st_size
    rows = decoded_pngs(page)[-8:]
    for picture in rows:
        assert picture.size == (4 * MAX_TILE_SIDE + 12, round(375 * MAX_TILE_SIDE / 500))


def test_write_report_explains_a_wrong_input(tmp_path):
    with pytest.raises(ValueError, match="no 'dataset' section.*metrics.json"):
        write_report({"per_image": {}}, tmp_path / "x.html")
    with pytest.raises(ValueError, match="no 'confusion_matrix'"):
        write_report({"dataset": {"per_class": []}}, tmp_path / "x.html")
