"""The config: defaults, files, presets and overrides merge in order; mistakes are named."""

from __future__ import annotations

import pytest

from unetkit.config import Config, ConfigError, available_presets, config_from_dict, load_config


def test_defaults_are_the_demo():
    cfg = load_config()
    assert cfg.data.dataset == "synthetic"
    assert cfg.model.name == "unet"


def test_file_then_flags_then_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1e-4\ntrain:\n  epochs: 3\n")
    cfg = load_config(
        str(path), overrides={"train.epochs": 5}, dotted=["optim.lr=0.5", "model.options.depth=3"]
    )
    assert cfg.train.epochs == 5
    assert cfg.optim.lr == 0.5
    assert cfg.model.options["depth"] == 3


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1e-4\n")
    assert load_config(str(path)).optim.lr == pytest.approx(1e-4)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_config(dotted=["train.epoch=3"])
    path = tmp_path / "bad.yaml"
    path.write_text("optimiser:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'optimiser'"):
        load_config(str(path))


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="train.epochs: expected int"):
        load_config(dotted=["train.epochs=many"])


def test_switching_model_by_flag_drops_the_other_models_options():
    cfg = load_config(overrides={"model.name": "resnet34-unet"})
    assert cfg.model.options == {}


def test_switching_model_by_pair_drops_the_other_models_options_too():
    cfg = load_config(dotted=["model.name=timm-unet", "model.options.encoder=resnet18"])
    assert cfg.model.options == {"encoder": "resnet18"}  # unet's base_width: 16 is gone
    same = load_config(dotted=["model.options.depth=3", "model.name=unet"])
    assert same.model.options == {"base_width": 16, "depth": 3}  # the same model keeps them


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(dotted=["data.img_size=[64, 80]"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, Config)
    assert cfg.model.options, "a preset names its model's options explicitly"


def test_missing_config_lists_presets():
    with pytest.raises(ConfigError, match="pet-unet"):
        load_config("no-such-preset")
