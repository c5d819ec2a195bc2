"""``fcnseg export``: a checkpoint → ONNX or TorchScript, verified against PyTorch before the file appears.

The exported graph takes what an image decoder gives: **float32 RGB N×3×H×W with values in 0..255** (uint8 range,
not normalised); the checkpoint's normalisation is folded into the graph, so a runtime needs no preprocessing other
than HWC→CHW and a cast. It returns float32 logits N×num_classes×H×W (argmax over dim 1 = class index). Batch,
height and width are dynamic: the head crops and resizes by run-time sizes, which the tracer records as shape
operations, and verification runs at sizes other than the tracing size to prove it.

ONNX metadata (``metadata_props``, values are JSON): ``fcnseg.classes``, ``fcnseg.palette``,
``fcnseg.normalization`` (the folded normalisation), ``fcnseg.input``, ``fcnseg.output``, ``fcnseg.model_spec``,
``fcnseg.min_size`` and ``fcnseg.verification``. TorchScript files carry the same keys in ``fcnseg.json``
(``torch.jit.load(path, _extra_files={"fcnseg.json": ""})``).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .data import default_palette
from .errors import UserError
from .files import atomic_path
from .models import model_spec
from .onnxgraph import OPSET, TRACE_SHAPE, write_onnx
from .train.checkpoint import model_from_checkpoint

log = logging.getLogger("fcnseg")
FORMATS = ("onnx", "torchscript")
# verified at sizes other than the tracing size (odd ones, a batch of 2): a size baked into the graph shows up
VERIFY_SHAPES = ((1, 3, 97, 131), (2, 3, 160, 128), (1, 3, 224, 224))
MIN_AGREEMENT = 0.999
# int8 graphs are verified on real images held out of calibration (random noise lies outside the calibrated ranges)
INT8_HELD_OUT = 4
INT8_MIN_AGREEMENT = 0.95
# Inception-v3 zero-pads inputs below 75 px in Python; a traced graph keeps the no-padding branch of its tracing size,
# so exported Inception models need H, W >= 75 (recorded as fcnseg.min_size; `fcnseg serve` pads smaller images).
MIN_SIZE = {"inception_v3": 75}
INPUT_DOC = ("float32 RGB N×3×H×W, values 0..255 (uint8 range, not normalised: normalisation is folded into the "
             "graph); N, H, W dynamic")
OUTPUT_DOC = "float32 logits N×num_classes×H×W; argmax over dim 1 gives the class index"


class Exportable(nn.Module):
    """``model`` with its normalisation folded in: 0..255 float RGB N×3×H×W → logits N×C×H×W."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.normalization = model.normalization

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalization(image))


def metadata(model: nn.Module, ckpt: dict) -> dict[str, str]:
    """The metadata both formats carry, as JSON strings."""
    palette = model.palette or default_palette(model.num_classes)
    backbone = getattr(model, "backbone_name", "")
    return {
        "fcnseg.classes": json.dumps(list(model.classes)),
        "fcnseg.palette": json.dumps([list(map(int, c)) for c in palette]),
        "fcnseg.normalization": json.dumps({**model.normalization.to_dict(), "folded_into_graph": True}),
        "fcnseg.input": json.dumps({"name": "image", "dtype": "float32", "layout": "NCHW", "channels": "RGB",
                                    "value_range": [0, 255], "doc": INPUT_DOC}),
        "fcnseg.output": json.dumps({"name": "logits", "dtype": "float32", "layout": "NCHW", "doc": OUTPUT_DOC}),
        "fcnseg.model_spec": json.dumps(model_spec(model)),
        "fcnseg.min_size": json.dumps(MIN_SIZE.get(backbone, 1)),
        "fcnseg.resize": json.dumps((ckpt.get("config") or {}).get("resize")),
    }


def _inputs(shapes, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, s, generator=g).float() for s in shapes]


def _compare(ref: torch.Tensor, out: torch.Tensor) -> dict:
    if tuple(out.shape) != tuple(ref.shape):
        return {"shape": list(ref.shape), "output_shape": list(out.shape), "max_abs_diff": float("inf"),
                "rel_diff": float("inf"), "argmax_agreement": 0.0}
    diff = (out - ref).abs().max().item()
    return {"shape": list(ref.shape), "max_abs_diff": diff, "rel_diff": diff / max(ref.abs().max().item(), 1e-12),
            "argmax_agreement": (out.argmax(1) == ref.argmax(1)).double().mean().item()}


def verify(reference: nn.Module, run, shapes=VERIFY_SHAPES, min_agreement: float | None = None, *,
           inputs: list[torch.Tensor] | None = None) -> list[dict]:
    """Run ``reference`` (PyTorch, fp32) and ``run`` (the exported model, a callable tensor → tensor) on random
    0..255 images of ``shapes`` (or on ``inputs``); return per-shape max |Δ|, relative |Δ| and argmax agreement; raise
    :class:`UserError` when any agreement is below ``min_agreement`` (default :data:`MIN_AGREEMENT`)."""
    min_agreement = MIN_AGREEMENT if min_agreement is None else min_agreement
    results = []
    for x in _inputs(shapes) if inputs is None else inputs:
        with torch.no_grad():
            ref = reference(x)
        try:
            out = run(x)
        except Exception as e:  # a shape baked into the graph fails here, at a size other than the tracing one
            raise UserError(f"exported model failed at input {tuple(x.shape)}: {str(e).splitlines()[0][:300]}; "
                            "no file written") from None
        results.append(_compare(ref, out))
    bad = [r for r in results if not r["argmax_agreement"] >= min_agreement]
    if bad:
        r = bad[0]
        raise UserError(f"export verification failed: argmax agreement {r['argmax_agreement']:.4%} < "
                        f"{min_agreement:.1%} at input {'×'.join(map(str, r['shape']))} (max |Δ| "
                        f"{r['max_abs_diff']:.3g}); no file written")
    return results


