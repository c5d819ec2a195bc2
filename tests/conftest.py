"""Shared fixtures: the ../shared data folder, and pytorch-fcn imported without its training-time dependencies."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_dir() -> Path:
    return Path(os.environ.get("FCNSEG_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture
def shared() -> Path:
    path = shared_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent")
    return path


@pytest.fixture
def torchfcn(monkeypatch):
    """pytorch-fcn's model and metric modules (PyPI ``torchfcn`` installed with ``--no-deps``).

    Its package ``__init__`` pulls in its trainer and datasets (pytz, skimage, …) and its models import the
    Chainer-era ``fcn`` package only for downloads, so we stand in an empty ``fcn`` module and a bare package."""
    spec = importlib.util.find_spec("torchfcn")
    if spec is None:
        pytest.skip("torchfcn is not installed (pip install --no-deps torchfcn==1.9.7)")
    pkg = types.ModuleType("torchfcn")
    pkg.__path__ = list(spec.submodule_search_locations)
    for name in [m for m in sys.modules if m == "torchfcn" or m.startswith("torchfcn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchfcn", pkg)
    monkeypatch.setitem(sys.modules, "fcn", types.ModuleType("fcn"))
    models = importlib.import_module("torchfcn.models")
    utils = importlib.import_module("torchfcn.utils")
    return types.SimpleNamespace(models=models, utils=utils)
