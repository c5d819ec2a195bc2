"""The training config: numbers read from text, stage budgets, the size schedule."""
from __future__ import annotations

import pytest

from fcnseg.errors import UserError
from fcnseg.train.config import resolve_config, stage_configs


def test_set_reads_numbers_yaml_keeps_as_text():
    """YAML 1.1 reads 4e-3 (no dot) as a string; `--set lr=4e-3` once reached the trainer as text and crashed."""
    cfg = resolve_config("ccp", None, {"lr": "4e-3", "max_iters": "1e3", "ema_decay": "null", "poly_power": "1",
                                       "time_budget": "20m"})
    assert cfg.lr == 0.004 and isinstance(cfg.lr, float)
    assert cfg.max_iters == 1000 and isinstance(cfg.max_iters, int)
    assert cfg.ema_decay is None and cfg.poly_power == 1.0 and isinstance(cfg.poly_power, float)
    assert cfg.time_budget == "20m"  # a key that may be text keeps it


def test_a_time_budget_is_shared_between_the_stages():
    two = dict(stage_configs(resolve_config("googlenet-two-step", None, {"time_budget": "40m"})))
    assert (two["step1-head"].time_budget, two["step2-all"].time_budget) == (600.0, 1800.0)  # fractions 0.25, 0.75
    three = [c.time_budget for _, c in stage_configs(resolve_config("staged", None, {"time_budget": "30m"}))]
    assert three == [600.0, 600.0, 600.0]


@pytest.mark.parametrize("bad", [[[0.2, 0.5]], [[0, 0.5], [0, 1]], [[0, 0]], [[0, 0.5], [1.0, 1]], "half", [[0]]])
def test_size_schedule_is_checked(bad, tiny):
    with pytest.raises(UserError, match="size_schedule must be"):
        tiny(size_schedule=bad)


def test_a_recipes_data_options_are_for_its_own_dataset(tmp_path, caplog):
    """fcn-tensorflow's zero_is_class is an ADE20K reader option: with another --data it is left out (it reached
    the CCP reader, which refused it); what the user sets stays."""
    with caplog.at_level("INFO", logger="fcnseg"):
        cfg = resolve_config("fcn-tensorflow", None, {"data": "ccp"})
    assert (cfg.data, cfg.data_options, cfg.backbone, cfg.crop_size) == ("ccp", {}, "vgg19", 224)
    assert "recipe fcn-tensorflow: its data_options are for ade20k, not ccp: left out" in caplog.text
    assert resolve_config("fcn-tensorflow", None, {}).data_options == {"zero_is_class": True}
    assert resolve_config("fcn-tensorflow", None, {"data": "ade20k"}).data_options == {"zero_is_class": True}
    own = resolve_config("fcn-tensorflow", None, {"data": "synthetic", "data_options": {"length": 4}})
    assert own.data_options == {"length": 4}
    (tmp_path / "c.yaml").write_text("data: camvid\n")
    demo = resolve_config("demo", tmp_path / "c.yaml", {"val_data_options": {"length": 3}})
    assert (demo.data_options, demo.val_data_options) == ({}, {"length": 3})
    assert resolve_config("caffe-voc-fcn32s", None, {"data": "camvid"}).val_data is None  # not seg11valid


def test_fashion_recipe_is_fcn_tensorflows_setup_on_ccp():
    cfg = resolve_config("fashion", None, {"pretrained_backbone": "none"})
    assert (cfg.data, cfg.arch, cfg.backbone, cfg.optimizer, cfg.lr, cfg.batch_size, cfg.resize, cfg.crop_size) == \
        ("ccp", "fcn8s", "vgg19", "adam", 1e-4, 2, 256, 224)
    assert cfg.data_options == {} and cfg.pretrained_backbone is None  # `none`: random weights, offline
    assert resolve_config("fashion").pretrained_backbone == "imagenet"
