"""int8 CPU inference (``Predictor(amp="int8")``): the backbone really runs quantized kernels, stays close to the
float model, calibrates lazily or from given batches, and refuses what it cannot do with one clear line."""
from __future__ import annotations

import pytest
import torch
from torch import nn

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


def _quantized_modules(model):
    return [n for n, m in model.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized")
            or type(m).__module__.startswith("torch.ao.nn.intrinsic.quantized")]


@pytest.mark.parametrize("backbone", ["vgg16", "resnet18"])
def test_int8_backbone_is_quantized_and_close_to_fp32(backbone):
    model = _model(backbone)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(2, 3, 96, 128, generator=g) for _ in range(2)]
    x = torch.randn(2, 3, 96, 128, generator=g)
    ref = Predictor(model, "cpu", amp="none")(x)
    p = Predictor(model, "cpu", amp="int8", calibration=calib)
    out = p(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape == (2, 5, 96, 128)
    convs = [n for n, m in model.backbone.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(_quantized_modules(p.model.backbone)) >= len(convs) // 2  # convs (fused with BN/ReLU) run int8
    assert not _quantized_modules(model)  # the caller's model is left as it was
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 0.15, rel
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree > 0.9, agree


def test_int8_lazy_calibration_switches_after_n_calls():
    model = _model()
    x = torch.randn(1, 3, 64, 64)
    ref = Predictor(model, "cpu", amp="none")(x)
    p = Predictor(model, "cpu", amp="int8", calibration_batches=2)
    first = p(x)  # calibration passes run the float model: exact
    torch.testing.assert_close(first, ref, rtol=1e-4, atol=1e-4)
    assert not _quantized_modules(p.model)
    p(x)
    assert _quantized_modules(p.model)
    assert p(torch.randn(1, 3, 80, 72)).shape == (1, 5, 80, 72)  # any size after calibration


def test_int8_refuses_what_it_cannot_do(capsys):
    with pytest.raises(UserError, match="int8 inference supports VGG and ResNet backbones, not mobilenet_v3_large"):
        Predictor(build_model("fcn8s", backbone="mobilenet_v3_large", num_classes=3), "cpu", amp="int8")
    with pytest.raises(UserError, match="unknown amp mode 'int4'"):
        Predictor(_model(), "cpu", amp="int4")
    assert main(["benchmark", "--dtype", "int8", "--mode", "train", "--size", "32"]) == 2
    assert "--dtype int8 is an inference path" in capsys.readouterr().err


def test_benchmark_int8(capsys):
    rc = main(["benchmark", "--arch", "fcn8s", "--backbone", "resnet18", "--num-classes", "3", "--size", "48x64",
               "--dtype", "int8", "--repeats", "2"])
    assert rc == 0 and "int8" in capsys.readouterr().out
