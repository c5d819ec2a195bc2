"""DenseCRF post-processing (Krähenbühl & Koltun) via the optional ``pydensecrf2`` package.

Defaults are FCN-GoogLeNet's: Gaussian sxy 10 / compat 3, bilateral sxy 50 / srgb 20 / compat 10, 10 iterations.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import UserError

DEFAULTS = dict(gauss_sxy=10, gauss_compat=3, bilateral_sxy=50, bilateral_srgb=20, bilateral_compat=10, iterations=10)


def dense_crf(image: torch.Tensor, probs: torch.Tensor, **params) -> torch.Tensor:
    """uint8 RGB 3×H×W image and C×H×W probabilities → refined H×W label map."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise UserError("--crf needs pydensecrf2: pip install 'fcnseg[crf]' (or pip install pydensecrf2)") from None
    p = {**DEFAULTS, **params}
    c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.clamp_min(1e-8).numpy().astype(np.float32))))
    d.addPairwiseGaussian(sxy=p["gauss_sxy"], compat=p["gauss_compat"])
    rgb = np.ascontiguousarray(image.permute(1, 2, 0).numpy().astype(np.uint8))
    d.addPairwiseBilateral(sxy=p["bilateral_sxy"], srgb=p["bilateral_srgb"], rgbim=rgb, compat=p["bilateral_compat"])
    q = np.array(d.inference(p["iterations"])).reshape(c, h, w)
    return torch.from_numpy(q.argmax(0)).to(torch.int64)
