"""Joint image + mask transforms on torchvision.transforms.v2.

Images are ``tv_tensors.Image`` and masks ``tv_tensors.Mask``, so torchvision itself resizes masks with nearest
neighbour (never configurable here: a bilinearly resized mask invents labels) and applies colour jitter to images
only. Normalisation is not a transform: training applies the model's own ``Normalization`` on the device.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .base import IGNORE_INDEX


class RandomScale(v2.Transform):
    """Resize image and mask together by a factor drawn uniformly from ``scale_range``."""

    def __init__(self, scale_range: Sequence[float]):
        super().__init__()
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        s = float(torch.empty(1).uniform_(*self.scale_range))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return TF.resize(inpt, params["size"], antialias=True)
        return inpt


class ColorJitterRGB(v2.ColorJitter):
    """``v2.ColorJitter`` on the colour channels only: an image with more channels than RGB (NYUDv2's RGB-D, RGB-HHA)
    keeps its depth or HHA channels as they are; 0-255 float images (those holding depth) are jittered as uint8."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image) or (inpt.shape[-3] == 3 and inpt.dtype == torch.uint8):
            return super().transform(inpt, params)
        rgb = inpt.as_subclass(torch.Tensor)[..., :3, :, :]
        jittered = super().transform(tv_tensors.Image(rgb.round().clamp(0, 255).to(torch.uint8)), params)
        out = inpt.as_subclass(torch.Tensor).clone()
        out[..., :3, :, :] = jittered.as_subclass(torch.Tensor).to(out.dtype)
        return tv_tensors.wrap(out, like=inpt)


def build_transforms(train: bool, *, crop_size: int | Sequence[int] | None = None,
                     scale_range: Sequence[float] | None = (0.5, 2.0), hflip: bool = True, color_jitter: float = 0.0,
                     resize: int | Sequence[int] | None = None, ignore_index: int = IGNORE_INDEX,
                     color_channels: int = 3) -> v2.Compose | None:
    """Training: [resize] → random scale → random crop (padded with 0 / ``ignore_index``) → flip → colour jitter.
    Evaluation: only the fixed ``resize`` a recipe may ask for (metrics are computed at the original size anyway).
    ``color_channels``: 3 when the image's first three channels are RGB (the only ones colour jitter touches), 0 when
    it holds no colour (NYUDv2's depth or HHA alone: no jitter)."""
    ops: list = []
    if resize:
        ops.append(v2.Resize(resize, antialias=True))
    if train:
        if scale_range and tuple(scale_range) != (1.0, 1.0):
            ops.append(RandomScale(scale_range))
        if crop_size:
            ops.append(v2.RandomCrop(crop_size, pad_if_needed=True,
                                     fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}))
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
        if color_jitter and color_channels:
            ops.append(ColorJitterRGB(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return v2.Compose(ops) if ops else None


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]], ignore_index: int = IGNORE_INDEX):
    """Stack samples of different sizes by padding to the largest: image with 0, mask with ``ignore_index``
    (so padding never counts in the loss or the metrics). Images keep their channels and dtype."""
    h = max(img.shape[-2] for img, _ in batch)
    w = max(img.shape[-1] for img, _ in batch)
    first = batch[0][0]
    images = torch.zeros(len(batch), first.shape[-3], h, w, dtype=first.dtype)
    # (masks with one row per head, K×H×W, stack to N×K×H×W)
    masks = torch.full((len(batch), *batch[0][1].shape[:-2], h, w), ignore_index, dtype=torch.int64)
    for i, (img, mask) in enumerate(batch):
        images[i, :, :img.shape[-2], :img.shape[-1]] = img.as_subclass(torch.Tensor)
        masks[i, ..., :mask.shape[-2], :mask.shape[-1]] = mask.as_subclass(torch.Tensor)
    return images, masks
