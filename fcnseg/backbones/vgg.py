"""VGG16/19 with fc6/fc7 "convolutionalized" (FCN paper, section 3.1), skips from pool3 and pool4.

Two geometries share every parameter name and shape:

* ``caffe`` — the authors' nets exactly: conv1_1 has ``pad=100`` so that a 7x7 unpadded fc6 still sees the whole
  image for any input ≥ 1 px (the paper's trick; it costs ~2x compute at 500x500), ceil-mode pooling.
* ``aligned`` — no pad-100: fc6 is padded by 3 so every stage has size ceil(H / stride); the head then aligns by
  size arithmetic instead of the published crop offsets.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from ..normalization import IMAGENET, CAFFE_BGR


class VGGBackbone(nn.Module):
    def __init__(self, name: str = "vgg16", *, geometry: str = "aligned"):
        super().__init__()
        if geometry not in ("caffe", "aligned"):
            raise ValueError(f"unknown geometry {geometry!r}; valid: caffe, aligned")
        self.name, self.geometry = name, geometry
        net = getattr(tvm, name)(weights=None)
        self.features = net.features
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                m.ceil_mode = True  # Caffe pools with ceil; aligned keeps it so sizes are ceil(H / stride)
        if geometry == "caffe":
            self.features[0].padding = (100, 100)
        # built on the meta device and then given the classifier's own tensors (reshaped views): a second 470 MB
        # copy of fc6/fc7 would raise the process's peak memory for the whole run (measured: +456 MiB RSS)
        self.fc6 = nn.Conv2d(512, 4096, 7, padding=0 if geometry == "caffe" else 3, device="meta")
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout2d()
        self.fc7 = nn.Conv2d(4096, 4096, 1, device="meta")
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout2d()
        self.load_classifier(net.classifier[0], net.classifier[3])
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._pool3, self._pool4 = pools[2], pools[3]
        self.out_channels = {8: 256, 16: 512, 32: 4096}
        self.default_normalization = CAFFE_BGR if geometry == "caffe" else IMAGENET

    @torch.no_grad()
    def load_classifier(self, fc6: nn.Linear, fc7: nn.Linear) -> None:
        """Convolutionalize: the 4096x25088 fc6 matrix becomes a 4096x512x7x7 kernel, fc7 a 1x1 kernel (views of
        the classifier's storage, not copies)."""
        self.fc6.weight = nn.Parameter(fc6.weight.detach().view(4096, 512, 7, 7))
        self.fc6.bias = nn.Parameter(fc6.bias.detach())
        self.fc7.weight = nn.Parameter(fc7.weight.detach().view(4096, 4096, 1, 1))
        self.fc7.bias = nn.Parameter(fc7.bias.detach())

    def stages(self) -> list[nn.Module]:
        """Modules worth checkpointing as units (used by activation checkpointing)."""
        return list(self.features)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = {}
        for i, m in enumerate(self.features):
            x = m(x)
            if i == self._pool3:
                out[8] = x
            elif i == self._pool4:
                out[16] = x
        x = self.drop6(self.relu6(self.fc6(x)))
        out[32] = self.drop7(self.relu7(self.fc7(x)))
        return out

    def caffe_names(self) -> dict[str, str]:
        """Caffe layer name (conv1_1 … conv5_3, fc6, fc7) → this module's attribute path (``features.0``…)."""
        names, stage, conv = {}, 1, 0
        for i, m in enumerate(self.features):
            if isinstance(m, nn.Conv2d):
                conv += 1
                names[f"conv{stage}_{conv}"] = f"features.{i}"
            elif isinstance(m, nn.MaxPool2d):
                stage, conv = stage + 1, 0
        names["fc6"], names["fc7"] = "fc6", "fc7"
        return names
