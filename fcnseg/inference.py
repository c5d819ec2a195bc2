"""Prediction on images of any size: ``Predictor`` (the object predict / evaluate / serve use)."""
from __future__ import annotations

import logging
import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .quantize import check_int8_supported, quantize_int8
from .runtime import autocast, available_memory, resolve_channels_last, select_device

AMP_MODES = ("auto", "none", "bf16", "fp16", "int8")
# Below this many (scaled) input pixels an image is run whole without estimating its memory: 4 MP through VGG16
# FCN-8s takes ~3 GB. Above it, the forward pass is tiled when its estimate exceeds the memory budget.
PLAN_ABOVE_PIXELS = 4_000_000
# Bytes per image pixel that the caller needs after predict_image: predict's int64 argmax and its in-place overlay
OUTPUT_BYTES_PER_PIXEL = 48

log = logging.getLogger("fcnseg")


def resized_size(h: int, w: int, size: Sequence[int] | int) -> tuple[int, int]:
    """The (H, W) that a config's ``resize`` gives an h×w image, exactly as training's ``v2.Resize`` does: (H, W) as
    given; one number sets the shorter side and keeps the aspect ratio (the longer side truncated, as torchvision)."""
    if not isinstance(size, int) and len(size) == 1:
        size = size[0]
    if not isinstance(size, int):
        return int(size[0]), int(size[1])
    short, long = (h, w) if h <= w else (w, h)
    long = int(size * long / short)
    return (size, long) if h <= w else (long, size)


