"""Which flips should test-time augmentation average? Each view alone, the flips the training
augmentation used, and all four, on the test split, for single runs and for a cv ensemble.

    python benchmarks/tta_views.py runs/cv-isbi-oof/isbi            # a cv folder: every fold
    python benchmarks/tta_views.py runs/planned/isbi runs/planned/pet  # single runs
    python benchmarks/tta_views.py runs/cv-pet-oof/pet --images 60    # the first 60 test images

Every model is its ``best.pt`` with its stored calibration and threshold, as ``predict`` runs
it; each view is one flip of every model input, flipped back, as TTA runs it
(:func:`unetkit.training.calibrate.flip_views`). A variant's
probabilities are the mean over its views (and, for the ensemble, over the members, which
commutes with the mean over views), turned into labels at the stored threshold and counted
into one confusion matrix per image by the metrics core. For a cv folder the script also gives
the ensemble minus its best member under each variant, with the paired bootstrap interval that
``evaluate`` reports (issue 15's target (a)).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from view_calibration import raw_run

from unetkit.checkpoint import load_checkpoint
from unetkit.data.transforms import trained_flips
from unetkit.inference.ensemble import checkpoint_paths
from unetkit.inference.segmenter import Segmenter
from unetkit.inference.tta import FLIPS
from unetkit.metrics.bootstrap import paired_difference
from unetkit.metrics.confusion import ConfusionMatrix
from unetkit.metrics.summary import headline_arrays
from unetkit.training.calibrate import flip_views

NAMES = {(): "as is", (-1,): "left-right", (-2,): "up-down", (-2, -1): "both"}


def views_of(views: list[Segmenter], image: np.ndarray) -> dict[tuple[int, ...], torch.Tensor]:
    """Each flip's probabilities ``(C, H, W)`` of ``image``, flipped back: the views that TTA
    averages, one :class:`~unetkit.inference.tta.FlippedModel` each (:func:`flip_views`)."""
    return {view.model.dims: torch.from_numpy(view.predict_proba(image)) for view in views}


def variants(trained: tuple[tuple[int, ...], ...]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Each view alone, the trained flips and all four."""
    named = {NAMES[dims]: (dims,) for dims in FLIPS}
    return {**named, f"trained ({len(trained)})": trained, "all four": FLIPS}


def confusions(
    segmenters: list[Segmenter], test, trained: tuple[tuple[int, ...], ...], images: int
) -> dict[str, np.ndarray]:
    """Per-image confusion matrices ``(N, C, C)`` of every member (key ``fold i: variant``) and
    of the ensemble (``ensemble: variant``, several members only), image by image."""
    task, kinds = segmenters[0].task, variants(trained)
    members_views = [flip_views(segmenter) for segmenter in segmenters]
    rows: dict[str, list[np.ndarray]] = {}
    for index in range(images):
        image, mask = test.load(index)
        members = [views_of(views, image) for views in members_views]
        for name, flips in kinds.items():
            means = [torch.stack([views[d] for d in flips]).mean(0) for views in members]
            named = {f"fold {i}: {name}": probs for i, probs in enumerate(means)}
            if len(means) > 1:
                named[f"ensemble: {name}"] = torch.stack(means).mean(0)
            for key, probs in named.items():
                matrix = ConfusionMatrix(task.num_classes)
                matrix.update(task.labels_from_probabilities(probs[None])[0], mask)
                rows.setdefault(key, []).append(matrix.matrix.numpy())
        print(f"  image {index + 1}/{images}", flush=True)
    return {key: np.stack(matrices) for key, matrices in rows.items()}


def report(folder: Path, key: str, limit: int | None = None) -> None:
    """One table per run or cv folder: every variant's score, and for a cv the ensemble's
    difference from its best member under each variant."""
    single = folder / "checkpoints" / "best.pt"
    paths = [single] if single.is_file() else checkpoint_paths([folder])
    runs = [path.parents[1] for path in paths]
    _, splits = raw_run(runs[0], 8, tta=False)
    config = load_checkpoint(paths[0])["config"]
    trained = trained_flips(config["data"]["augment"])
    segmenters = [Segmenter.from_checkpoint(path, "cpu", 8, tta=True, tta_flips=FLIPS)
                  for path in paths]  # fmt: skip
    binary = segmenters[0].task.num_classes == 2
    images = len(splits.test) if limit is None else min(limit, len(splits.test))
    matrices = confusions(segmenters, splits.test, trained, images)
    score = {k: float(headline_arrays(m.sum(0, keepdims=True), binary)[key][0])
             for k, m in matrices.items()}  # fmt: skip
    print(f"\n{folder} (augment {config['data']['augment']}), test {key}, "
          f"{images} of {len(splits.test)} images\n")  # fmt: skip
    columns = [f"fold {i}" for i in range(len(paths))] if len(paths) > 1 else ["model"]
    if len(paths) > 1:
        columns += ["ensemble", "ensemble - best fold [95% CI]"]
    print("| variant | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 1) + "|")
    for name in variants(trained):
        cells = [f"{score[f'fold {i}: {name}']:.4f}" for i in range(len(paths))]
        if len(paths) > 1:
            best = max(range(len(paths)), key=lambda i: score[f"fold {i}: {name}"])
            verdict = paired_difference(
                matrices[f"ensemble: {name}"], matrices[f"fold {best}: {name}"], binary, key
            )
            low, high = verdict["interval"]
            cells += [f"{score[f'ensemble: {name}']:.4f}",
                      f"{verdict['difference']:+.4f} [{low:+.4f}, {high:+.4f}]"]  # fmt: skip
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders or cv folders")
    parser.add_argument("--metric", default="foreground_iou", help="a headline metric key")
    parser.add_argument("--images", type=int, help="score the first N test images only")
    args = parser.parse_args()
    torch.manual_seed(0)
    for folder in args.folders:
        report(folder, args.metric, args.images)


if __name__ == "__main__":
    main()
