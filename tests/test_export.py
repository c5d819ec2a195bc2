"""``fcnseg export``: ONNX / TorchScript files that agree with PyTorch at sizes other than the tracing size, carry
their classes, palette and normalisation, and never appear when verification fails."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcnseg import export
from fcnseg.cli import main
from fcnseg.errors import UserError
from fcnseg.train.checkpoint import model_from_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CLASSES = ["background", "road", "car"]
PALETTE = [[0, 0, 0], [128, 64, 128], [0, 0, 142]]
FRESH_SHAPE = (1, 3, 83, 109)  # neither the tracing size nor a verification size


@pytest.fixture
def make_checkpoint(make_checkpoint):
    """Checkpoints whose argmax depends on the image (see conftest), with this module's classes."""
    return lambda folder, **kw: make_checkpoint(folder, classes=CLASSES, palette=PALETTE, head="calibrated", **kw)


def reference(ckpt_path, x):
    """PyTorch logits for 0..255 float RGB ``x``: the checkpoint's model on its own normalisation."""
    model, _ = model_from_checkpoint(ckpt_path)
    with torch.no_grad():
        return model.eval()(model.normalization(x))


def fresh_input(shape=FRESH_SHAPE):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(7)).float()


def agreement(a, b):
    return (a.argmax(1) == b.argmax(1)).double().mean().item()


