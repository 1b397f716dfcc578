"""Test-time flips (unetkit.inference.tta) and mask clean-up (unetkit.inference.postprocess), alone
and inside the Segmenter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import measure

from unetkit.checkpoint import Preprocessing
from unetkit.data.preprocess import default_mean_std
from unetkit.data.sources import DataError
from unetkit.data.transforms import trained_flips
from unetkit.inference.postprocess import PostProcessing
from unetkit.inference.segmenter import Segmenter
from unetkit.inference.tta import FLIPS, checked_flips, flip_averaged
from unetkit.models import build_model
from unetkit.tasks import IGNORE_INDEX, Task

pytestmark = pytest.mark.usefixtures("one_thread")


def binary_probs(foreground_logit: torch.Tensor) -> torch.Tensor:
    foreground = torch.sigmoid(foreground_logit)[:, None]
    return torch.cat([1 - foreground, foreground], dim=1)


# --- test-time augmentation ----------------------------------------------------------------------


def test_flip_average_hand_computed():
    def position_only(images: torch.Tensor) -> torch.Tensor:
        """Ignores the pixels: the foreground logit at (y, x) is 2y + x."""
        y, x = torch.meshgrid(torch.arange(2.0), torch.arange(2.0), indexing="ij")
        return binary_probs((2 * y + x).expand(images.shape[0], 2, 2))

    averaged = flip_averaged(position_only)(torch.zeros(1, 3, 2, 2))
    # every pixel sees all four positions once: sigmoid(0), sigmoid(1), sigmoid(2), sigmoid(3);
    # 0.7661, not sigmoid of the mean logit 1.5 (0.8176): TTA averages probabilities
    expected = (0.5 + 0.7310585786 + 0.8807970780 + 0.9525741268) / 4
    np.testing.assert_allclose(averaged[0, 1].numpy(), np.full((2, 2), expected), atol=1e-6)
    np.testing.assert_allclose(averaged.sum(dim=1).numpy(), 1.0, atol=1e-6)


def test_flip_average_matches_numpy_flips_on_a_biased_model():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def biased(images: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1, 2, images.shape[-1])
        return torch.softmax(conv(images) + ramp, dim=1)

    images = torch.randn(2, 3, 7, 9)
    with torch.no_grad():
        averaged = flip_averaged(biased)(images).numpy()
        views = []
        for axes in ((), (3,), (2,), (2, 3)):
            flipped = torch.from_numpy(np.flip(images.numpy(), axes).copy())
            views.append(np.flip(biased(flipped).numpy(), axes))
        plain = biased(images).numpy()
    np.testing.assert_allclose(averaged, np.mean(views, axis=0), atol=1e-6)
    assert np.abs(averaged - plain).max() > 0.05


def test_flip_equivariant_model_is_unchanged_by_tta():
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    weight = torch.stack([kernel * s for s in (1.0, -2.0, 0.5)])[:, None].repeat(1, 3, 1, 1)

    def symmetric(images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(F.conv2d(images, weight, padding=1), dim=1)

    images = torch.randn(2, 3, 6, 11)
    np.testing.assert_allclose(
        flip_averaged(symmetric)(images).numpy(), symmetric(images).numpy(), atol=1e-6
    )


class CountingUNet(torch.nn.Module):
    """A tiny random U-Net that counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = build_model("unet", 3, 3, base_width=4, depth=2)
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(images) * 8.0


def segmenter(**options) -> Segmenter:
    mean, std = default_mean_std(3)
    prep = Preprocessing((16, 16), tuple(mean), tuple(std), 3)
    return Segmenter(CountingUNet(), Task(3), ["bg", "a", "b"], prep, device="cpu", **options)


def test_segmenter_tta_is_off_by_default_and_averages_flipped_images():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    plain = segmenter()
    assert plain.tta is False
    plain_probs = plain.predict_proba(image)
    assert plain.model.calls == 1

    with_tta = segmenter(tta=True)
    probs = with_tta.predict_proba(image)
    assert with_tta.model.calls == 4
    views = [plain_probs]
    for axes in ((1,), (0,), (0, 1)):
        flipped = np.ascontiguousarray(np.flip(image, axes))
        views.append(np.flip(plain.predict_proba(flipped), tuple(a + 1 for a in axes)))
    np.testing.assert_allclose(probs, np.mean(views, axis=0), atol=1e-5)
    assert np.abs(probs - plain_probs).max() > 0.05


