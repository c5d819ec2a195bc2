"""Segmentation metrics from a dataset-wide confusion matrix, as in the FCN authors' score.py."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def confusion_matrix(target: torch.Tensor, pred: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """``num_classes × num_classes`` int64 matrix, rows = truth, columns = prediction; ignored pixels (and any
    truth outside [0, C)) are skipped. One ``bincount``, on whatever device the tensors are."""
    target, pred = target.reshape(-1).long(), pred.reshape(-1).long()  # uint8 would wrap in target * num_classes
    keep = (target >= 0) & (target < num_classes) & (target != ignore_index)
    bad = keep & ((pred < 0) | (pred >= num_classes))
    if bool(bad.any()):  # it would be counted in a neighbouring row (or break the reshape)
        raise ValueError(f"prediction {int(pred[bad][0])} is outside 0..{num_classes - 1}")
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores(hist: torch.Tensor | np.ndarray, classes: Sequence[str] | None = None,
           background: int | None = None) -> dict:
    """Pixel accuracy, mean (class) accuracy, mean IoU and frequency-weighted IoU, plus per-class IoU/accuracy;
    with a ``background`` class index also foreground accuracy (pixel accuracy over pixels whose truth is not
    background: the fashion-parsing papers' figure, since background dominates those images).

    Classes absent from both truth and prediction have undefined IoU (NaN → ``None`` per class) and are left out of
    the means, as ``np.nanmean`` does in the authors' score.py."""
    hist = np.asarray(hist.cpu() if isinstance(hist, torch.Tensor) else hist, dtype=np.float64)
    n = hist.shape[0]
    tp, gt, pr = np.diag(hist), hist.sum(1), hist.sum(0)
    total = hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        acc_cls = tp / gt
        iou = tp / (gt + pr - tp)
    freq = gt / total if total else np.zeros(n)
    names = list(classes) if classes is not None else [str(i) for i in range(n)]
    nanmean = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")  # noqa: E731
    out = {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_accuracy": nanmean(acc_cls),
        "mean_iou": nanmean(iou),
        "fw_iou": float((freq[freq > 0] * iou[freq > 0]).sum()),
        "per_class": {names[i]: {"iou": None if np.isnan(iou[i]) else float(iou[i]),
                                 "accuracy": None if np.isnan(acc_cls[i]) else float(acc_cls[i]),
                                 "pixels": int(gt[i])} for i in range(n)},
        "pixels": int(total),
    }
    if background is not None:
        fg = np.ones(n, dtype=bool)
        fg[background] = False
        out["foreground_accuracy"] = float(tp[fg].sum() / gt[fg].sum()) if gt[fg].sum() else float("nan")
    return out


def image_mean_iou(hist: torch.Tensor) -> float:
    """Mean IoU of one image's confusion matrix (classes present in truth or prediction)."""
    h = hist.double()
    tp = h.diag()
    union = h.sum(0) + h.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else float("nan")