def test_onnx_export_cli_metadata_dynamic_axes_and_parity(tmp_path, make_checkpoint, capsys):
    ckpt = make_checkpoint(tmp_path)
    out = tmp_path / "out" / "model.onnx"
    assert main([*f"export {ckpt} --format onnx --out {out}".split()]) == 0
    printed = capsys.readouterr().out
    assert "97×131" in printed and "2×3×160×128" in printed and "argmax agreement 100" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by a server running as another user (not 0600)

    proto = onnx.load(str(out))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["fcnseg.classes"] == CLASSES
    assert meta["fcnseg.palette"] == PALETTE
    assert meta["fcnseg.normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["fcnseg.normalization"]["folded_into_graph"] is True
    assert meta["fcnseg.input"]["value_range"] == [0, 255] and meta["fcnseg.input"]["channels"] == "RGB"
    assert [v["shape"] for v in meta["fcnseg.verification"]] == [list(s) for s in export.VERIFY_SHAPES]
    assert all(v["argmax_agreement"] >= 0.999 for v in meta["fcnseg.verification"])
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = fresh_input()
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    ref = reference(ckpt, x)
    assert got.shape == ref.shape == (1, 3, 83, 109)
    assert (got - ref).abs().max().item() < 1e-3 * max(1.0, ref.abs().max().item())
    assert agreement(got, ref) >= 0.999
    assert len(ref.argmax(1).unique()) > 1  # the comparison is not between two constant maps


def test_torchscript_export_round_trip(tmp_path, make_checkpoint):
    ckpt = make_checkpoint(tmp_path)
    out = tmp_path / "model.pt"
    assert main(["export", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    extra = {"fcnseg.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["fcnseg.json"])
    assert json.loads(meta["fcnseg.classes"]) == CLASSES
    x = fresh_input((2, 3, 70, 91))
    with torch.no_grad():
        got = loaded(x)
    ref = reference(ckpt, x)
    assert got.shape == ref.shape == (2, 3, 70, 91)
    assert (got - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())


def test_failed_verification_writes_nothing(tmp_path, make_checkpoint, monkeypatch, capsys):
    ckpt = make_checkpoint(tmp_path)
    out = tmp_path / "out" / "model.onnx"
    monkeypatch.setattr(export, "MIN_AGREEMENT", 1.01)  # unattainable: the failure path must run
    assert main(["export", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "verification failed" in err and "no file written" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(out.parent.iterdir()) == []


def _int_sized(model):
    """``model`` resized to its input's size read as Python ints: a constant to the TorchScript tracer."""
    orig = model.forward
    model.forward = lambda x: F.interpolate(orig(x), size=(int(x.shape[-2]), int(x.shape[-1])))
    return model.eval()


def test_size_baked_into_a_torchscript_graph_is_caught(tmp_path, make_checkpoint):
    model, meta = model_from_checkpoint(make_checkpoint(tmp_path))
    out = tmp_path / "baked.pt"
    with pytest.raises(UserError, match="verification"):
        export.export_torchscript(_int_sized(model), meta, out)
    assert not out.exists() and list(tmp_path.glob(".baked*")) == []


def test_onnx_graph_with_a_fixed_size_is_refused(tmp_path, make_checkpoint, monkeypatch):
    """Whatever the exporter, a graph whose output size does not follow the input's is refused, and no file left."""
    model, meta = model_from_checkpoint(make_checkpoint(tmp_path))
    real = export.write_onnx

    class Fixed(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return F.interpolate(self.inner(x), size=export.TRACE_SHAPE[-2:])

    monkeypatch.setattr(export, "write_onnx", lambda module, path, **kw: real(Fixed(module), path, **kw))
    out = tmp_path / "baked.onnx"
    with pytest.raises(UserError, match="verification failed"):
        export.export_onnx(model.eval(), meta, out)
    assert not out.exists() and list(tmp_path.glob(".baked*")) == []


def test_onnx_export_keeps_sizes_symbolic(tmp_path, make_checkpoint):
    """torch.export traces sizes symbolically: the int()-sized model that the TorchScript tracer bakes exports with
    dynamic height and width, and verifies at every size."""
    model, meta = model_from_checkpoint(make_checkpoint(tmp_path))
    results = export.export_onnx(_int_sized(model), meta, tmp_path / "m.onnx")
    assert [r["shape"][2:] for r in results] == [list(s[2:]) for s in export.VERIFY_SHAPES]
    assert all(r["argmax_agreement"] >= 0.999 for r in results)


def test_unknown_checkpoint_is_a_user_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


# Every backbone, both formats for the cheap ones. VGG fc6 alone is 4096×512×7×7 (~400 MB of float32), so one VGG
# export runs by default and the others are slow (the caffe geometry's pad 100 makes it ~2x the aligned one).
SLOW = pytest.mark.slow
CASES = [
    ("fcn8s", "mobilenet_v3_large", "aligned"),
    ("fcn8s", "inception_v3", "aligned"),
    ("fcn32s", "resnet18", "aligned"),
    ("fcn16s", "resnet18", "aligned"),
    ("fcn4s", "resnet18", "aligned"),
    ("fcn8s", "vgg16", "aligned"),
    pytest.param("fcn8s", "resnet34", "aligned", marks=SLOW),
    pytest.param("fcn8s", "resnet50", "aligned", marks=SLOW),
    pytest.param("fcn8s", "resnet101", "aligned", marks=SLOW),
    pytest.param("fcn8s", "vgg16", "caffe", marks=SLOW),
    pytest.param("fcn8s", "vgg19", "aligned", marks=SLOW),
    pytest.param("fcn16s", "inception_v3", "aligned", marks=SLOW),
    pytest.param("fcn32s", "inception_v3", "aligned", marks=SLOW),
    pytest.param("fcn8s-atonce", "resnet18", "aligned", marks=SLOW),
]


@pytest.mark.parametrize("arch,backbone,geometry", CASES)
def test_onnx_export_verifies_for_every_backbone(tmp_path, make_checkpoint, arch, backbone, geometry):
    assert_onnx_export_agrees(make_checkpoint(tmp_path, backbone=backbone, arch=arch, geometry=geometry), tmp_path)


def test_onnx_export_verifies_with_the_image_level_branch(tmp_path, make_checkpoint):
    ckpt = make_checkpoint(tmp_path, arch="fcn4s", global_context=True)
    model, _ = model_from_checkpoint(ckpt)
    assert model.score_global.weight.abs().sum() > 0  # the branch contributes to the logits being compared
    assert_onnx_export_agrees(ckpt, tmp_path)


def assert_onnx_export_agrees(ckpt, tmp_path):
    """Export to ONNX; the verification and a fresh input size agree with PyTorch on a non-constant map."""
    out = tmp_path / "m.onnx"
    results = export.export_checkpoint(ckpt, out, format="onnx")
    assert [r["shape"] for r in results] == [list(s) for s in export.VERIFY_SHAPES]
    assert all(r["argmax_agreement"] >= 0.999 and r["rel_diff"] < 1e-3 for r in results), results
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = fresh_input((1, 3, 151, 203))  # large enough for Inception's FCN-32s map (2×3 cells) to vary spatially
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    ref = reference(ckpt, x)
    assert got.shape == ref.shape and agreement(got, ref) >= 0.999
    assert np.isfinite(got.numpy()).all()
    assert len(ref.argmax(1).unique()) > 1  # the comparison is not between two constant maps


def test_int8_onnx_export_from_the_runs_training_data(tmp_path, capsys):
    """``--int8``: an int8 QDQ graph calibrated on the run's own training images (the demo's generated scenes),
    verified on held-out ones, with its provenance in the metadata."""
    ckpt = Path(__file__).parent / "fixtures" / "demo-59aa9b1-last.pt"
    out = tmp_path / "demo-int8.onnx"
    assert main(["export", str(ckpt), "--int8", "--calibration", "6", "--out", str(out)]) == 0
    assert "verified int8 on a held-out image" in capsys.readouterr().out
    proto = onnx.load(str(out))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props if p.key.startswith("fcnseg.")}
    assert meta["fcnseg.int8"]["calibration_images"] == 6 and meta["fcnseg.int8"]["verified_on"] == 4
    assert meta["fcnseg.int8"]["mean_argmax_agreement"] >= export.INT8_MIN_AGREEMENT
    assert sum(i.data_type == onnx.TensorProto.INT8 for i in proto.graph.initializer) >= 20  # conv weights
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": fresh_input().numpy()})[0].shape == (1, 7, 83, 109)


def test_int8_export_needs_enough_images(tmp_path, capsys):
    from PIL import Image
    for i in range(2):
        Image.fromarray(np.full((32, 40, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    ckpt = Path(__file__).parent / "fixtures" / "demo-59aa9b1-last.pt"
    rc = main(["export", str(ckpt), "--int8", "--calibration-data", str(tmp_path), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--int8 needs at least 5 calibration images" in err[0] and "found 2" in err[0]
    assert not (tmp_path / "m.onnx").exists()
