"""The FCN head (Long, Shelhamer & Darrell): score layers, skip fusion and upsampling, with the paper's names.

``caffe`` geometry reproduces the authors' prototxts (and pytorch-fcn) to the pixel: unpadded deconvolutions and the
published crop offsets. ``aligned`` geometry places every feature on the pixels it is centred on, with no magic
offsets, and crops the result to the skip's or the input's size (the output is always the input size). Where a
stride-s feature j is centred depends on the backbone (its ``grid``):

* ``"cell"`` — at s*j + s/2 - 0.5, the middle of its s×s cell (VGG's 2×2 pooling): a k=2s, stride-s deconvolution
  padded by s/2 (the authors' even bilinear kernel);
* ``"corner"`` — on a whole pixel, s*j + origin[s] (the backbone's ``origins``; 0 for ResNet's and MobileNet's
  padded stride-2 convolutions, 5 / 13 / 21 / 37 px for Inception-v3's unpadded ones at strides 4 / 8 / 16 / 32): an
  odd k=2s-1 bilinear kernel, after a replicate border so that pixels past the outermost features are extrapolated,
  not faded, and a crop that puts feature j on its pixel.

(Before the grid was declared every backbone had the cell head, which put a ResNet's stride-32 scores 15.5 px down
and to the right of their features; checkpoints without ``grid`` in their spec rebuild that head.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PAPER_ARCHS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce")  # the authors' nets: both geometries
# FCN-4s: the paper's skip pattern one step further, a stride-4 skip (pool2 / ResNet layer1) fused after pool3's,
# for thin structures that stride-8 scores blur away; aligned geometry only (the authors published no offsets)
ARCHS = PAPER_ARCHS + ("fcn4s",)
# Caffe crop offsets, from the authors' net.py / pytorch-fcn
CAFFE_OFFSETS = {"fcn32s": {"out": 19}, "fcn16s": {16: 5, "out": 27}, "fcn8s": {16: 5, 8: 9, "out": 31}}
# FCN-8s "at-once" scales the skip inputs so that all streams train together from the start (paper, section 4.2)
ATONCE_SCALE = {16: 0.01, 8: 0.0001}
GRIDS = ("cell", "corner")  # where a backbone's stride-s feature j is centred: s*j + s/2 - 0.5, or s*j + origin[s]
# each upsampling layer: (stride of its input, stride of its output)
UP_STRIDES = {"upscore": (32, 1), "upscore16": (16, 1), "upscore8": (8, 1), "upscore4": (4, 1), "upscore2": (32, 16),
              "upscore_pool4": (16, 8), "upscore_pool3": (8, 4)}


def bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    """The 2-D bilinear kernel of Caffe's ``upsample_filt``, placed on the diagonal (class c → class c)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = (filt1d[:, None] * filt1d[None, :]).float()
    w = torch.zeros(channels, channels, size, size)
    w[range(channels), range(channels)] = filt
    return w


def _fit(x: torch.Tensor, size: tuple[int, int], offset: int = 0) -> torch.Tensor:
    """Crop ``x`` to ``size`` starting at ``offset``; where it is smaller (Inception's unpadded convolutions),
    resize it bilinearly instead."""
    h, w = size
    if offset == 0 and x.shape[-2:] == (h, w) and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
        return x  # even a full-size slice would cost a zero-filled full-size gradient buffer in backward (an
        # exported graph keeps the slice: other input sizes need it)
    if x.shape[-2] >= offset + h and x.shape[-1] >= offset + w:
        return x[:, :, offset:offset + h, offset:offset + w]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _interp_matrix(n: int, kernel: torch.Tensor, stride: int, padding: int, out: int) -> torch.Tensor:
    """The ``out × n`` matrix of a 1-D transposed convolution: ``y = A @ x`` (entry ``kernel[o + padding - i·stride]``
    where that index is inside the kernel)."""
    o = torch.arange(out, device=kernel.device)[:, None]
    i = torch.arange(n, device=kernel.device)[None, :]
    j = o + padding - i * stride
    inside = (j >= 0) & (j < kernel.numel())
    return torch.where(inside, kernel[j.clamp(0, kernel.numel() - 1)], kernel.new_zeros(()))


