"""The benchmark: FLOP counts checked by hand and against module hooks, the figures it reports, and
the ONNX Runtime backend."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from unetkit.inference.export import onnx_bytes
from unetkit.models import build_model
from unetkit.speed.bench import benchmark, count_flops

TINY = {"base_width": 4, "depth": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_benchmark(**overrides) -> dict:
    arguments = {"steps": 2, "warmup": 1, "model_options": TINY, "threads": 1, "device": "cpu",
                 "gemm_size": 64}  # fmt: skip
    return benchmark("unet", 32, 2, **{**arguments, **overrides})


# --- FLOP counting -----------------------------------------------------------------------------


def test_flops_of_a_small_conv_net_match_the_hand_count():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x10x10 outputs x 3*3*3 multiply-adds = 21600
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 2, stride=2),  # 8x10x10 inputs x 4 outputs x 2*2 = 12800
        nn.Conv2d(4, 2, 1),  # 2x20x20 outputs x 4 inputs = 3200
    )
    images = torch.randn(2, 3, 10, 10)
    forward = 2 * (21600 + 12800 + 3200)  # per image, a multiply-add is 2 FLOPs
    # backward: the gradients of the weights and of the inputs cost one forward each, except
    # that the first convolution needs no gradient of its input (the images)
    backward = 2 * (21600 + 2 * 12800 + 2 * 3200)

    with torch.no_grad():
        assert count_flops(lambda: net(images)) == 2 * forward
    assert count_flops(lambda: net(images).sum().backward()) == 2 * (forward + backward)


def convolution_flops(model: nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """(all, first layer's) forward FLOPs, counted independently from each layer's shapes."""
    counts: list[tuple[int, bool]] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        kernel = math.prod(module.kernel_size)
        if isinstance(module, nn.ConvTranspose2d):
            macs = inputs[0].numel() * module.out_channels * kernel // module.groups
        else:
            macs = output.numel() * module.in_channels * kernel // module.groups
        counts.append((2 * macs, not inputs[0].requires_grad))

    convolutions = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    handles = [m.register_forward_hook(hook) for m in convolutions]
    model(images)
    for handle in handles:
        handle.remove()
    return sum(c for c, _ in counts), sum(c for c, first in counts if first)


def test_reported_flops_match_an_independent_count_of_the_model():
    result = tiny_benchmark()
    torch.manual_seed(0)
    model = build_model("unet", 3, 1, **TINY)
    forward, first_layer = convolution_flops(model.train(), torch.randn(2, 3, 32, 32))

    assert result["gflops_per_image"] * 1e9 == pytest.approx(forward / 2, rel=1e-12)
    training = (3 * forward - first_layer) / 2
    assert result["training"]["gflops_per_image"] * 1e9 == pytest.approx(training, rel=1e-12)
    assert result["params"] == sum(p.numel() for p in model.parameters())


# --- the report --------------------------------------------------------------------------------


def assert_timing(section: dict, batch_size: int, gflops_per_image: float) -> None:
    median, p90 = section["latency_s_median"], section["latency_s_p90"]
    assert 0 < median <= p90
    assert section["images_per_s"] == pytest.approx(batch_size / median)
    assert section["achieved_gflops_per_s"] == pytest.approx(gflops_per_image * batch_size / median)


def test_torch_backend_reports_every_figure():
    result = tiny_benchmark(threads=2)

    assert torch.get_num_threads() == 1, "the thread setting is restored"
    assert json.loads(json.dumps(result)) == result, "JSON-ready"
    expected = {
        "model": "unet",
        "img_size": [32, 32],
        "batch_size": 2,
        "backend": "torch",
        "threads": 2,
        "channels_last": False,
        "num_classes": 2,
        "steps": 2,
        "warmup": 1,
        "torch_version": torch.__version__,
        "notes": [],
    }
    assert {key: result[key] for key in expected} == expected
    assert result["device"].startswith("cpu")
    assert result["model_options"]["base_width"] == 4 and result["model_options"]["up"]
    assert result["params"] > 0 and result["gflops_per_image"] > 0
    assert_timing(result["inference"], 2, result["gflops_per_image"])
    training = result["training"]
    assert training["gflops_per_image"] > 2 * result["gflops_per_image"]
    assert_timing(training, 2, training["gflops_per_image"])
    for section in (result["inference"], training):  # fp32 was asked: no probe ran
        assert section["execution"]["precision"] == "fp32"
        assert section["execution"]["reason"] == "as asked"
    assert training["fraction_of_gemm"] > 0


def test_bf16_is_run_when_asked_and_reported():
    result = tiny_benchmark(precision="bf16", channels_last=True)
    for section in ("inference", "training"):
        assert result[section]["execution"]["precision"] == "bf16"
        assert result[section]["execution"]["channels_last"] is True
    assert result["training"]["gemm_gflops_per_s"] > 0  # the bf16 GEMM, the step's ceiling
    with pytest.raises(ValueError, match="applies to the torch backend"):
        tiny_benchmark(precision="bf16", backend="onnxruntime")


def test_channels_last_counts_the_same_flops():
    plain = tiny_benchmark()
    channels_last = tiny_benchmark(channels_last=True)
    assert channels_last["channels_last"] is True
    assert channels_last["gflops_per_image"] == plain["gflops_per_image"]
    assert channels_last["training"]["gflops_per_image"] == plain["training"]["gflops_per_image"]


def test_onnxruntime_backend_times_inference_only():
    result = tiny_benchmark(backend="onnxruntime")

    assert result["backend"] == "onnxruntime" and result["onnxruntime_version"]
    assert result["training"] is None
    assert result["notes"] == ["training: not applicable (ONNX Runtime runs inference only)"]
    assert result["gflops_per_image"] == tiny_benchmark()["gflops_per_image"]
    assert_timing(result["inference"], 2, result["gflops_per_image"])


def test_exported_model_gives_the_torch_logits_at_other_sizes(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", 3, 3, **TINY).eval()
    (tmp_path / "model.onnx").write_bytes(onnx_bytes(model, torch.randn(2, 3, 32, 32)))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    for shape in [(2, 3, 32, 32), (1, 3, 21, 30)]:
        images = torch.randn(shape)
        logits = session.run(None, {"images": images.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(images).numpy(), atol=1e-4)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"backend": "tensorrt"}, "unknown backend 'tensorrt'; use one of torch, onnxruntime"),
        ({"backend": "onnxruntime", "channels_last": True}, "Drop --channels-last"),
        ({"img_size": (32,)}, r"img_size must be .* got \(32,\)"),
        ({"img_size": 0}, "img_size must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1; got 0"),
        ({"steps": 0}, "steps must be an integer >= 1; got 0"),
        ({"warmup": -1}, "warmup must be an integer >= 0; got -1"),
        ({"threads": 0}, "threads must be a positive integer or None; got 0"),
    ],
)
def test_bad_arguments_say_what_to_change(arguments, message):
    settings = {"model_name": "unet", "img_size": 32, "batch_size": 2, "model_options": TINY}
    with pytest.raises(ValueError, match=message):
        benchmark(**{**settings, **arguments})


# --- every CPU path in one run (bench --backend all) -------------------------------------------


def test_every_cpu_path_is_timed_in_one_table():
    from unetkit.speed.cpu_paths import compare_paths, paths_table

    rows = compare_paths("unet", 32, (1, 2), repeats=1, warmup=0, threads=1,
                         calibration_images=2, model_options=TINY)  # fmt: skip
    paths = [row["path"] for row in rows]
    assert paths[:4] == ["torch fp32", "torch auto", "onnxruntime fp32", "onnxruntime int8"]
    assert {"openvino fp32", "openvino int8"} <= set(paths)  # the dev extras install openvino
    assert all(row["batch2"]["images_per_s"] > 0 for row in rows)
    lines = paths_table(rows, [1, 2]).splitlines()
    assert len(lines) == 2 + len(rows) and lines[2].endswith("| 1.00")  # fp32 over itself


def test_bench_cli_passes_quantize_and_runs_every_path(monkeypatch, capsys):
    from unetkit.cli.main import main
    from unetkit.speed import bench as bench_module
    from unetkit.speed import cpu_paths

    seen = {}
    monkeypatch.setattr(bench_module, "benchmark", lambda *a, **k: seen.update(k) or {})
    assert main(["bench", "--backend", "onnxruntime", "--quantize", "int8"]) == 0
    assert seen["quantize"] == "int8"  # once parsed and dropped: int8 was never timed
    row = {"model": "unet", "size": 64, "path": "torch fp32", "threads": 1, "execution": "x",
           "batch1": {"latency_s_median": 0.5, "images_per_s": 2.0},
           "batch4": {"latency_s_median": 1.0, "images_per_s": 4.0}}  # fmt: skip
    monkeypatch.setattr(cpu_paths, "compare_paths", lambda *a, **k: seen.update(all=a) or [row])
    assert main(["bench", "--backend", "all", "--img-size", "64", "--batch-size", "4"]) == 0
    assert seen["all"][:3] == ("unet", 64, [1, 4])
    assert "torch fp32 | x | 500.0 | 4.00 | 1.00" in capsys.readouterr().out
    assert main(["bench", "--backend", "all", "--img-size", "64", "80"]) == 2
    assert "on square images: give --img-size S" in capsys.readouterr().err
