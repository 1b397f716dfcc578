"""Precision and memory-layout choice: the logic with injected capabilities and timings (so the
tests pass on any CPU), the probes on a real tiny model, and the record a run leaves."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
import yaml
from model_helpers import preprocessing, tiny_model
from torch import nn

from unetkit.checkpoint import load_checkpoint
from unetkit.cli.main import main
from unetkit.config import load_config
from unetkit.inference.segmenter import Segmenter
from unetkit.precision import (
    Capabilities,
    Execution,
    candidates,
    choose_execution,
    detect_capabilities,
    execution_from_config,
)
from unetkit.precision_probe import inference_timer, training_step_timer
from unetkit.tasks import Task

AVX2_CPU = Capabilities("cpu", bf16=False, fp16=False, detail="CPU without bf16 units")
AMX_CPU = Capabilities("cpu", bf16=True, fp16=False, detail="CPU bf16 units: amx_bf16")
AMPERE = Capabilities("cuda", bf16=True, fp16=True, detail="CUDA compute capability 8.0")
TURING = Capabilities("cuda", bf16=False, fp16=True, detail="CUDA compute capability 7.5")


def timings(**seconds: float):
    """A measure function answering from a table keyed by label (+ -> _, - -> _)."""
    calls: list[str] = []

    def measure(execution: Execution) -> float:
        calls.append(execution.label)
        return seconds[execution.label.replace("+", "_").replace("-", "_")]

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


def test_a_cpu_without_bf16_units_never_probes_bf16():
    options = candidates("auto", "auto", AVX2_CPU)
    assert [o.label for o in options] == ["fp32", "fp32+channels-last"]
    measure = timings(fp32=1.0, fp32_channels_last=1.3)
    choice = choose_execution("auto", "auto", AVX2_CPU, measure)
    assert choice.execution == Execution("fp32", False)
    assert measure.calls == ["fp32", "fp32+channels-last"]


def test_a_cpu_with_bf16_units_takes_bf16_when_the_probe_shows_it_faster():
    measure = timings(fp32=3.2, fp32_channels_last=2.1, bf16=1.1, bf16_channels_last=0.8)
    choice = choose_execution("auto", "auto", AMX_CPU, measure)
    assert choice.execution == Execution("bf16", True)
    assert choice.seconds == {
        "fp32": 3.2,
        "fp32+channels-last": 2.1,
        "bf16": 1.1,
        "bf16+channels-last": 0.8,
    }
    assert "fastest of 4" in choice.reason


def test_bf16_units_that_are_slower_leave_fp32():
    # an AVX512-BF16 CPU whose bf16 kernels lose (the Zen 3 case, where bf16 was 5-60x slower)
    measure = timings(fp32=1.0, fp32_channels_last=1.2, bf16=6.0, bf16_channels_last=5.0)
    assert choose_execution("auto", "auto", AMX_CPU, measure).execution == Execution()


def test_a_gain_within_the_margin_keeps_the_exact_path():
    measure = timings(fp32=1.0, fp32_channels_last=0.97, bf16=0.96, bf16_channels_last=0.98)
    choice = choose_execution("auto", "auto", AMX_CPU, measure)
    assert choice.execution == Execution("fp32", False)
    assert "5% faster" in choice.reason
    measure = timings(fp32=1.0, fp32_channels_last=0.94, bf16=1.2, bf16_channels_last=1.1)
    assert choose_execution("auto", "auto", AMX_CPU, measure).execution.channels_last


def test_an_option_with_non_finite_values_is_never_chosen():
    measure = timings(fp32=1.0, fp32_channels_last=1.1, bf16=math.inf, bf16_channels_last=0.2)
    measure_nan = timings(fp32=1.0, fp32_channels_last=1.1, bf16=0.1, bf16_channels_last=math.nan)
    assert choose_execution("auto", "auto", AMX_CPU, measure).execution.precision == "bf16"
    assert choose_execution("auto", "auto", AMX_CPU, measure_nan).execution == Execution(
        "bf16", False
    )
    broken = timings(fp32=math.inf, fp32_channels_last=math.nan)
    with pytest.raises(RuntimeError, match="non-finite"):
        choose_execution("auto", "auto", AVX2_CPU, broken)


def test_cuda_takes_bf16_where_supported_else_fp16_without_probing_precision():
    assert [o.label for o in candidates("auto", False, AMPERE)] == ["bf16"]
    assert [o.label for o in candidates("auto", False, TURING)] == ["fp16"]
    measure = timings()
    choice = choose_execution("auto", False, TURING, measure)
    assert choice.execution == Execution("fp16", False) and measure.calls == []
    assert "only safe fast precision" in choice.reason


def test_explicit_settings_are_taken_as_asked_without_a_probe():
    measure = timings()
    choice = choose_execution("fp32", True, AMX_CPU, measure)
    assert choice.execution == Execution("fp32", True) and choice.reason == "as asked"
    assert measure.calls == [] and choice.seconds == {}
    assert execution_from_config("bf16", False) == Execution("bf16", False)
    assert execution_from_config("auto", False) is None
    assert execution_from_config("fp32", "auto") is None


def test_impossible_or_unknown_requests_are_refused_by_name():
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        candidates("fp16", False, AMX_CPU)
    with pytest.raises(ValueError, match="precision must be one of"):
        candidates("int8", False, AMX_CPU)
    with pytest.raises(ValueError, match="channels_last must be auto"):
        candidates("fp32", "sometimes", AMX_CPU)
    with pytest.warns(UserWarning, match="no bf16 units"):
        assert candidates("bf16", False, AVX2_CPU) == [Execution("bf16", False)]


def test_detected_cpu_capabilities_follow_the_cpu_flags(monkeypatch):
    import unetkit.precision as precision

    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not detect_capabilities(torch.device("cpu")).bf16
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512_bf16", "avx2"}))
    capabilities = detect_capabilities(torch.device("cpu"))
    assert capabilities.bf16 and not capabilities.fp16 and "avx512_bf16" in capabilities.detail


def test_probes_time_a_copy_and_leave_the_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(  # the dropout draws from the global generator: the probe must restore it
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout2d(0.5), nn.Conv2d(4, 1, 1)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    criterion = nn.BCEWithLogitsLoss()

    class Binary(nn.Module):  # the training timer hands class-id masks; BCE wants (N,1,H,W)
        def forward(self, logits, masks):
            return criterion(logits, masks[:, None].float().clamp(max=1))

    train = training_step_timer(model, Binary(), (2, 3, 16, 16), Task(2), torch.device("cpu"))
    infer = inference_timer(model, (2, 3, 16, 16), torch.device("cpu"))
    for execution in (Execution(), Execution("bf16", True)):
        assert 0 < train(execution) < math.inf
        assert 0 < infer(execution) < math.inf
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)  # BN stats too
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert model[0].weight.is_contiguous()  # the copy, not the model, took channels-last
    assert model.training  # the model's own mode is untouched too


def test_a_probe_reads_its_fastest_step_so_a_slow_spell_does_not_count():
    delays = iter([0.0, 0.12, 0.12, 0.01, 0.12])  # the warm-up, then a spell with one quiet step

    class Stalled(nn.Module):
        def forward(self, images):
            time.sleep(next(delays))
            return images

    timer = inference_timer(Stalled(), (1, 3, 4, 4), torch.device("cpu"), steps=4)
    assert 0.01 <= timer(Execution()) < 0.06  # the median of these steps would read 0.12


def test_a_probe_that_overflows_reports_inf():
    class Overflow(nn.Module):
        def forward(self, images):
            return images * 1e30 * 1e30

    timer = inference_timer(Overflow(), (1, 3, 4, 4), torch.device("cpu"))
    assert timer(Execution()) == math.inf


def test_segmenter_runs_in_the_asked_precision_and_layout():
    task = Task(3)
    model = tiny_model(task)
    names = ["a", "b", "c"]
    image = torch.rand(40, 48, 3).mul(255).byte().numpy()
    exact = Segmenter(model, task, names, preprocessing(img_size=(32, 32)), device="cpu")
    assert exact.execution == Execution()
    fast = Segmenter(
        model,
        task,
        names,
        preprocessing(img_size=(32, 32)),
        device="cpu",
        precision="bf16",
        channels_last=True,
    )
    assert fast.execution == Execution("bf16", True)
    close = abs(fast.predict_proba(image) - exact.predict_proba(image)).max()
    assert 0 < close < 0.05  # bf16 differs from fp32, a little
    auto = Segmenter(
        model,
        task,
        names,
        preprocessing(img_size=(32, 32)),
        device="cpu",
        precision="auto",
        channels_last="auto",
    )
    assert set(auto.execution_choice.seconds) >= {"fp32", "fp32+channels-last"}


def test_a_run_records_what_auto_chose_in_config_checkpoint_metrics_and_log(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--img-size", "32", "--epochs", "1", "--batch-size", "4",
            "--no-progress", "data.synthetic_count=12", "model.options.base_width=4",
            "model.options.depth=2"]  # fmt: skip
    assert main(args) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert saved["precision"] in ("fp32", "bf16") and isinstance(saved["channels_last"], bool)
    assert saved["execution"]["asked"] == {"precision": "auto", "channels_last": "auto"}
    assert "fp32" in saved["execution"]["seconds_per_step"]
    checkpoint = load_checkpoint(out / "checkpoints" / "best.pt")
    assert checkpoint["config"]["train"]["execution"] == saved["execution"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["inference"]["precision"] in ("fp32", "bf16")
    assert "fp32" in metrics["inference"]["seconds_per_step"]
    assert "probe per step: fp32" in capsys.readouterr().out
    # a resume takes the recorded choice as it is: no second probe can change it
    resumed = load_config(base=checkpoint["config"])
    assert execution_from_config(resumed.train.precision, resumed.train.channels_last)


def test_configs_of_earlier_releases_read_amp_as_a_precision():
    assert load_config(base={"train": {"amp": True, "amp_dtype": "bf16"}}).train.precision == "bf16"
    assert load_config(base={"train": {"amp": False, "amp_dtype": "fp16"}}).train.precision == (
        "fp32"
    )
    assert load_config(base={"train": {"channels_last": False}}).train.channels_last is False
    assert load_config(dotted=["train.channels_last=true"]).train.channels_last is True


def test_a_recorded_choice_is_kept_only_while_it_describes_the_run():
    from unetkit.precision import ExecutionChoice
    from unetkit.training.setup import record_execution

    probed = {"precision": "bf16", "channels_last": True, "reason": "fastest of 4"}
    cfg = load_config(overrides={"train.precision": "bf16", "train.channels_last": True,
                                 "train.execution": probed})  # fmt: skip
    kept = record_execution(cfg, ExecutionChoice(Execution("bf16", True), "as asked"))
    assert kept.train.execution == probed  # a resume: the probe's record stays
    changed = record_execution(cfg, ExecutionChoice(Execution("fp32", False), "as asked"))
    assert changed.train.execution["reason"] == "as asked"
    assert changed.train.execution["precision"] == "fp32"
