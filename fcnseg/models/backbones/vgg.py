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

from ...normalization import IMAGENET, CAFFE_BGR


def _exporting() -> bool:
    """Traced (TorchScript) or exported / compiled (torch.export, torch.compile): the graph gets a Conv node, which
    ONNX Runtime's int8 quantization and the compilers know."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class GemmConv2d(nn.Conv2d):
    """fc6 / fc7: a convolution over a small map (1/32 of the input) with a huge kernel, computed as one matrix
    product of its patches (im2col) and the weight — the same parameter, the same numbers up to float rounding.

    oneDNN runs these shapes far below the machine's matmul speed: on the 2-core development CPU, fc6 (4096×512×7×7
    on 2×512×8×8) took 232 ms forward, 765 ms backward and 2×129 ms of weight-layout copies in a 2.4 s training step
    for 52 GFLOP. Patches are ordered like the weight's memory (channels_last or not), so the weight is never copied.
    Traced / exported / quantized graphs, and patch matrices over ``max_patch_bytes``, use the convolution.
    """

    max_patch_bytes = 256 * 2**20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (_exporting() or self.groups != 1 or self.stride != (1, 1) or self.dilation != (1, 1)
                or self.padding_mode != "zeros" or isinstance(self.padding, str) or x.dim() != 4):
            return super().forward(x)
        n, c, h, w = x.shape
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
        if ho < 1 or wo < 1 or n * ho * wo * c * kh * kw * x.element_size() > self.max_patch_bytes:
            return super().forward(x)
        weight = self.weight
        last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        if (kh, kw) == (1, 1):  # (both memory formats are the same for a 1×1 kernel)
            cols = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
            wmat = weight.reshape(self.out_channels, c)
        else:
            xp = torch.nn.functional.pad(x, (pw, pw, ph, ph)) if ph or pw else x
            patches = xp.unfold(2, kh, 1).unfold(3, kw, 1)  # N, C, Ho, Wo, kh, kw (a view)
            if last:  # weight memory is (O, kh, kw, C)
                cols = patches.permute(0, 2, 3, 4, 5, 1).reshape(n * ho * wo, kh * kw * c)
                wmat = weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)
            else:
                cols = patches.permute(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
                wmat = weight.reshape(self.out_channels, -1)
        out = cols @ wmat.t() if self.bias is None else torch.addmm(self.bias, cols, wmat.t())  # (autocast applies)
        return out.view(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)  # NCHW, channels_last memory


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
        self.fc6 = GemmConv2d(512, 4096, 7, padding=0 if geometry == "caffe" else 3, device="meta")
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout2d()
        self.fc7 = GemmConv2d(4096, 4096, 1, device="meta")
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout2d()
        self.load_classifier(net.classifier[0], net.classifier[3])
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._pool2, self._pool3, self._pool4 = pools[1], pools[2], pools[3]
        self.out_channels = {4: 128, 8: 256, 16: 512, 32: 4096}
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
            if i == self._pool2:
                out[4] = x
            elif i == self._pool3:
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