def test_segmenter_tta_averages_only_the_flips_it_is_given():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    plain = segmenter()
    mirrored = np.flip(plain.predict_proba(np.ascontiguousarray(image[:, ::-1])), 2)
    left_right = segmenter(tta=True, tta_flips=[[-1], []])  # as JSON lists, in any order
    assert left_right.tta_flips == ((), (-1,))
    probs = left_right.predict_proba(image)
    assert left_right.model.calls == 2  # no upside-down view
    np.testing.assert_allclose(probs, (plain.predict_proba(image) + mirrored) / 2, atol=1e-5)
    four = segmenter(tta=True).predict_proba(image)
    assert np.abs(probs - four).max() > 0.01  # the up-down views would have changed it
    assert left_right.inference_config().tta_flips == ((), (-1,))  # what a record keeps


@pytest.mark.parametrize("flips", [[[-1]], [[], [-3]], [[], [2]], "lr", [[], ["x"]], None])
def test_tta_flips_must_be_flips_of_the_four_that_include_the_image_itself(flips):
    with pytest.raises(ValueError, match="tta_flips is a list of flips from .* that includes"):
        checked_flips(flips)


def test_each_augmentation_level_records_the_flips_it_trains_with():
    from unetkit.config import load_config
    from unetkit.training.saving import final_test_inference

    assert trained_flips("none") == ((),)
    assert trained_flips("light") == ((), (-1,))  # upright photographs stay upright
    assert trained_flips("strong") == FLIPS
    prep = Preprocessing((16, 16), (0.5,) * 3, (0.25,) * 3, 3)
    for level, tta, views in [("none", False, 1), ("light", True, 2), ("strong", True, 4)]:
        cfg = load_config(overrides={"data.augment": level, "eval.tta": True})
        recorded = final_test_inference(cfg, prep)
        assert (recorded.tta, len(recorded.tta_flips)) == (tta, views)  # none: nothing to average
    with pytest.raises(DataError, match="unknown augmentation level 'heavy'"):
        trained_flips("heavy")


# --- post-processing: hand-made masks ------------------------------------------------------------

MASK = np.array(
    [
        [1, 1, 0, 0, 0, 0, 2, 2],
        [1, 1, 0, 1, 0, 0, 2, 0],
        [0, 0, 0, 0, 1, 0, 0, 0],  # (1, 3) and (2, 4) touch diagonally: one component of 2
        [0, 0, 0, 0, 0, 0, 0, 1],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 2, 0, 0],
    ],
    dtype=np.uint8,
)


def test_small_components_become_background():
    cleaned = PostProcessing(min_size=3).apply(MASK)
    expected = MASK.copy()
    expected[1, 3] = expected[2, 4] = expected[3, 7] = 0  # class 1: sizes 2 (diagonal) and 1
    expected[5, 5] = 0  # class 2: size 1; the 3-pixel class-2 corner stays
    np.testing.assert_array_equal(cleaned, expected)
    assert cleaned.dtype == MASK.dtype and MASK[1, 3] == 1, "the input is not modified"


def test_keep_largest_component_per_class():
    cleaned = PostProcessing(keep_largest=True).apply(MASK)
    expected = np.where(np.isin(MASK, [1, 2]), 0, MASK)
    expected[4:6, 0:3] = 1  # class 1's largest: 6 pixels
    expected[0, 6:8] = expected[1, 6] = 2  # class 2's largest: 3 pixels
    np.testing.assert_array_equal(cleaned, expected)


def test_keep_largest_breaks_ties_by_the_first_component_in_row_order():
    mask = np.zeros((3, 7), np.uint8)
    mask[2, 0:2] = 1  # met second in row order
    mask[0, 4:6] = 1  # met first
    expected = np.zeros_like(mask)
    expected[0, 4:6] = 1
    np.testing.assert_array_equal(PostProcessing(keep_largest=True).apply(mask), expected)


