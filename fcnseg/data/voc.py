"""PASCAL VOC 2012 segmentation, the SBD augmentation (Hariharan et al. 2011), their union, and FCN's seg11valid.

Accepted roots:

* ``voc2012``: the folder holding ``VOCdevkit/``, or ``VOCdevkit/``, or ``VOC2012/`` itself (``JPEGImages/``,
  ``SegmentationClass/``, ``ImageSets/Segmentation/{train,val,trainval}.txt``).
* ``sbd``: the folder holding ``benchmark_RELEASE/`` (or ``SBD/``), or ``benchmark_RELEASE/``, or its ``dataset/``
  (``img/*.jpg``, ``cls/*.mat``, ``train.txt``, ``val.txt``).
* ``voc-aug``: one folder holding both, e.g. ``ROOT/VOCdevkit/VOC2012`` and ``ROOT/benchmark_RELEASE/dataset``
  (``ROOT/SBD/dataset`` also accepted).
* ``seg11valid``: a VOC2011 or VOC2012 root as for ``voc2012`` plus the list ``seg11valid.txt`` in ``ROOT`` (or in
  the VOC20xx folder), taken from the FCN authors' repo: fcn.berkeleyvision.org/data/pascal/seg11valid.txt.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, default_palette, require_nonempty
from .io import read_index_mask, read_mat_variable

CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


# The VOC devkit colour map (labelcolormap.m) is exactly base.default_palette.
PALETTE = default_palette(21)


def _check_split(name: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise UserError(f"unknown {name} split {split!r}; valid: {', '.join(valid)}")


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"list file not found: {path} (is the dataset complete?)")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def find_voc(root: Path, years: tuple[str, ...] = ("2012",)) -> Path:
    """The ``VOC20xx`` folder under ``root`` (``root`` itself, ``root/VOC20xx``, ``root/VOCdevkit/VOC20xx``, or
    ``root/TrainVal/VOCdevkit/VOC20xx``, where the VOC2011 trainval archive puts it)."""
    cands = [root] + [d for y in years for d in (root / f"VOC{y}", root / "VOCdevkit" / f"VOC{y}",
                                                 root / "TrainVal" / "VOCdevkit" / f"VOC{y}")]
    for c in cands:
        if (c / "JPEGImages").is_dir() and (c / "SegmentationClass").is_dir():
            return c
    raise UserError(f"VOC{'/'.join(years)} not found under {root}: expected VOCdevkit/VOC{years[-1]}/JPEGImages and "
                    f"SegmentationClass (point --root at the folder holding VOCdevkit)")


def find_sbd(root: Path) -> Path:
    """SBD's ``dataset`` folder under ``root``."""
    cands = [root, root / "dataset", root / "benchmark_RELEASE" / "dataset", root / "SBD" / "dataset"]
    for c in cands:
        if (c / "img").is_dir() and (c / "cls").is_dir():
            return c
    raise UserError(f"SBD not found under {root}: expected benchmark_RELEASE/dataset/img and cls "
                    f"(point --root at the folder holding benchmark_RELEASE)")


def read_sbd_mask(path: Path) -> np.ndarray:
    """The class mask in an SBD ``cls/*.mat`` file (``GTcls.Segmentation``; 0 background, 1–20 classes)."""
    gt = read_mat_variable(path, "GTcls")
    try:
        seg = np.asarray(gt["Segmentation"].ravel()[0])
    except (ValueError, IndexError, KeyError, TypeError):
        raise UserError(f"{path}: GTcls has no field 'Segmentation' (not an SBD cls/*.mat file?)") from None
    if seg.ndim != 2:
        raise UserError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected H×W")
    return seg.astype(np.uint8)


class _VOCBase(PairedFileDataset):
    classes = CLASSES
    palette = PALETTE
    ignore_index = IGNORE_INDEX  # VOC's border/void; raw values pass through unchanged (no lut)
    background_index = 0


