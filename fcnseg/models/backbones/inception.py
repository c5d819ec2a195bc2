"""Inception-v3 (the FCN-GoogLeNet variant): maxpool1 / Mixed_5d / Mixed_6e / Mixed_7c at strides
4 / 8 / 16 / 32.

Inception's unpadded convolutions make feature sizes a little smaller than H / stride (35, 17, 8 at 299 px); the
head aligns them at run time. Inputs smaller than 75 px (the net's minimum) are zero-padded and the head crops back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from ...normalization import INCEPTION

MIN_SIZE = 75


class InceptionBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.name = "inception_v3"
        self.body = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True)
        del self.body.fc, self.body.avgpool, self.body.dropout
        self.out_channels = {4: 64, 8: 288, 16: 768, 32: 2048}
        self.default_normalization = INCEPTION
        # unpadded stride-2 convolutions and pools: a stride-s feature j is centred on pixel s*j + origins[s]
        # (conv 3×3/2 → 2j+1, conv 3×3 → 2j+3, pool 3×3/2 → 4j+5; conv 3×3, pool → 8j+13; Mixed_6a → 16j+21;
        # Mixed_7a → 32j+37), which the head's corner grid places exactly
        self.grid, self.origins = "corner", {4: 5, 8: 13, 16: 21, 32: 37}

    def stages(self) -> list[nn.Module]:
        b = self.body
        return [b.Mixed_5b, b.Mixed_5c, b.Mixed_5d, b.Mixed_6a, b.Mixed_6b, b.Mixed_6c, b.Mixed_6d, b.Mixed_6e,
                b.Mixed_7a, b.Mixed_7b, b.Mixed_7c]

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        b = self.body
        h, w = x.shape[-2:]
        if h < MIN_SIZE or w < MIN_SIZE:
            x = F.pad(x, (0, max(0, MIN_SIZE - w), 0, max(0, MIN_SIZE - h)))
        c2 = b.maxpool1(b.Conv2d_2b_3x3(b.Conv2d_2a_3x3(b.Conv2d_1a_3x3(x))))
        x = b.maxpool2(b.Conv2d_4a_3x3(b.Conv2d_3b_1x1(c2)))
        c3 = b.Mixed_5d(b.Mixed_5c(b.Mixed_5b(x)))
        c4 = b.Mixed_6e(b.Mixed_6d(b.Mixed_6c(b.Mixed_6b(b.Mixed_6a(c3)))))
        c5 = b.Mixed_7c(b.Mixed_7b(b.Mixed_7a(c4)))
        return {4: c2, 8: c3, 16: c4, 32: c5}
