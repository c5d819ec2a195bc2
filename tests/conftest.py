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


# ------------------------------------------------------------------------------------------ the smoke subset
# `pytest -m smoke`: a fast pass over every dependency (models forward and backward, the data transforms, image
# decoding, training and evaluation through the CLI in one process and under torchrun, checkpoints and weight files,
# figures, export, serve, CRF, int8, the browser page), which .ci/min-versions runs on the lowest supported versions
# (docs/dependencies.md). Node ids; a listed id that its collected file no longer has is an error, so a renamed test
# cannot drop out of the subset unnoticed.
SMOKE = (
    "tests/models/test_fcn.py::test_forward_backward_any_size[fcn8s-resnet18]",
    "tests/models/test_fcn.py::test_forward_backward_any_size[fcn8s-vgg16]",
    "tests/models/test_fcn.py::test_forward_backward_any_size[fcn8s-inception_v3]",
    "tests/models/test_fcn.py::test_forward_backward_any_size[fcn32s-mobilenet_v3_large]",
    "tests/models/test_fcn.py::test_gemm_conv_matches_the_convolution[3-7-channels_last]",
    "tests/data/test_transforms.py::test_image_and_mask_stay_aligned_and_masks_gain_no_values",
    "tests/data/test_transforms.py::test_pad_collate_pads_image_with_zero_and_mask_with_ignore",
    "tests/data/test_transforms.py::test_synthetic_is_deterministic_and_has_all_classes",
    "tests/data/test_io.py::test_exif_orientation_gives_the_displayed_photo[6]",
    "tests/data/test_io.py::test_a_rotated_phone_jpeg_comes_out_upright",
    "tests/data/test_io.py::test_a_bomb_is_refused_from_its_header_without_decoding",
    "tests/data/test_io.py::test_16_bit_png_scales_by_257",
    "tests/data/test_io.py::test_transparency_is_composited_onto_white",
    "tests/data/test_io.py::test_animations_and_multipage_files_give_their_first_frame_and_say_so[TIFF]",
    "tests/test_metrics.py::test_hand_computed_case",
    "tests/test_inference.py::test_multi_scale_passes_come_back_aligned[0.75]",
    "tests/test_files.py::test_text_torch_image_and_figure_writes_land_whole",
    "tests/test_viz.py::test_index_pngs_hold_more_than_256_classes",
    "tests/train/test_config.py::test_set_reads_numbers_yaml_keeps_as_text",
    "tests/train/test_loop.py::test_debug_logs_gradients_tensorboard_and_plot",
    "tests/train/test_distributed.py::test_distributed_evaluation_equals_single_process",  # CLI train + evaluate
    "tests/cli/test_cli.py::test_visualize_and_plot",
    "tests/train/test_checkpoint.py::test_an_old_checkpoint_loads_safely_and_rebuilds_its_model",
    "tests/train/test_checkpoint.py::test_a_checkpoint_from_a_newer_fcnseg_is_refused_in_one_line",
    "tests/weights/test_weights.py::test_fcnseg_round_trip",
    "tests/weights/test_weights.py::test_pickle_with_code_is_refused[torch.save]",
    "tests/weights/test_weights.py::test_reader_accepts_unpacked_v0_and_double_blobs",
    "tests/weights/test_weights.py::test_matconvnet_legacy_normalization_and_errors",
    "tests/weights/test_named_weights.py::test_safetensors_round_trip_is_bit_identical",
    "tests/weights/test_named_weights.py::test_bad_safetensors_file_is_one_line[truncated]",
    "tests/test_export.py::test_onnx_export_cli_metadata_dynamic_axes_and_parity",
    "tests/test_export.py::test_torchscript_export_round_trip",
    "tests/test_serve.py::test_healthz_reports_the_model",
    "tests/test_serve.py::test_segment_json_matches_predictor",
    "tests/test_serve.py::test_too_large_upload_is_413",
    "tests/test_serve.py::test_non_image_is_415_and_corrupt_image_is_400",
    "tests/test_serve.py::test_cli_serve_prints_url_and_answers",
    "tests/test_browser.py::test_upload_shows_overlay_legend_and_download",  # skips without chromium
    "tests/test_crf.py::test_crf_snaps_noisy_scores_to_image_regions",
    "tests/test_quantize.py::test_int8_is_close_to_fp32",
    "tests/test_packaging.py::test_lower_bounds_equal_the_minimum_versions_pins",
)


@pytest.hookimpl(tryfirst=True)  # before -m selects
def pytest_collection_modifyitems(config, items):
    wanted = set(SMOKE)
    for item in items:
        if item.nodeid in wanted:
            item.add_marker(pytest.mark.smoke)
    if any("::" in arg for arg in config.args):  # tests picked by node id: the files were not collected whole
        return
    collected_files = {item.nodeid.split("::")[0] for item in items}
    missing = sorted(i for i in wanted - {item.nodeid for item in items} if i.split("::")[0] in collected_files)
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SMOKE lists tests that do not exist: {', '.join(missing)}")