class VOC2012(_VOCBase):
    """PASCAL VOC 2012 segmentation: 21 classes (background + 20), 255 = void/border.
    Splits: train (1464), val (1449), trainval (2913)."""

    name = "voc2012"
    splits = ("train", "val", "trainval")

    def __init__(self, root, split, transforms=None):
        super().__init__(root, split, transforms)
        _check_split(self.name, split, self.splits)
        voc = find_voc(self.root)
        ids = _read_ids(voc / "ImageSets" / "Segmentation" / f"{split}.txt")
        self.pairs = require_nonempty([(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png")
                                       for i in ids], self.name, split, voc)


class SBD(_VOCBase):
    """Semantic Boundaries Dataset class masks (VOC's 21 classes, no void). Splits: train (8498), val (2857)."""

    name = "sbd"
    splits = ("train", "val")

    def __init__(self, root, split, transforms=None):
        super().__init__(root, split, transforms)
        _check_split(self.name, split, self.splits)
        sbd = find_sbd(self.root)
        ids = _read_ids(sbd / f"{split}.txt")
        self.pairs = require_nonempty([(sbd / "img" / f"{i}.jpg", sbd / "cls" / f"{i}.mat") for i in ids],
                                      self.name, split, sbd)

    def read_mask(self, path):
        return read_sbd_mask(path)


class VOCAug(_VOCBase):
    """VOC 2012 augmented with SBD ("train_aug", 10,582 images).

    ``train`` = (SBD train ∪ SBD val ∪ VOC2012 seg train) − VOC2012 seg val, sorted by id; each image's mask and
    photo are read from VOC2012 when it has one there (VOC masks carry the void border), else from SBD.
    ``val`` = VOC2012 seg val (1449), so the pair of splits never overlaps.
    """

    name = "voc-aug"
    splits = ("train", "val")

    def __init__(self, root, split, transforms=None):
        super().__init__(root, split, transforms)
        _check_split(self.name, split, self.splits)
        voc = find_voc(self.root)
        sets = voc / "ImageSets" / "Segmentation"
        val = _read_ids(sets / "val.txt")
        if split == "val":
            ids, sbd = val, None
        else:
            sbd = find_sbd(self.root)
            ids = sorted((set(_read_ids(sbd / "train.txt")) | set(_read_ids(sbd / "val.txt"))
                          | set(_read_ids(sets / "train.txt"))) - set(val))
        pairs = []
        for i in ids:
            mask = voc / "SegmentationClass" / f"{i}.png"
            if mask.is_file() or sbd is None:
                pairs.append((voc / "JPEGImages" / f"{i}.jpg", mask))
            else:
                pairs.append((sbd / "img" / f"{i}.jpg", sbd / "cls" / f"{i}.mat"))
        self.pairs = require_nonempty(pairs, self.name, split, self.root)

    def read_mask(self, path):
        return read_sbd_mask(path) if Path(path).suffix == ".mat" else read_index_mask(path)


class Seg11Valid(_VOCBase):
    """The VOC2011 validation subset FCN reports on (736 images, "seg11valid"): split ``val``.

    The id list is not part of VOC: put ``seg11valid.txt`` from github.com/shelhamer/fcn.berkeleyvision.org
    (data/pascal/seg11valid.txt) in the root. Images and masks come from VOC2011 or VOC2012.
    """

    name = "seg11valid"
    splits = ("val",)

    def __init__(self, root, split, transforms=None):
        super().__init__(root, split, transforms)
        _check_split(self.name, split, self.splits)
        voc = find_voc(self.root, years=("2011", "2012"))
        for cand in (self.root / "seg11valid.txt", voc / "seg11valid.txt",
                     voc / "ImageSets" / "Segmentation" / "seg11valid.txt"):
            if cand.is_file():
                break
        else:
            raise UserError(f"seg11valid.txt not found in {self.root}: download it from https://raw.githubusercontent"
                            f".com/shelhamer/fcn.berkeleyvision.org/master/data/pascal/seg11valid.txt into {self.root}")
        ids = _read_ids(cand)
        self.pairs = require_nonempty([(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png")
                                       for i in ids], self.name, split, cand)
