"""int8 CPU inference (``Predictor(amp="int8")``, ONNX Runtime): the graph really holds int8 convolutions, stays close
to the float model, calibrates lazily or from given batches, and refuses what it cannot do with one clear line."""
from __future__ import annotations

import sys

import pytest
import torch

from fcnseg import build_model
from fcnseg.cli import main
from fcnseg.errors import UserError
from fcnseg.inference import Predictor


def _model(backbone="resnet18", seed=0):
    torch.manual_seed(seed)
    m = build_model("fcn8s", backbone=backbone, num_classes=5)
    with torch.no_grad():  # a fresh head predicts zeros; random scores give argmax something to agree on
        for name in m.score_layers():
            getattr(m, name).weight.normal_(0, 0.05)
    return m.eval()


def _calib(seed=1, n=2, shape=(2, 3, 96, 128)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def test_quantized_graph_has_int8_convolutions(tmp_path):
    """The QDQ graph holds every convolution's weight but the first's as int8 and quantizes activations."""
    onnx = pytest.importorskip("onnx")
    from fcnseg.export import write_onnx
    from fcnseg.quantize import quantize_onnx
    model = _model()
    write_onnx(model, tmp_path / "fp32.onnx")
    assert quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", _calib()) == 2
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    int8 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    dq = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    quantized = [c for c in convs if dq.get(c.input[1]) in int8]
    # resnet18 FCN-8s: every Conv runs on int8 weights but the first, which reads the image (kept float: measured)
    assert len(convs) >= 20 and quantized == convs[1:]
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= len(convs)  # activations too


def test_int8_is_close_to_fp32():
    pytest.importorskip("onnxruntime")
    model = _model()
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    ref = Predictor(model, "cpu", amp="none")(x)
    p = Predictor(model, "cpu", amp="int8", calibration=_calib())
    out = p(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape == (2, 5, 96, 128)
    assert p.forward is not p.model and type(p.forward).__name__ == "OnnxRuntimeModel"
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.15, rel  # not the float model (rel 0), and close to it
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree > 0.9, agree
    assert p(torch.randn(1, 3, 80, 72)).shape == (1, 5, 80, 72)  # any size: the graph's H and W are dynamic


def test_int8_lazy_calibration_switches_after_n_calls():
    pytest.importorskip("onnxruntime")
    model = _model()
    x = torch.randn(1, 3, 64, 64)
    ref = Predictor(model, "cpu", amp="none")(x)
    p = Predictor(model, "cpu", amp="int8", calibration_batches=2)
    first = p(x)  # calibration passes run the float model: exact
    torch.testing.assert_close(first, ref, rtol=1e-4, atol=1e-4)
    assert p.forward is p.model
    p(x)
    assert p.forward is not p.model and not p._calibration
    assert p(torch.randn(1, 3, 80, 72)).shape == (1, 5, 80, 72)


def test_int8_without_onnxruntime_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"int8 inference runs on ONNX Runtime, .*pip install 'fcnseg\[export\]'"):
        Predictor(_model(), "cpu", amp="int8")


def test_int8_refuses_what_it_cannot_do(capsys):
    with pytest.raises(UserError, match="unknown amp mode 'int4'"):
        Predictor(_model(), "cpu", amp="int4")
    assert main(["benchmark", "--dtype", "int8", "--mode", "train", "--size", "32"]) == 2
    assert "--dtype int8 is an inference path" in capsys.readouterr().err


def test_benchmark_int8(capsys):
    rc = main(["benchmark", "--arch", "fcn8s", "--backbone", "resnet18", "--num-classes", "3", "--size", "48x64",
               "--dtype", "int8", "--repeats", "2"])
    assert rc == 0 and "int8" in capsys.readouterr().out
