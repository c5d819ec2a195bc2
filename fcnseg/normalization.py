"""Input normalisation that travels with the weights, so prediction never has to guess it."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .errors import UserError


@dataclass(frozen=True)
class Normalization:
    """How a uint8 RGB image becomes the tensor a model expects: scale to ``value_range``, optionally flip to BGR,
    then ``(x - mean) / std`` per channel (in the model's channel order).

    Inputs with more channels than RGB (NYUDv2's RGB-D and HHA) give one ``mean`` / ``std`` entry per channel;
    ``bgr`` then flips the first three (the colour ones), and the ``log_channels`` hold depth in millimetres, which
    become ``log(depth)`` instead of being scaled (the FCN authors' depth input, nyud_layers.py)."""

    mean: tuple[float, ...]
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    bgr: bool = False
    value_range: float = 1.0
    name: str = "custom"
    log_channels: tuple[int, ...] = ()

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0-255 float) ``[..., C, H, W]`` → normalised float32 (C = 3, RGB, unless ``mean`` says more)."""
        c = len(self.mean)
        if image.shape[-3] != c:
            raise UserError(f"the model takes {c}-channel input (normalisation {self.name!r}) but got "
                            f"{image.shape[-3]} channels; give it images of the kind it was trained on")
        x = image.float()
        if self.log_channels:  # depth ≤ 0 mm (no reading) counts as 1 mm: a finite log
            is_log = torch.zeros(c, dtype=torch.bool, device=x.device)
            is_log[list(self.log_channels)] = True
            x = torch.where(is_log.view(c, 1, 1), x.clamp(min=1.0).log(), x * (self.value_range / 255.0))
        else:
            x = x * (self.value_range / 255.0)
        if self.bgr:
            x = x.flip(-3) if c == 3 else torch.cat((x[..., :3, :, :].flip(-3), x[..., 3:, :, :]), -3)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(c, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(c, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of ``__call__``: normalised → uint8 RGB (for visualisation)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        x = x * std + mean
        if self.bgr:
            x = x.flip(-3)
        return (x * (255.0 / self.value_range)).round().clamp(0, 255).to(torch.uint8)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# torchvision ImageNet weights
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), name="imagenet")
# The authors' Caffe FCN (and pytorch-fcn): BGR, 0-255, ILSVRC mean pixel
CAFFE_BGR = Normalization((104.00698793, 116.66876762, 122.67891434), bgr=True, value_range=255.0, name="caffe")
# torchvision's features-only VGG16 (VGG16_Weights.IMAGENET1K_FEATURES, ported from amdegroot/ssd.pytorch): RGB, 0-255
# minus the mean pixel
VGG16_FEATURES = Normalization((0.48235, 0.45882, 0.40784), (1 / 255, 1 / 255, 1 / 255), name="vgg16-features")
# torchvision Inception-v3 (transform_input convention: [-1, 1])
INCEPTION = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), name="inception")