class Predictor:
    """Wrap a model for fast, safe inference: ``predictor(x)`` maps an N×3×H×W normalised float tensor to
    float32 logits of the input's size.

    Settings: inference mode and eval mode always; ``amp="auto"`` uses bf16 autocast where the CPU/GPU supports it
    natively and, on CPUs, measurably faster (fp16 on GPUs without bf16); ``channels_last`` ("auto": on, see
    ``channels_last_preferred``) is a measured speed-up for oneDNN and cuDNN convolutions. ``amp="int8"`` (CPU; needs
    the export extra) runs an ONNX Runtime int8 graph (:mod:`fcnseg.quantize`) calibrated on ``calibration``
    (normalised batches) or, when that is None, on the first ``calibration_batches`` calls (which run in float32).
    ``predict_image`` adds whole / sliding-window inference, flips and multi-scale averaging on top.

    Memory: ``memory_budget`` bytes (default: half the memory available when an image arrives) bound
    ``predict_image``. An image whose forward pass would exceed it runs in tiles of the sliding window; one whose
    full-resolution class scores alone exceed it is refused with a :class:`UserError` before anything is allocated.
    """

    def __init__(self, model: nn.Module, device: str | torch.device | None = None, *, amp: str = "auto",
                 channels_last: bool | str = "auto", compile: bool = False,  # noqa: A002
                 calibration: Iterable[torch.Tensor] | None = None, calibration_batches: int = 4,
                 memory_budget: int | None = None):
        self.device = select_device(device)
        self.memory_budget = memory_budget
        self._cost: tuple[float, float] | None = None
        if amp not in AMP_MODES:
            raise UserError(f"unknown amp mode {amp!r}; valid: {', '.join(AMP_MODES)}")
        if amp == "int8" and self.device.type != "cpu":
            raise UserError(f"int8 inference runs on the CPU only, not {self.device}; use --amp auto on GPUs")
        self.model = model.eval().to(self.device)
        self.amp = amp
        self._calibrating = 0
        self._calibration: list[torch.Tensor] = []
        if amp == "int8":
            check_int8_supported(model)
            channels_last = False  # ONNX Runtime takes NCHW arrays
            self._calibrating = max(1, calibration_batches)
        self.channels_last = channels_last = resolve_channels_last(channels_last, self.device, training=False)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = self.model
        if amp == "int8" and calibration is not None:
            self.forward = quantize_int8(self.model, calibration)
            self._calibrating = 0
        if compile and amp != "int8":
            try:
                self.forward = torch.compile(self.model, dynamic=True)
            except Exception as e:  # compile is an optimisation: never fail a prediction over it
                log.warning("torch.compile unavailable (%s); running eagerly", e)
        self.normalization = model.normalization
        self.num_classes = model.num_classes
        self.heads = getattr(model, "heads", None)  # several score heads: see predict_image's all_heads

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.training:  # the trainer shares this model and switches it back to train mode between uses
            self.model.eval()
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._calibrating:
            return self._calibrate(x)
        with autocast(self.device, "none" if self.amp == "int8" else self.amp):
            out = self.forward(x)
        return out.float()

    def _calibrate(self, x: torch.Tensor) -> torch.Tensor:
        """A float32 pass that keeps its input; after ``calibration_batches`` of them the int8 graph takes over."""
        out = self.model(x)
        self._calibration.append(x.clone())
        self._calibrating -= 1
        if not self._calibrating:
            with torch.inference_mode(False):
                self.forward = quantize_int8(self.model, self._calibration)
            self._calibration = []
        return out.float()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB N×3×H×W → the model's normalised input (on the predictor's device)."""
        return self.normalization(images.to(self.device))

    @torch.inference_mode()
    def predict_image(self, images: torch.Tensor, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                      input_size: Sequence[int] | int | None = None, window: int | None = None,
                      overlap: float = 1 / 3, all_heads: bool = False) -> torch.Tensor:
        """uint8 RGB N×3×H×W → averaged softmax probabilities N×C×H×W (float32) at the input's resolution.

        A model with several heads (``model.heads``) gives its first head's probabilities, so that every caller sees
        a one-head model (SIFT Flow's semantic classes); ``all_heads=True`` gives every head's, each a softmax of its
        own, concatenated in ``heads`` order (split them with :func:`fcnseg.models.head_slices`).

        ``input_size``: resize to this first, as training resized (see :func:`resized_size`); ``scales``: multi-scale
        averaging; ``flip``: add horizontally flipped passes; ``window``: sliding-window inference with square tiles
        of this size (for images too large for memory), ``overlap`` between tiles.
        """
        h, w = images.shape[-2:]
        if not all(math.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"scales must be positive, got {list(scales)}")
        if window is not None and (window < 1 or not 0 <= overlap < 1):
            raise ValueError(f"window must be at least 1 and overlap in [0, 1), got {window} and {overlap}")
        size0 = resized_size(h, w, input_size) if input_size else (h, w)
        window = self.plan_window(images.shape[0], (h, w), size0, scales, window, flip)
        x0 = self.normalize(images)
        if input_size:
            x0 = F.interpolate(x0, size=size0, mode="bilinear", align_corners=False, antialias=True)
        probs = None  # the first pass's softmax becomes the sum: no zero-filled C×H×W map beside it
        for s in scales:
            # by size, not scale_factor: the way back below maps by the sizes' ratio, so must the way there (with a
            # scale factor the two differ by up to a pixel at the far edge); and never below 1 pixel
            size = tuple(max(1, round(n * s)) for n in x0.shape[-2:])
            x = x0 if size == tuple(x0.shape[-2:]) else F.interpolate(x0, size=size, mode="bilinear",
                                                                      align_corners=False)
            for flipped in ((False, True) if flip else (False,)):
                xi = x.flip(-1) if flipped else x
                logits = self._sliding(xi, window, overlap) if window else self(xi)
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                p = self._softmax(logits, all_heads)
                del logits
                probs = p if probs is None else probs.add_(p)
        return probs.div_(len(scales) * (2 if flip else 1))

    def _softmax(self, logits: torch.Tensor, all_heads: bool) -> torch.Tensor:
        if not self.heads:
            return logits.softmax(1)
        first = self.heads[0][1]
        if not all_heads:
            return logits[:, :first].softmax(1)
        start, parts = 0, []
        for _, n in self.heads:
            parts.append(logits[:, start:start + n].softmax(1))
            start += n
        return torch.cat(parts, 1)

    def plan_window(self, n: int, size: tuple[int, int], size0: tuple[int, int], scales: Sequence[float],
                    window: int | None, flip: bool = False) -> int | None:
        """The sliding-window tile that keeps ``predict_image`` within the memory budget (None: run whole).

        ``size``: the image's (H, W), where the class scores live; ``size0``: the network's input before scaling.
        The forward pass's peak is estimated from two small probes (the largest layer input + output, ×2 for
        oneDNN's reorders and workspace), linear in the pixel count."""
        h, w = size
        top, c = max(scales), self.num_classes
        scaled = size0[0] * size0[1] * top * top
        budget = self.memory_budget or available_memory(self.device) // 2
        source = "memory_budget" if self.memory_budget else "half the available memory"
        limit = f"the memory budget of {_gb(budget)} ({source})"
        outputs = n * self.output_bytes(h * w, scaled, c, passes=len(scales) * (2 if flip else 1),
                                        rescaled=any(s != 1 for s in scales) or tuple(size0) != (h, w))
        if outputs > budget:
            hint = "; try --scales 1" if len(scales) > 1 else ""
            raise UserError(f"a {w}×{h} image needs about {_gb(outputs)} for its full-resolution class scores "
                            f"({c} classes, {len(scales)} scale(s){', flipped' if flip else ''}), more than "
                            f"{limit}{hint}; downscale the image or use a machine "
                            f"with more memory")
        if window is not None or scaled <= PLAN_ABOVE_PIXELS:
            return window
        room = budget - outputs
        if n * self.forward_bytes(scaled) <= room:
            return None
        side = 64
        while n * self.forward_bytes((side + 32) ** 2) <= room and side + 32 < max(size0) * top:
            side += 32
        if n * self.forward_bytes(side * side) > room:
            raise UserError(f"a {w}×{h} image does not fit {limit} even in "
                            f"{side}-pixel tiles; use a machine with more memory")
        log.info("%d×%d image: tiled into %d×%d windows to stay within the memory budget of %s", w, h, side, side,
                 _gb(budget))
        return side

    @staticmethod
    def output_bytes(pixels: int, scaled: float, classes: int, *, passes: int, rescaled: bool) -> float:
        """Bytes of the full-resolution maps of one image: uint8 image, float input, a pass's scores and their
        softmax (C float32 maps each), the running sum when there are several passes, scores resized back when the
        network saw another size, the scaled input and the window's count at the largest scale, and the caller's
        argmax and overlay (OUTPUT_BYTES_PER_PIXEL)."""
        full = 3 + 12 + 8 * classes + (4 * classes if passes > 1 else 0) + (4 * classes if rescaled else 0)
        return pixels * (full + OUTPUT_BYTES_PER_PIXEL) + (scaled * (12 + 4 + 4 * classes) if rescaled else 0)

    def forward_bytes(self, pixels: float) -> float:
        """Estimated peak bytes of one image's forward pass at ``pixels`` input pixels."""
        if self._cost is None:
            (p1, b1), (p2, b2) = (self._probe(s) for s in (96, 160))
            slope = max((b2 - b1) / (p2 - p1), b2 / p2 / 4)
            self._cost = (max(b1 - slope * p1, 0.0), slope)
        return 2 * (self._cost[0] + self._cost[1] * pixels)

    def _probe(self, side: int) -> tuple[int, int]:
        """(input pixels, the largest input + output bytes of any layer) for one side×side forward pass."""
        peak = [0]

        def hook(module, inputs, output):
            tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
            peak[0] = max(peak[0], sum(t.numel() * t.element_size() for t in tensors))

        leaves = [m for m in self.model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            x = torch.zeros(1, getattr(self.model, "in_channels", 3), side, side, device=self.device)
            with torch.no_grad(), autocast(self.device, "none" if self.amp == "int8" else self.amp):
                self.model(x)
        finally:
            for h in handles:
                h.remove()
        return side * side, max(peak[0], 4 * 3 * side * side)

    def _sliding(self, x: torch.Tensor, window: int, overlap: float) -> torch.Tensor:
        h, w = x.shape[-2:]
        stride = max(1, int(window * (1 - overlap)))
        out = torch.zeros(x.shape[0], self.num_classes, h, w, device=self.device)
        count = torch.zeros(1, 1, h, w, device=self.device)
        ys = list(range(0, max(h - window, 0) + 1, stride))
        xs = list(range(0, max(w - window, 0) + 1, stride))
        if ys[-1] + window < h:
            ys.append(h - window)
        if xs[-1] + window < w:
            xs.append(w - window)
        for y in ys:
            for x0 in xs:
                tile = x[..., max(y, 0):y + window, max(x0, 0):x0 + window]
                out[..., max(y, 0):y + window, max(x0, 0):x0 + window] += self(tile)
                count[..., max(y, 0):y + window, max(x0, 0):x0 + window] += 1
        return out.div_(count)


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"
