"""int8 inference on the CPU through ONNX Runtime: static post-training quantization of the exported ONNX graph.

The model is exported with :func:`fcnseg.onnxgraph.write_onnx` (the same graph ``fcnseg export`` verifies), activation
ranges are recorded on calibration images, and ONNX Runtime's ``quantize_static`` writes a QDQ graph: convolution
weights int8 per output channel, activations uint8 per tensor. The session runs the convolutions (nearly all of an
FCN's arithmetic) with int8 kernels, except the first one, which reads the image; the rest of the graph stays
float32. Needs ``pip install 'fcnseg[export]'``.

Accuracy is measured, not assumed: BENCHMARKS.md ("int8") gives speed and mIoU against float32 on a trained
checkpoint, and ``fcnseg export --int8`` reports the argmax agreement with PyTorch on held-back calibration images.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .onnxgraph import write_onnx

log = logging.getLogger("fcnseg")

# op types quantized: the convolutions. Pooling, Add, Resize and the transposed (bilinear) convolutions stay float:
# quantizing them adds Quantize/Dequantize pairs around cheap ops and costs accuracy for no speed.
OP_TYPES = ["Conv"]


def require_onnxruntime() -> None:
    """Raise a one-line :class:`UserError` when the export extra (onnx, onnxruntime) is not installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise UserError(f"int8 inference runs on ONNX Runtime, and {e.name} is not installed: pip install "
                        "'fcnseg[export]'") from None


def check_int8_supported(model: nn.Module) -> None:
    """Refuse, in one line, what int8 cannot run: no ONNX Runtime, or a model that is not one FCN on 3 channels."""
    require_onnxruntime()
    if getattr(model, "streams", 1) != 1 or getattr(model, "in_channels", 3) != 3:
        raise UserError("int8 inference takes one-stream RGB models; use --amp none or bf16 for this model")


class _Batches:
    """onnxruntime's ``CalibrationDataReader`` protocol over N×C×H×W float tensors (kept, so it can rewind)."""

    def __init__(self, batches: Iterable[torch.Tensor], name: str):
        self.batches = [x.detach().float().cpu().contiguous().numpy() for x in batches]
        self.name, self.count = name, len(self.batches)
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.name: x}

    def rewind(self) -> None:
        self._it: Iterator[np.ndarray] = iter(self.batches)


def quantize_onnx(src: str | Path, dst: str | Path, calibration: Iterable[torch.Tensor], *,
                  input_name: str = "image") -> int:
    """Quantize the float ONNX graph ``src`` into ``dst`` (QDQ, see the module docstring), with activation ranges
    from ``calibration`` (batches of ``src``'s input); returns the number of calibration batches."""
    require_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _Batches(calibration, input_name)
    if not reader.count:
        raise UserError("int8 quantization needs at least one calibration batch")
    with tempfile.TemporaryDirectory(prefix="fcnseg-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # folds constants, fuses, infers shapes
        quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=OP_TYPES,
                        nodes_to_exclude=first_convolution(pre),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return reader.count


def first_convolution(path: str | Path) -> list[str]:
    """The name of the graph's first Conv node (the one that reads the image), kept in float32: quantizing it cost a
    trained CamVid FCN-4s ResNet-18 0.97 mIoU points (0.4520 vs 0.4617 float, 101 val images), keeping it 0.00
    (0.4618), where keeping the four score layers instead gained nothing (0.4517) — BENCHMARKS.md, int8."""
    import onnx
    convs = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Conv"]
    return convs[:1]


class OnnxRuntimeModel:
    """An ONNX file run by ONNX Runtime on the CPU, called like a module: N×C×H×W float tensor → float32 tensor."""

    def __init__(self, path: str | Path, threads: int | None = None):
        require_onnxruntime()
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor]) -> OnnxRuntimeModel:
    """An int8 ONNX Runtime copy of ``model`` (its input as the model takes it, i.e. normalised), calibrated on
    ``calibration`` batches (a few real images are enough; more give steadier ranges)."""
    check_int8_supported(model)
    float_model = model.eval().float().cpu()
    with tempfile.TemporaryDirectory(prefix="fcnseg-int8-") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        write_onnx(float_model, fp32)
        n = quantize_onnx(fp32, int8, calibration)
        runner = OnnxRuntimeModel(int8)
    log.info("int8: ONNX Runtime graph quantized after %d calibration batch(es)", n)
    return runner
