"""Prediction on images of any size: ``Predictor`` (the object predict / evaluate / serve use)."""
from __future__ import annotations

import logging
import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .quantize import check_int8_supported, convert_int8, prepare_int8, quantize_int8
from .runtime import autocast, resolve_channels_last, select_device

AMP_MODES = ("auto", "none", "bf16", "fp16", "int8")

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
    natively and, on CPUs, measurably faster (fp16 on GPUs without bf16); ``channels_last`` ("auto": on, see ``channels_last_preferred``) is a
    measured speed-up for oneDNN and cuDNN convolutions. ``amp="int8"`` (CPU, VGG/ResNet backbones) quantizes the backbone after calibrating it on
    ``calibration`` (normalised batches) or, when that is None, on the first ``calibration_batches`` calls (which
    run in float32 while they record activation ranges). ``predict_image`` adds whole / sliding-window inference, flips and multi-scale averaging on top.
    """

    def __init__(self, model: nn.Module, device: str | torch.device | None = None, *, amp: str = "auto",
                 channels_last: bool | str = "auto", compile: bool = False,  # noqa: A002
                 calibration: Iterable[torch.Tensor] | None = None, calibration_batches: int = 4):
        self.device = select_device(device)
        if amp not in AMP_MODES:
            raise UserError(f"unknown amp mode {amp!r}; valid: {', '.join(AMP_MODES)}")
        if amp == "int8" and self.device.type != "cpu":
            raise UserError(f"int8 inference runs on the CPU only, not {self.device}; use --amp auto on GPUs")
        self.model = model.eval().to(self.device)
        self.amp = amp
        self._calibrating = 0
        if amp == "int8":
            check_int8_supported(model)
            channels_last = False  # measured: quantized kernels take NCHW input as fast, and quantize NHWC slower
            if calibration is not None:
                self.model = quantize_int8(self.model, calibration)
            else:
                self._calibrating = max(1, calibration_batches)
        self.channels_last = channels_last = resolve_channels_last(channels_last, self.device, training=False)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = self.model
        if compile:
            try:
                self.forward = torch.compile(self.model, dynamic=True)
            except Exception as e:  # compile is an optimisation: never fail a prediction over it
                log.warning("torch.compile unavailable (%s); running eagerly", e)
        self.normalization = model.normalization
        self.num_classes = model.num_classes

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
        with torch.inference_mode(False), torch.no_grad():  # observers update buffers: not inference tensors
            x = x.clone()
            if getattr(self.model, "int8_state", None) != "calibrating":
                self.model = prepare_int8(self.model, x)
            out = self.model(x)
        self._calibrating -= 1
        if not self._calibrating:
            self.model = self.forward = convert_int8(self.model)
            log.info("int8: backbone quantized after calibration")
        return out.float()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB N×3×H×W → the model's normalised input (on the predictor's device)."""
        return self.normalization(images.to(self.device))

    @torch.inference_mode()
    def predict_image(self, images: torch.Tensor, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                      input_size: Sequence[int] | int | None = None, window: int | None = None,
                      overlap: float = 1 / 3) -> torch.Tensor:
        """uint8 RGB N×3×H×W → averaged softmax probabilities N×C×H×W (float32) at the input's resolution.

        ``input_size``: resize to this first, as training resized (see :func:`resized_size`); ``scales``: multi-scale
        averaging; ``flip``: add horizontally flipped passes; ``window``: sliding-window inference with square tiles
        of this size (for images too large for memory), ``overlap`` between tiles.
        """
        h, w = images.shape[-2:]
        if not all(math.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"scales must be positive, got {list(scales)}")
        if window is not None and (window < 1 or not 0 <= overlap < 1):
            raise ValueError(f"window must be at least 1 and overlap in [0, 1), got {window} and {overlap}")
        x0 = self.normalize(images)
        if input_size:
            x0 = F.interpolate(x0, size=resized_size(h, w, input_size), mode="bilinear", align_corners=False,
                               antialias=True)
        probs = torch.zeros(images.shape[0], self.num_classes, h, w, device=self.device)
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
                probs += logits.softmax(1)
        return probs / (len(scales) * (2 if flip else 1))

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
        return out / count
