"""``data stats``: per-class pixel counts, frequencies and class weights for a weighted loss.

Median-frequency balancing follows SegNet (Badrinarayanan et al. 2017, after Eigen & Fergus 2015):
``freq(c)`` = pixels of class c / total pixels of the images in which c appears, and
``weight(c) = median(freq) / freq(c)``. Inverse-frequency weights are ``N / (K · n_c)`` (N labelled pixels, n_c
those of class c, K classes present), so that they average to 1 over the pixels. Absent classes get weight 0.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..files import write_text
from .base import PairedFileDataset, SegmentationDataset


def _train_mask(ds: SegmentationDataset, i: int) -> np.ndarray:
    if isinstance(ds, PairedFileDataset):  # skip decoding the image: the mask is all we count
        m = ds.to_train_ids(ds.raw_mask(i))
    else:
        m = ds.load(i)[1].numpy()
    if ds.heads and m.ndim == 3:  # one row per head: its classes come after the previous heads', as ``classes``
        rows, start = [], 0  # lists them (values outside a head's classes become −1, counted as such)
        for (_, n), row in zip(ds.heads, m):
            inside = (row >= 0) & (row < n)
            rows.append(np.where(inside, row + start, np.where(row == ds.ignore_index, row, -1)))
            start += n
        m = np.stack(rows)
    return m


def class_stats(ds: SegmentationDataset, *, progress: bool = True) -> dict:
    """Count the classes of every mask in ``ds`` → a dict with the keys ``write_stats`` stores (plus notes)."""
    c = ds.num_classes
    counts = np.zeros(c, dtype=np.int64)
    image_pixels = np.zeros(c, dtype=np.int64)  # total pixels of the images in which each class appears
    ignored = other = 0
    for i in tqdm(range(len(ds)), desc=f"stats {ds.name}/{ds.split}", file=sys.stderr, disable=not progress,
                  unit="img", dynamic_ncols=True):
        mask = np.asarray(_train_mask(ds, i))
        m = mask.ravel()
        valid = (m >= 0) & (m < c)
        hist = np.bincount(m[valid], minlength=c)[:c]
        counts += hist
        image_pixels[hist > 0] += mask.shape[-2] * mask.shape[-1]
        ignored += int((m == ds.ignore_index).sum())
        other += int((~valid).sum()) - int((m == ds.ignore_index).sum())
    total = int(counts.sum())
    present = counts > 0
    freq = counts / total if total else np.zeros(c)
    img_freq = np.where(present, counts / np.maximum(image_pixels, 1), 0.0)
    median = float(np.median(img_freq[present])) if present.any() else 0.0
    mfw = np.where(present, median / np.where(present, img_freq, 1.0), 0.0)
    inv = np.where(present, total / (max(int(present.sum()), 1) * np.maximum(counts, 1)), 0.0)
    notes = [f"class {k} ({ds.classes[k]}) never appears: weight 0" for k in np.flatnonzero(~present)]
    if other:
        notes.append(f"{other} pixels hold values outside the classes and ignore index (run `data check`)")
    return {
        "dataset": ds.name, "split": ds.split, "num_images": len(ds),
        "classes": list(ds.classes),
        "pixel_counts": counts.tolist(),
        "frequencies": freq.tolist(),
        "image_frequencies": img_freq.tolist(),
        "median_frequency_weights": mfw.tolist(),
        "inverse_frequency_weights": inv.tolist(),
        "ignored_pixels": ignored,
        "notes": notes,
    }


def write_stats(stats: dict, path: str | Path) -> Path:
    """Write ``stats`` as JSON at ``path`` atomically (``fcnseg.files``)."""
    write_text(json.dumps(stats, indent=2) + "\n", path)
    return Path(path)