def export_onnx(model: nn.Module, ckpt: dict, out: str | Path, *, opset: int = OPSET,
                shapes=VERIFY_SHAPES, min_agreement: float | None = None,
                calibration: list[torch.Tensor] | None = None) -> list[dict]:
    """Export ``model`` (from :func:`fcnseg.train.checkpoint.model_from_checkpoint`) to ONNX at ``out``; verify with
    onnxruntime first (see :func:`verify`) and write ``out`` only when verification passes.

    ``calibration`` (0..255 float RGB images, 1×3×H×W, real ones): write the int8 graph instead
    (:mod:`fcnseg.quantize`), calibrated on all but the last :data:`INT8_HELD_OUT` images and verified on those
    (argmax agreement with PyTorch ≥ :data:`INT8_MIN_AGREEMENT`; recorded as ``fcnseg.int8``)."""
    try:  # lazy: an optional extra
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise UserError(f"ONNX export needs onnx and onnxruntime ({e.name} is missing): pip install "
                        "'fcnseg[export]'") from None
    wrapped = Exportable(model).eval()
    with atomic_path(out) as tmp:
        write_onnx(wrapped, tmp, opset=opset)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        results = verify(wrapped, lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0]),
                         shapes, min_agreement)
        session = None  # release onnxruntime's copy of the weights (VGG: ~0.5 GB)
        props = {**metadata(model, ckpt), "fcnseg.verification": json.dumps(results)}
        if calibration is not None:
            results, props["fcnseg.int8"] = _quantize(wrapped, tmp, calibration)
            props["fcnseg.verification"] = json.dumps(results)
        proto = onnx.load(str(tmp))
        proto.doc_string = f"fcnseg FCN. input 'image': {INPUT_DOC}. output 'logits': {OUTPUT_DOC}"
        _set_props(proto, props)
        onnx.save(proto, str(tmp))
    return results


def _quantize(wrapped: nn.Module, path: Path, calibration: list[torch.Tensor]) -> tuple[list[dict], str]:
    """Replace the verified float graph at ``path`` by its int8 graph; its verification on held-out images."""
    import tempfile

    from .quantize import OnnxRuntimeModel, quantize_onnx
    if len(calibration) < INT8_HELD_OUT + 1:
        raise UserError(f"--int8 needs at least {INT8_HELD_OUT + 1} calibration images ({INT8_HELD_OUT} are held "
                        f"out to verify the int8 graph), got {len(calibration)}")
    used, held = calibration[:-INT8_HELD_OUT], calibration[-INT8_HELD_OUT:]
    with tempfile.TemporaryDirectory(prefix="fcnseg-int8-", dir=path.parent) as d:
        int8 = Path(d) / "int8.onnx"
        quantize_onnx(path, int8, used)
        runner = OnnxRuntimeModel(int8)
        results = verify(wrapped, runner, inputs=held, min_agreement=INT8_MIN_AGREEMENT)
        runner = None
        int8.replace(path)
    agreement = sum(r["argmax_agreement"] for r in results) / len(results)
    log.info("int8: %d calibration images, argmax agreement %.4f%% on %d held-out images", len(used),
             100 * agreement, len(held))
    return results, json.dumps({"calibration_images": len(used), "verified_on": len(held),
                                "mean_argmax_agreement": agreement, "weights": "int8 per output channel",
                                "activations": "uint8 per tensor (MinMax)", "runtime": "onnxruntime QDQ"})


def _set_props(proto, props: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = v
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v


def export_torchscript(model: nn.Module, ckpt: dict, out: str | Path, *, shapes=VERIFY_SHAPES,
                       min_agreement: float | None = None) -> list[dict]:
    """Export ``model`` as a traced TorchScript module (``torch.jit.load`` it; same input and output as the ONNX
    graph); verified after a save/load round trip and written to ``out`` only when verification passes."""
    wrapped = Exportable(model).eval()
    with atomic_path(out) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapped, (torch.zeros(TRACE_SHAPE),), check_trace=False)
            meta = metadata(model, ckpt)
            torch.jit.save(traced, str(tmp), _extra_files={"fcnseg.json": json.dumps(meta)})
            loaded = torch.jit.load(str(tmp), map_location="cpu")
        results = verify(wrapped, lambda x: loaded(x), shapes, min_agreement)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta["fcnseg.verification"] = json.dumps(results)
            torch.jit.save(traced, str(tmp), _extra_files={"fcnseg.json": json.dumps(meta)})
    return results


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, format: str = "onnx",  # noqa: A002
                      **kwargs) -> list[dict]:
    """Load ``checkpoint`` and export it (``format``: onnx | torchscript); returns the verification results."""
    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    model, ckpt = model_from_checkpoint(checkpoint)
    model = model.eval().float().cpu()
    fn = export_onnx if format == "onnx" else export_torchscript
    return fn(model, ckpt, out, **kwargs)
