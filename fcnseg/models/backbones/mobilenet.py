"""MobileNetV3-Large: the last block at each of strides 4/8/16/32 (24, 40, 112 and 960 channels)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from ...normalization import IMAGENET


class MobileNetBackbone(nn.Module):
    # indices in torchvision's mobilenet_v3_large().features after which the stride is 4, 8, 16 and 32
    TAPS = {3: 4, 6: 8, 12: 16, 16: 32}

    def __init__(self):
        super().__init__()
        self.name = "mobilenet_v3_large"
        self.features = tvm.mobilenet_v3_large(weights=None).features
        self.out_channels = {4: 24, 8: 40, 16: 112, 32: 960}
        self.default_normalization = IMAGENET
        self.grid = "corner"  # padded stride-2 convolutions centre a stride-s feature j at pixel s*j (models.fcn)

    def stages(self) -> list[nn.Module]:
        return list(self.features)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = {}
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self.TAPS:
                out[self.TAPS[i]] = x
        return out
