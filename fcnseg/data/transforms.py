"""Joint image + mask transforms on torchvision.transforms.v2.

Images are ``tv_tensors.Image`` and masks ``tv_tensors.Mask``, so torchvision itself resizes masks with nearest
neighbour (never configurable here: a bilinearly resized mask invents labels) and applies colour jitter to images
only. Normalisation is not a transform: the engine applies the model's own ``Normalization`` on the device.
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


def build_transforms(train: bool, *, crop_size: int | Sequence[int] | None = None,
                     scale_range: Sequence[float] | None = (0.5, 2.0), hflip: bool = True, color_jitter: float = 0.0,
                     resize: int | Sequence[int] | None = None, ignore_index: int = IGNORE_INDEX) -> v2.Compose | None:
    """Training: [resize] → random scale → random crop (padded with 0 / ``ignore_index``) → flip → colour jitter.
    Evaluation: only the fixed ``resize`` a recipe may ask for (metrics are computed at the original size anyway)."""
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
        if color_jitter:
            ops.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return v2.Compose(ops) if ops else None


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]], ignore_index: int = IGNORE_INDEX):
    """Stack samples of different sizes by padding to the largest: image with 0, mask with ``ignore_index``
    (so padding never counts in the loss or the metrics)."""
    h = max(img.shape[-2] for img, _ in batch)
    w = max(img.shape[-1] for img, _ in batch)
    images = torch.zeros(len(batch), 3, h, w, dtype=torch.uint8)
    masks = torch.full((len(batch), h, w), ignore_index, dtype=torch.int64)
    for i, (img, mask) in enumerate(batch):
        images[i, :, :img.shape[-2], :img.shape[-1]] = img.as_subclass(torch.Tensor)
        masks[i, :mask.shape[-2], :mask.shape[-1]] = mask.as_subclass(torch.Tensor)
    return images, masks


def class_mix(images: torch.Tensor, masks: torch.Tensor, prob: float, *, keep: int | None = None,
              ignore_index: int = IGNORE_INDEX, generator: torch.Generator | None = None):
    """ClassMix (Olsson et al., WACV 2021) between the samples of a training batch, a copy-paste augmentation.

    With probability ``prob`` sample ``i`` receives, at the same place, the pixels and labels of a random half of the
    classes in sample ``i + 1`` (cyclically): on clothing data, outfits no photo has (one person's top over another's
    skirt), so a garment's class must come from its own look rather than from the outfit it usually appears in.
    ``keep`` (the background class) and ``ignore_index`` (crop padding) are never pasted. Images may be uint8 or
    normalised float; returns new tensors (the inputs are not changed) — or the inputs themselves when nothing is
    pasted. Randomness comes from ``generator`` (default: torch's global CPU generator, so runs repeat by seed).
    """
    n = images.shape[0]
    if prob <= 0 or n < 2:
        return images, masks
    draw = torch.rand(n, generator=generator)
    out_images, out_masks = images, masks
    for i in range(n):
        if draw[i] >= prob:
            continue
        src = masks[(i + 1) % n]
        present = src.unique().cpu()
        present = present[(present != ignore_index) & (present != (-1 if keep is None else keep))]
        if present.numel() == 0:
            continue
        chosen = present[torch.randperm(present.numel(), generator=generator)[: (present.numel() + 1) // 2]]
        paste = torch.isin(src, chosen.to(src.device))
        if out_images is images:
            out_images, out_masks = images.clone(), masks.clone()
        out_images[i] = torch.where(paste, images[(i + 1) % n], images[i])
        out_masks[i] = torch.where(paste, src, masks[i])
    return out_images, out_masks
