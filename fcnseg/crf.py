"""DenseCRF post-processing (Krähenbühl & Koltun) via the optional ``pydensecrf2`` package.

Defaults: Gaussian sxy 10 / compat 3, bilateral sxy 50 / srgb 20 / compat 10, 10 iterations, as recorded from the
FCN-GoogLeNet port the project started from (no published source re-found; RESULTS.md measures their effect).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .errors import UserError

DEFAULTS = dict(gauss_sxy=10, gauss_compat=3, bilateral_sxy=50, bilateral_srgb=20, bilateral_compat=10, iterations=10)
MISSING = "DenseCRF refinement (--crf) needs pydensecrf2: pip install 'fcnseg[crf]' (or pip install pydensecrf2)"


class CRFUnavailable(UserError):
    """The optional ``pydensecrf2`` package is not installed."""


def _pydensecrf():
    try:  # lazy: an optional extra
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise CRFUnavailable(MISSING) from None
    return dcrf, unary_from_softmax


def require_crf() -> None:
    """Raise :class:`CRFUnavailable` (one line: what to install) unless DenseCRF can run: commands check this before
    they load a model, not on their first image."""
    _pydensecrf()


def dense_crf(image: torch.Tensor, probs: torch.Tensor, *, max_side: int | None = None, **params) -> torch.Tensor:
    """uint8 RGB 3×H×W image and C×H×W probabilities → refined H×W label map.

    ``max_side``: run the CRF on a copy whose longer side is at most this many pixels (image and probabilities
    resized, the spatial kernel widths scaled alike), then upsample its marginals to H×W — inference time falls with
    the pixel count (CCP, 836×550 with 59 labels: several seconds per image at full size). ``params`` override
    :data:`DEFAULTS` by name. For a prediction, ``probs`` is one image of ``Predictor.predict_image``'s output."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown DenseCRF parameter {unknown[0]!r}; valid: {', '.join(DEFAULTS)}")
    if image.dim() != 3 or image.shape[0] != 3 or probs.dim() != 3 or image.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"dense_crf takes a 3×H×W image and C×H×W probabilities of the same H×W, got "
                         f"{tuple(image.shape)} and {tuple(probs.shape)}")
    dcrf, unary_from_softmax = _pydensecrf()
    p = {**DEFAULTS, **params}
    probs = probs.detach().float().cpu()  # bf16/fp16 or GPU probabilities have no direct NumPy form
    c, h, w = probs.shape
    full, scale = (h, w), 1.0
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = [max(1, round(h * scale)), max(1, round(w * scale))]
        image = TF.resize(image, size, antialias=True)
        probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.clamp_min(1e-8).numpy().astype(np.float32))))
    d.addPairwiseGaussian(sxy=max(1.0, p["gauss_sxy"] * scale), compat=p["gauss_compat"])
    rgb = np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy().astype(np.uint8))
    d.addPairwiseBilateral(sxy=max(1.0, p["bilateral_sxy"] * scale), srgb=p["bilateral_srgb"], rgbim=rgb,
                           compat=p["bilateral_compat"])
    q = torch.from_numpy(np.array(d.inference(p["iterations"]), dtype=np.float32).reshape(c, h, w))
    if scale != 1.0:
        q = F.interpolate(q[None], size=list(full), mode="bilinear", align_corners=False)[0]
    return q.argmax(0).to(torch.int64)