def _separable(x: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor) -> torch.Tensor:
    """``a_h @ x @ a_wᵀ`` for every map of N×C×H×W ``x``: one GEMM per axis, rows first, then columns (which leaves
    NCHW output)."""
    (n, c, h, w), lh, lw = x.shape, a_h.shape[0], a_w.shape[0]
    t = torch.matmul(a_h.to(x.dtype), x.permute(2, 0, 1, 3).reshape(h, n * c * w))
    t = t.reshape(lh, n, c, w).permute(1, 2, 0, 3).reshape(n * c * lh, w)
    return torch.matmul(t, a_w.to(x.dtype).t()).reshape(n, c, lh, lw)


class Upsample(nn.ConvTranspose2d):
    """The FCN's ``upscore`` deconvolution: a full C×C transposed convolution (the authors' layer, same parameter).

    While it is fixed (the default), its weight is checked once per change (in-place writes bump ``weight._version``;
    writes through ``.data`` do not) and the same numbers, up to float rounding, are computed cheaper:
    - every class's kernel the same and separable (the bilinear kernel always is): ``A_h @ x @ A_wᵀ``, two matrix
      products that write NCHW logits directly (at 59 classes, 8×59×32×21 → 256×168, a CCP training step:
      fwd+bwd 50 ms, and no 2×43 ms channels_last → NCHW copy of the logits for the loss);
    - a diagonal weight: a per-class (grouped) deconvolution, C times less arithmetic than the full one;
    - anything else (learnable, or mixing classes): the full deconvolution.
    """

    _key: tuple | None = None
    _fast: tuple | None = None  # ("separable", u, v, per-class kernels) | ("grouped", per-class kernels) | None

    def _plan(self) -> tuple | None:
        w = self.weight
        if (w.requires_grad or self.bias is not None or self.groups != 1 or w.shape[0] != w.shape[1]
                or tuple(self.dilation) != (1, 1)):
            return None
        if torch.compiler.is_compiling():  # torch.export / torch.compile trace fake weights: keep the eager plan
            return self._fast if self._key is not None else None
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if key != self._key:
            self._key, self._fast = key, None
            wd = w.detach()
            idx = torch.arange(wd.shape[0], device=wd.device)
            diag = wd[idx, idx]
            if int(torch.count_nonzero(wd)) == int(torch.count_nonzero(diag)):  # off-diagonal all 0
                grouped = diag.unsqueeze(1).clone()
                k = diag[0]
                u = k.sum(1) / k.sum() if float(k.sum()) != 0 else None
                if u is not None and torch.equal(diag, k.expand_as(diag)):
                    v = k.sum(0)
                    if torch.allclose(torch.outer(u, v), k, rtol=1e-6, atol=1e-7 * float(k.abs().max())):
                        self._fast = ("separable", u, v, grouped)
                if self._fast is None:
                    self._fast = ("grouped", grouped)
        return self._fast

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        plan = self._plan() if output_size is None else None
        if plan is None:
            return super().forward(x, output_size)
        if plan[0] == "separable" and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            (h, w), (sh, sw), (ph, pw), (oh, ow) = x.shape[-2:], self.stride, self.padding, self.output_padding
            kh, kw = self.kernel_size
            lh, lw = (h - 1) * sh - 2 * ph + kh + oh, (w - 1) * sw - 2 * pw + kw + ow
            return _separable(x, _interp_matrix(h, plan[1], sh, ph, lh), _interp_matrix(w, plan[2], sw, pw, lw))
        return self._grouped(x, plan)

    def bordered(self, x: torch.Tensor, border: int, offset: int, size) -> torch.Tensor:
        """``_fit(self(replicate-pad x by border), size, offset)``: the corner grid's upsampling. With a fixed
        bilinear kernel, one interpolation matrix per axis folds the border and the crop in, so exactly ``size``
        comes out (at 59 classes, padding and cropping the maps cost a CCP training step 7%: 0.994 s vs 0.925 s)."""
        plan = self._plan()
        if plan is None or plan[0] != "separable" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return _fit(self(F.pad(x, (border,) * 4, mode="replicate")), size, offset)
        mats = []
        for n, kernel, stride, out in zip(x.shape[-2:], plan[1:3], self.stride, size):
            a = _interp_matrix(n + 2 * border, kernel, stride, offset, out)  # rows of the padded map's output
            cols = (torch.arange(n + 2 * border, device=a.device) - border).clamp(0, n - 1)
            mats.append(a.new_zeros(out, n).index_add_(1, cols, a))  # the replicated cells fold onto the edges
        return _separable(x, *mats)

    def _grouped(self, x: torch.Tensor, plan: tuple) -> torch.Tensor:
        diag = plan[-1]  # (traced for export, the separable case too: the matrices depend on the input's size)
        if x.is_contiguous(memory_format=torch.channels_last):
            diag = diag.contiguous(memory_format=torch.channels_last)
        return F.conv_transpose2d(x, diag.to(x.dtype), None, self.stride, self.padding, self.output_padding,
                                  groups=diag.shape[0], dilation=self.dilation)


