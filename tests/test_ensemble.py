"""Ensembles: the averaged probabilities, one exported graph, members found in a cv folder."""

from __future__ import annotations

import pytest
import torch
from test_export import TOLERANCE, raw_onnx_logits, write_checkpoint

from unetkit.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from unetkit.inference.ensemble import (
    ProbabilityAverage,
    average_logits,
    checkpoint_paths,
    load_ensemble,
    member_count,
)
from unetkit.inference.export import onnx_bytes
from unetkit.tasks import Task

pytestmark = pytest.mark.usefixtures("one_thread")


def perturbed_copy(source, target, seed: int):
    """``source``'s checkpoint with its learned weights scaled by seeded noise (BatchNorm's
    running statistics kept), saved as ``target``."""
    payload = load_checkpoint(source)
    generator = torch.Generator().manual_seed(seed)
    payload["model"] = {
        key: value * (1 + 0.05 * torch.randn(value.shape, generator=generator))
        if value.is_floating_point() and "running" not in key
        else value
        for key, value in payload["model"].items()
    }
    save_checkpoint(payload, target)
    return target


@pytest.fixture(params=[2, 3], ids=["binary", "multiclass"])
def members(request, tmp_path):
    first = write_checkpoint(tmp_path / "a.pt", request.param)
    return [first, perturbed_copy(first, tmp_path / "b.pt", 1)]


def test_averaged_logits_give_the_mean_probabilities_and_stay_finite() -> None:
    for task in (Task(2), Task(4)):
        members = 6 * torch.randn(3, 2, task.out_channels, 5, 6)
        members[0, 0, :, 0, 0] = 200.0  # a certain member: log(p) of a rounded mean is -inf
        averaged = average_logits(members, task)
        mean = torch.stack([task.probabilities(m) for m in members]).mean(dim=0)
        assert torch.isfinite(averaged).all()
        assert torch.allclose(task.probabilities(averaged), mean, atol=1e-6)
        one = average_logits(members[:1], task)
        assert torch.allclose(task.probabilities(one), task.probabilities(members[0]), atol=1e-6)


def test_the_ensemble_predicts_the_mean_of_its_members_probabilities(members) -> None:
    ensemble = load_ensemble(members)
    singles = [model_from_checkpoint(path) for path in members]
    images = torch.randn(2, 3, 23, 17, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        each = [single.task.probabilities(single.model(images)) for single in singles]
        mean = ensemble.task.probabilities(ensemble.model(images))
    assert not torch.allclose(each[0], each[1], atol=1e-3)  # the members differ
    assert torch.allclose(mean, (each[0] + each[1]) / 2, atol=1e-5)
    assert member_count(ensemble) == 2 and member_count(singles[0]) == 1
    assert ensemble.checkpoint["ensemble"]["members"] == [str(p) for p in members]


def test_an_exported_ensemble_is_one_graph_with_the_same_logits(members, tmp_path) -> None:
    ensemble = load_ensemble(members)
    images = torch.randn(1, 3, 29, 27, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "ensemble.onnx"
    path.write_bytes(onnx_bytes(ensemble.model, images))
    with torch.no_grad():
        expected = ensemble.model(images).numpy()
    assert abs(raw_onnx_logits(path, images) - expected).max() < TOLERANCE


def test_a_cv_folder_gives_its_folds_in_order(tmp_path) -> None:
    checkpoint = write_checkpoint(tmp_path / "a.pt", 2)
    for fold in (10, 2, 0):
        folder = tmp_path / "cv" / f"fold_{fold}" / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "best.pt").write_bytes(checkpoint.read_bytes())
    found = checkpoint_paths([tmp_path / "cv"])
    assert [p.parents[1].name for p in found] == ["fold_0", "fold_2", "fold_10"]
    with pytest.raises(FileNotFoundError, match="without fold_"):
        checkpoint_paths([tmp_path])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_paths([tmp_path / "missing.pt"])


def test_members_of_different_tasks_are_refused_by_name(tmp_path) -> None:
    binary = write_checkpoint(tmp_path / "binary.pt", 2)
    three = write_checkpoint(tmp_path / "three.pt", 3)
    with pytest.raises(ValueError, match=r"disagree on task: .*binary\.pt.*three\.pt"):
        load_ensemble([binary, three])


def test_an_empty_ensemble_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        ProbabilityAverage([], Task(2))


def test_an_ensemble_averages_only_the_flips_every_member_trained_on(members, tmp_path) -> None:
    from unetkit.inference.segmenter import Segmenter

    def recording(source, target, flips):
        payload = load_checkpoint(source)
        payload["inference"] = {"tta": True, **({"tta_flips": flips} if flips else {})}
        save_checkpoint(payload, target)
        return target

    light = recording(members[0], tmp_path / "light.pt", [[], [-1]])
    strong = recording(members[1], tmp_path / "strong.pt", [[], [-1], [-2], [-2, -1]])
    older = recording(members[1], tmp_path / "older.pt", None)  # all four, as it ran
    segmenter = Segmenter.from_loaded(load_ensemble([strong, light]), "cpu")
    assert segmenter.tta and segmenter.tta_flips == ((), (-1,))  # not the first member's four
    assert load_ensemble([strong, older]).checkpoint["inference"]["tta_flips"] == [
        [], [-1], [-2], [-2, -1]
    ]  # fmt: skip


def test_an_ensemble_runs_tta_where_most_members_do_whatever_their_order(members, tmp_path):
    def recording(name, record):
        payload = {**load_checkpoint(members[0]), "inference": record}
        if record is None:
            del payload["inference"]
        save_checkpoint(payload, tmp_path / name)
        return tmp_path / name

    on = recording("on.pt", {"tta": True, "tta_flips": [[], [-1]]})
    off = recording("off.pt", {"tta": False, "tta_flips": [[], [-1]]})
    unrecorded = recording("old.pt", None)  # before records: one pass, all four flips trained

    def record(*paths):
        return load_ensemble(list(paths)).checkpoint["inference"]

    assert record(on, on, off)["tta"] and record(off, on, on)["tta"]
    assert not record(on, off)["tta"] and not record(off, on)["tta"]  # a tie: one pass
    assert not record(on, off, off)["tta"]
    old_first = record(unrecorded, on, on)  # the later members' record still counts
    assert old_first["tta"] and old_first["tta_flips"] == [[], [-1]]
