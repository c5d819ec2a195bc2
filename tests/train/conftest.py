"""The training tests' run: a tiny synthetic dataset, ResNet-18, a few iterations on the CPU."""
from __future__ import annotations

import pytest

from fcnseg.train.config import resolve_config

TINY = {"data": "synthetic", "data_options": {"length": 16, "size": [48, 64]}, "val_data_options": {"length": 4},
        "backbone": "resnet18", "batch_size": 2, "workers": 0, "crop_size": 40, "scale_range": [0.75, 1.25],
        "optimizer": "sgd", "lr": 0.01, "amp": "none", "pretrained_backbone": None, "log_every": 2}


@pytest.fixture
def tiny(tmp_path):
    """``tiny(name="run", recipe=None, **config)``: the tiny run's config, writing to ``tmp_path / name``."""
    def make(name="run", recipe=None, **kw):
        return resolve_config(recipe, None, {**TINY, "out": str(tmp_path / name), **kw})
    return make