def head_slices(heads) -> list[tuple[str, slice]]:
    """``((name, classes), ...)`` → each head's name and its channels of the model's output."""
    out, start = [], 0
    for name, n in heads:
        out.append((name, slice(start, start + n)))
        start += n
    return out


class FCN(nn.Module):
    """backbone → ``{stride: features}`` → FCN-32s/16s/8s head → logits of the input's size (a plain tensor).

    ``heads`` (``((name, classes), ...)``, e.g. SIFT Flow's semantic 33 and geometric 3): several score heads on one
    backbone, as the paper's SIFT Flow net. Their score layers are stacked into one of ``num_classes`` = the sum of
    outputs: a 1×1 convolution's output channels are independent, and the fixed bilinear upsampling is per channel,
    so this computes exactly the separate heads (``score_fr_sem`` / ``score_fr_geo`` …). The logits hold the heads'
    channels in order; :func:`head_slices` splits them, and each head has its own softmax and loss.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, arch: str = "fcn8s", geometry: str = "aligned",
                 learnable_upsampling: bool = False, global_context: bool = False, grid: str | None = None,
                 heads: tuple[tuple[str, int], ...] | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
        self.heads = tuple((str(name), int(n)) for name, n in heads) if heads else None
        if self.heads and (len(self.heads) < 2 or sum(n for _, n in self.heads) != num_classes
                           or min(n for _, n in self.heads) < 1):
            raise ValueError(f"heads {self.heads} must be two or more (name, classes) pairs summing to num_classes "
                             f"{num_classes}")
        if arch not in PAPER_ARCHS and geometry != "aligned":
            raise ValueError(f"{arch} has the aligned geometry only (the authors' Caffe nets stop at fcn8s)")
        grid = grid or getattr(backbone, "grid", "cell")
        if grid not in GRIDS or (geometry == "caffe" and grid != "cell"):
            raise ValueError(f"unknown grid {grid!r} for the {geometry} geometry; valid: {', '.join(GRIDS)}")
        self.arch, self.geometry, self.num_classes, self.grid = arch, geometry, num_classes, grid
        self.origins = {1: 0, **getattr(backbone, "origins", dict.fromkeys((4, 8, 16, 32), 0))}
        if grid == "corner" and any((self.origins[a] - self.origins[b]) % b for a, b in UP_STRIDES.values()):
            raise ValueError(f"origins {self.origins} put some features between output cells; use the cell grid")
        self.global_context = global_context
        self.backbone = backbone
        self.normalization = backbone.default_normalization
        ch, n = backbone.out_channels, num_classes
        self.score_fr = nn.Conv2d(ch[32], n, 1)
        if global_context:  # ParseNet's global context: scores of the image-averaged top features, added everywhere
            self.score_global = nn.Linear(ch[32], n)
        self.skips = {"fcn32s": (), "fcn16s": (16,), "fcn8s": (16, 8), "fcn8s-atonce": (16, 8), "fcn4s": (16, 8, 4)}[arch]
        if 16 in self.skips:
            self.score_pool4 = nn.Conv2d(ch[16], n, 1)
        if 8 in self.skips:
            self.score_pool3 = nn.Conv2d(ch[8], n, 1)
        if 4 in self.skips:
            self.score_pool2 = nn.Conv2d(ch[4], n, 1)
        corner, pad = grid == "corner", geometry == "aligned" and grid == "cell"
        up = lambda k, s: Upsample(n, n, k - corner, stride=s, padding=s // 2 if pad else 0, bias=False)  # noqa: E731
        if arch == "fcn32s":
            self.upscore = up(64, 32)
        elif arch == "fcn16s":
            self.upscore2, self.upscore16 = up(4, 2), up(32, 16)
        elif arch == "fcn4s":
            self.upscore2, self.upscore_pool4, self.upscore_pool3, self.upscore4 = up(4, 2), up(4, 2), up(4, 2), up(8, 4)
        else:
            self.upscore2, self.upscore_pool4, self.upscore8 = up(4, 2), up(4, 2), up(16, 8)
        self.reset_head()
        self.set_learnable_upsampling(learnable_upsampling)

    def score_layers(self) -> list[str]:
        names = ("score_fr", "score_pool4", "score_pool3", "score_pool2", "score_global")
        return [name for name in names if hasattr(self, name)]

    def upsample_layers(self) -> list[str]:
        names = ("upscore", "upscore2", "upscore16", "upscore_pool4", "upscore8", "upscore_pool3", "upscore4")
        return [n for n in names if hasattr(self, n)]

    @torch.no_grad()
    def reset_head(self) -> None:
        """Zero score layers (the authors' choice: a fresh head starts by predicting uniform scores) and bilinear
        deconvolutions."""
        for name in self.score_layers():
            getattr(self, name).weight.zero_()
            getattr(self, name).bias.zero_()
        for name in self.upsample_layers():
            m = getattr(self, name)
            m.weight.copy_(bilinear_kernel(self.num_classes, m.kernel_size[0]))

    def set_learnable_upsampling(self, learnable: bool) -> None:
        """Fixed bilinear upsampling is the default (the paper found learning it brings little); it stays a
        parameter, with ``requires_grad`` off, so state dicts match the authors' nets either way."""
        if learnable and self.heads:  # a learnt C×C deconvolution would mix the heads' scores
            raise ValueError("a model with several heads keeps its upsampling fixed (learnable_upsampling=False)")
        self.learnable_upsampling = learnable
        for name in self.upsample_layers():
            getattr(self, name).weight.requires_grad_(learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        logits = self._decode(feats, x.shape[-2:])
        if self.global_context:
            logits = logits + self.score_global(feats[32].mean((2, 3)))[:, :, None, None]
        return logits

    def _up(self, name: str, x: torch.Tensor, size, offset: int = 0) -> torch.Tensor:
        """Upsample ``x`` with deconvolution ``name`` and crop it to ``size`` (``offset``: Caffe's crop)."""
        layer = getattr(self, name)
        if self.grid == "corner":
            # the kernel puts input cell i on output cell S*i + S - 1; feature i belongs on S*i + d (d: the origins'
            # difference in output cells); a border of b cells shifts it by S*b, so crop S*b + S - 1 - d. The border
            # reaches past the outermost features on both sides (Inception's end up to 2 output cells short).
            (src, dst), s = UP_STRIDES[name], layer.stride[0]
            d = (self.origins[src] - self.origins[dst]) // dst
            b = -(-d // s) + 1
            return layer.bordered(x, b, s * b + s - 1 - d, tuple(size))
        return _fit(layer(x), size, offset)

    def _decode(self, feats: dict, size) -> torch.Tensor:
        caffe = self.geometry == "caffe"
        offsets = CAFFE_OFFSETS["fcn8s" if self.arch == "fcn8s-atonce" else self.arch] if caffe else {}
        scale = ATONCE_SCALE if self.arch == "fcn8s-atonce" else {}
        h = self.score_fr(feats[32])
        if self.arch == "fcn32s":
            return self._up("upscore", h, size, offsets.get("out", 0))
        p4 = self.score_pool4(feats[16] * scale[16] if scale else feats[16])
        if caffe:  # Caffe crops the skip to the upsampled map
            h = self.upscore2(h)
            h = h + _fit(p4, h.shape[-2:], offsets[16])
        else:  # the upsampled coarse map covers ceil(H/32)*2 >= ceil(H/16) cells: crop it to the skip
            h = self._up("upscore2", h, p4.shape[-2:]) + p4
        if self.arch == "fcn16s":
            return self._up("upscore16", h, size, offsets.get("out", 0))
        p3 = self.score_pool3(feats[8] * scale[8] if scale else feats[8])
        if caffe:
            h = self.upscore_pool4(h)
            h = h + _fit(p3, h.shape[-2:], offsets[8])
        else:
            h = self._up("upscore_pool4", h, p3.shape[-2:]) + p3
        if self.arch == "fcn4s":  # (aligned only)
            p2 = self.score_pool2(feats[4])
            return self._up("upscore4", self._up("upscore_pool3", h, p2.shape[-2:]) + p2, size)
        return self._up("upscore8", h, size, offsets.get("out", 0))
