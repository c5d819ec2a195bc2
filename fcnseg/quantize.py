"""int8 inference on the CPU: post-training static quantization of the backbone (FX graph mode, x86 backend).

The backbone holds nearly all of an FCN's arithmetic (FCN-8s VGG16: 99.9%), so only it is quantized: weights per
output channel, activations per tensor with ranges recorded on calibration images (histogram observers). The head
(1x1 score layers, skips, bilinear upsampling) stays in float32. VGG and ResNet backbones are supported (their
forward passes trace with torch.fx); the check that matters — argmax agreement with the float32 model — is reported
by ``fcnseg benchmark --amp int8`` and BENCHMARKS.md.
"""
from __future__ import annotations

import copy
import warnings
from typing import Iterable

import torch
from torch import nn
from torch.ao.quantization import (HistogramObserver, QConfig, default_per_channel_weight_observer,
                                   get_default_qconfig_mapping)
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from .errors import UserError
from .models.backbones.vgg import GemmConv2d
from .runtime import _cpu_flags

SUPPORTED = ("vgg", "resnet")


def check_int8_supported(model: nn.Module) -> None:
    name = getattr(model.backbone, "name", type(model.backbone).__name__)
    if not str(name).startswith(SUPPORTED):
        raise UserError(f"int8 inference supports VGG and ResNet backbones, not {name}; use --amp none or bf16")
    if "x86" not in torch.backends.quantized.supported_engines and "fbgemm" not in torch.backends.quantized.supported_engines:
        raise UserError("this PyTorch build has no x86/fbgemm quantized kernels; int8 inference is unavailable")


def qconfig_mapping(engine: str):
    """torch's default for the engine, except that activations use the full 8-bit range on CPUs with VNNI (no
    intermediate overflow there; torch's default keeps 7 bits for older CPUs). Measured on FCN-8s VGG16 caffe
    geometry, random weights, 500×500: argmax agreement with fp32 99.868% (7-bit) → 99.929% (8-bit)."""
    mapping = get_default_qconfig_mapping(engine)
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & _cpu_flags():
        mapping.set_global(QConfig(activation=HistogramObserver.with_args(reduce_range=False),
                                   weight=default_per_channel_weight_observer))
    return mapping


def prepare_int8(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A float copy of ``model`` (CPU, eval) whose backbone records activation ranges as it runs (calibration)."""
    check_int8_supported(model)
    engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    torch.backends.quantized.engine = engine
    q = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    for name, m in list(q.backbone.named_modules()):  # torch.ao quantizes nn.Conv2d modules
        if isinstance(m, GemmConv2d):
            parent, _, child = name.rpartition(".")
            setattr(q.backbone.get_submodule(parent) if parent else q.backbone, child, m.as_conv2d())
    with warnings.catch_warnings():  # torch.ao announces its move to torchao on every call
        warnings.simplefilter("ignore")
        q.backbone = prepare_fx(q.backbone, qconfig_mapping(engine), example_inputs=(example.cpu(),))
    q.int8_state = "calibrating"
    return q


def convert_int8(model: nn.Module) -> nn.Module:
    """Turn a calibrated ``prepare_int8`` model into the int8 one (in place; returned for convenience)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.backbone = convert_fx(model.backbone)
    model.int8_state = "int8"
    return model


@torch.inference_mode(False)
@torch.no_grad()
def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """An int8 copy of ``model`` calibrated on normalised N×3×H×W batches (a few real images are enough)."""
    q = None
    for x in calibration:
        if q is None:
            q = prepare_int8(model, x)
        q(x.cpu().clone())
    if q is None:
        raise UserError("int8 quantization needs at least one calibration batch")
    return convert_int8(q)
