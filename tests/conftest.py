"""Shared fixtures: the ../shared data folder, pytorch-fcn imported without its training-time dependencies, and the
makers several test modules use (a checkpoint, a CLI process, a free port)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import socket
import struct
import subprocess
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


# ------------------------------------------------------------------------------------------ shared makers
def _make_checkpoint(path: Path, *, arch="fcn8s", backbone="resnet18", geometry="aligned", global_context=False,
                     classes=None, palette=None, config=None, seed=0, head=None) -> Path:
    """A checkpoint as training writes it, without training. ``path``: the file, or a folder to name it in.

    ``head``: None leaves the score layers as built (zeros: the model predicts class 0 everywhere); ``"random"``
    draws them (weights N(0, 0.05), biases N(0, 0.02)); ``"calibrated"`` also measures the BatchNorm statistics on
    random images and centres each class's mean logit (at their defaults, deep random nets such as Inception produce
    logits of ~1e7 whose argmax is one class everywhere, which would make any comparison trivial)."""
    from fcnseg.data.synthetic import CLASSES, PALETTE
    import fcnseg
    classes = list(CLASSES if classes is None else classes)
    palette = PALETTE if palette is None else palette
    path = Path(path)
    if path.is_dir():
        path = path / f"{arch}-{backbone}-{geometry}{'-gc' if global_context else ''}.pt"
    torch.manual_seed(seed)
    model = fcnseg.build_model(arch, backbone=backbone, num_classes=len(classes), geometry=geometry,
                               global_context=global_context)
    if head == "random":
        with torch.no_grad():
            for name in model.score_layers():
                getattr(model, name).weight.normal_(0, 0.05)
                getattr(model, name).bias.normal_(0, 0.02)
    elif head == "calibrated":
        _calibrate(model)
    torch.save({"model": model.state_dict(), "model_spec": fcnseg.model_spec(model), "classes": classes,
                "palette": [list(c) for c in palette], "config": config or {}, "iteration": 0}, path)
    return path


def _calibrate(model: torch.nn.Module) -> None:
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    calibration = lambda: model(model.normalization(torch.randint(0, 256, (2, 3, 160, 192)).float()))  # noqa: E731
    with torch.no_grad():
        if bns:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
            model.train()
            calibration()
            calibration()
            for m in bns:
                m.momentum = 0.1
        model.eval()
        for name in model.score_layers():
            layer = getattr(model, name)
            layer.weight.normal_(0, 0.05)
            layer.bias.zero_()
        # centre each class's mean logit, so that the argmax depends on the image rather than on one class winning
        # everywhere (what random VGG features, all positive after ReLU, do)
        model.score_fr.bias.sub_(calibration().mean((0, 2, 3)))


@pytest.fixture(scope="session")
def make_checkpoint():
    """``make_checkpoint(path, **options)``: see ``_make_checkpoint``."""
    return _make_checkpoint


def _run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fcnseg", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args, cwd=None)``: ``python -m fcnseg ARGS`` in a real process (captured output)."""
    return _run_cli


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ photos from the wild
def photo() -> np.ndarray:
    """An asymmetric 40×60 RGB picture: every rotation and mirror of it differs."""
    y, x = np.mgrid[0:40, 0:60]
    return np.dstack([x * 4, y * 6, (x * y) % 251]).astype(np.uint8)


def displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """How a viewer shows stored pixels with this EXIF orientation, written from the EXIF 2.3 table (row 0 / column
    0 positions), independently of Pillow: 2 mirror, 3 rotate 180°, 4 flip, 5 mirror + rotate 270° CW, 6 rotate 90°
    CW, 7 mirror + rotate 90° CW, 8 rotate 270° CW."""
    mirror = stored[:, ::-1]
    return {1: stored, 2: mirror, 3: stored[::-1, ::-1], 4: stored[::-1], 5: np.rot90(mirror, 1),
            6: np.rot90(stored, -1), 7: np.rot90(mirror, -1), 8: np.rot90(stored, 1)}[orientation]


def with_orientation(path: Path, arr: np.ndarray, orientation: int, **save) -> Path:
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, **save)
    return path


def png_bomb(path: Path | None, side: int) -> Path | bytes:
    """A grayscale PNG of side×side zeros: a few hundred KB on disk, side² bytes decoded (its bytes if no path)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    if path is None:
        return data
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def photos() -> types.SimpleNamespace:
    """``photo()``, ``displayed(stored, orientation)``, ``with_orientation(path, array, orientation, **save)`` and
    ``png_bomb(path, side)``: see each."""
    return types.SimpleNamespace(photo=photo, displayed=displayed, with_orientation=with_orientation,
                                 png_bomb=png_bomb)
