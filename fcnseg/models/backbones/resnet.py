"""ResNet-18/34/50/101 without dilation: layer1/2/3/4 give strides 4/8/16/32."""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from ...normalization import IMAGENET


class ResNetBackbone(nn.Module):
    def __init__(self, name: str = "resnet50"):
        super().__init__()
        self.name = name
        self.body = getattr(tvm, name)(weights=None)
        del self.body.fc, self.body.avgpool  # unused by FCN; keeps state dicts free of classifier weights
        wide = self.body.layer4[0].conv1.in_channels == 1024  # bottleneck nets: 512/1024/2048
        self.out_channels = {4: 256, 8: 512, 16: 1024, 32: 2048} if wide else {4: 64, 8: 128, 16: 256, 32: 512}
        self.default_normalization = IMAGENET
        self.grid = "corner"  # padded stride-2 convolutions centre a stride-s feature j at pixel s*j (models.fcn)

    def stages(self) -> list[nn.Module]:
        b = self.body
        return [b.layer1, b.layer2, b.layer3, b.layer4]

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        c2 = b.layer1(x)
        c3 = b.layer2(c2)
        c4 = b.layer3(c3)
        return {4: c2, 8: c3, 16: c4, 32: b.layer4(c4)}
