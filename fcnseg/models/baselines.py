"""torchvision's own FCN (``fcn_resnet50`` / ``fcn_resnet101``) as a peer model: trained and scored by the same code,
so comparisons share data, budget and evaluation (``--arch torchvision-fcn --backbone resnet50``)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import segmentation as tvseg

from ..normalization import IMAGENET

BASELINE_ARCH = "torchvision-fcn"
BASELINE_BACKBONES = ("resnet50", "resnet101")


class TorchvisionFCN(nn.Module):
    """torchvision's FCN (dilated ResNet, stride 8, 3x3 head, bilinear upsampling) returning a plain tensor."""

    def __init__(self, backbone: str, num_classes: int):
        super().__init__()
        build = {"resnet50": tvseg.fcn_resnet50, "resnet101": tvseg.fcn_resnet101}[backbone]
        self.net = build(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
        self.arch, self.geometry, self.num_classes = BASELINE_ARCH, "aligned", num_classes
        self.learnable_upsampling = False
        self.normalization = IMAGENET
        self.backbone = self.net.backbone
        self.backbone.name = backbone

    def score_layers(self) -> list[str]:
        return []

    def upsample_layers(self) -> list[str]:
        return []

    def reset_head(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]