def test_fill_holes_fills_enclosed_background_only():
    mask = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 1, 0, 0, 2, 1, 0],
            [0, 1, 0, 0, 0, 1, 3],
            [0, 1, 1, 0, 1, 1, 3],  # the gap at (4, 3) lets the inside reach the border: no hole
            [0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(PostProcessing(fill_holes=True).apply(mask), mask)

    closed = mask.copy()
    closed[4, 3] = 1
    expected = closed.copy()
    expected[2, 2:4] = expected[3, 2:5] = 1  # background inside becomes class 1 ...
    assert expected[2, 4] == 2  # ... the class-2 pixel inside stays
    np.testing.assert_array_equal(PostProcessing(fill_holes=True).apply(closed), expected)


def test_a_diagonal_gap_still_encloses_a_hole():
    mask = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.uint8)  # 4-connected hole at the centre
    expected = mask.copy()
    expected[1, 1] = 1
    np.testing.assert_array_equal(PostProcessing(fill_holes=True).apply(mask), expected)


def test_only_the_selected_classes_change_and_ignore_stays():
    mask = MASK.copy()
    mask[3, 0] = IGNORE_INDEX
    cleaned = PostProcessing(min_size=3, classes=(2,)).apply(mask)
    expected = mask.copy()
    expected[5, 5] = 0
    np.testing.assert_array_equal(cleaned, expected)
    assert PostProcessing().apply(mask) is not mask
    np.testing.assert_array_equal(PostProcessing().apply(mask), mask)


def test_bad_post_processing_options_are_clear_errors():
    with pytest.raises(ValueError, match="min_size must be 0 .*got -1"):
        PostProcessing(min_size=-1)
    with pytest.raises(ValueError, match="min_size must be a whole number .*got 2.5"):
        PostProcessing(min_size=2.5)
    with pytest.raises(ValueError, match=r"foreground class ids 1..254; got \[0\]"):
        PostProcessing(classes=(0, 1))
    with pytest.raises(ValueError, match=r"classes \[3\] do not exist.*class ids 0..2"):
        PostProcessing(classes=(1, 3)).check_classes(3)
    with pytest.raises(ValueError, match=r"one class-id mask \(H, W\)"):
        PostProcessing(fill_holes=True).apply(np.zeros((2, 3, 3), np.uint8))


# --- post-processing: random masks against scikit-image ------------------------------------------


def reference(mask: np.ndarray, options: PostProcessing) -> np.ndarray:
    """The same rules with scikit-image's labelling and morphology."""
    out = mask.copy()
    for label in [c for c in np.unique(mask) if 0 < c < IGNORE_INDEX]:
        components = measure.label(out == label, connectivity=2)
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        sizes[sizes < options.min_size] = 0
        region = sizes[components] > 0
        if options.keep_largest and region.any():
            region = components == np.argmax(sizes)
        out[(out == label) & ~region] = 0
        if options.fill_holes:
            outside = measure.label(out != label, connectivity=1)
            border = np.unique(
                np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]])
            )
            enclosed = (outside > 0) & ~np.isin(outside, border)
            out[enclosed & (out == 0)] = label
    return out


@pytest.mark.parametrize(
    "options",
    [
        PostProcessing(min_size=4),
        PostProcessing(keep_largest=True),
        PostProcessing(fill_holes=True),
        PostProcessing(min_size=3, keep_largest=True, fill_holes=True),
    ],
)
def test_random_masks_match_scikit_image(options):
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(20):
        mask = rng.choice([0, 0, 0, 1, 1, 2], size=(24, 31)).astype(np.uint8)
        cleaned = options.apply(mask)
        np.testing.assert_array_equal(cleaned, reference(mask, options))
        changed += not np.array_equal(cleaned, mask)
    assert changed == 20


def test_segmenter_post_processes_labels_but_not_probabilities():
    options = PostProcessing(min_size=20, fill_holes=True)
    raw = segmenter()
    cleaned = segmenter(postprocess=options)
    image = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)

    raw_mask = raw.predict(image)
    np.testing.assert_array_equal(cleaned.predict(image), options.apply(raw_mask))
    assert not np.array_equal(options.apply(raw_mask), raw_mask), "the test must change something"
    ((probs, mask),) = cleaned.predict_with_proba([image])
    np.testing.assert_array_equal(probs, raw.predict_proba(image))
    np.testing.assert_array_equal(mask, options.apply(raw_mask))
    with pytest.raises(ValueError, match=r"classes \[5\] do not exist"):
        segmenter(postprocess=PostProcessing(classes=(5,)))
