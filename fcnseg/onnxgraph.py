"""One way to write an FCN as ONNX: ``torch.onnx.export(..., dynamo=True)`` with dynamic batch, height and width.

``fcnseg export`` (which folds the normalisation in and verifies the graph) and int8 inference (:mod:`fcnseg.quantize`)
both write through :func:`write_onnx`.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import UserError

# traced at this size; callers verify at others, so that a size baked into the graph shows up
TRACE_SHAPE = (1, 3, 128, 160)
OPSET = 18  # the dynamo exporter's lowest


def write_onnx(module: nn.Module, path: str | Path, *, opset: int = OPSET) -> None:
    """``module`` (N×C×H×W → N×K×H×W) → an ONNX file at ``path`` with dynamic batch, height and width, through
    ``torch.export`` (the dynamo exporter). Not verified here: callers run :func:`verify`."""
    from torch.export import Dim
    with torch.no_grad():  # one eager pass caches the head's upsampling plans, which traced (fake) weights cannot make
        module(torch.zeros(TRACE_SHAPE))
    with warnings.catch_warnings(), _quiet("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, (torch.zeros(TRACE_SHAPE),), None, dynamo=True, opset_version=opset,
                                        input_names=["image"], output_names=["logits"], verbose=False,
                                        dynamic_shapes=({0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC},))
        except Exception as e:  # e.g. an opset this torch cannot write, or a model torch.export cannot trace
            raise UserError(f"ONNX export (opset {opset}) failed: {str(e).strip().splitlines()[0][:300]}") from e
    proto = program.model_proto
    name_dynamic_axes(proto)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def name_dynamic_axes(proto) -> None:
    """Call the input's dynamic axes ``batch``, ``height``, ``width`` (torch.export numbers its symbols) everywhere
    they appear, so the output reads N×K×height×width too."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {dims[i].dim_param: new for i, new in ((0, "batch"), (2, "height"), (3, "width")) if dims[i].dim_param}
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_param = names[d.dim_param]


@contextlib.contextmanager
def _quiet(*loggers: str):
    """The exporter's optimiser logs every pass at INFO ("Removed 213 unused nodes"): keep warnings and errors only."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for log, _ in saved:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for log, level in saved:
            log.setLevel(level)
