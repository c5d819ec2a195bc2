"""Cityscapes fine annotations (Cordts et al. 2016), evaluated on the 19 official train ids.

Layout under ``root``::

    leftImg8bit/{train,val,test}/CITY/*_leftImg8bit.png   gtFine/{train,val,test}/CITY/*_gtFine_labelIds.png
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, require_dir, require_nonempty

SPLITS = ("train", "val", "test")

CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]

PALETTE = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
           (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
           (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)]

# cityscapesScripts/helpers/labels.py: label id → train id for ids 0..33 (255 = ignoreInEval).
_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
                27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LUT = np.array([_ID_TO_TRAIN.get(i, IGNORE_INDEX) for i in range(34)], dtype=np.int64)

_HINT = "expected leftImg8bit/ and gtFine/ from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip"


class Cityscapes(PairedFileDataset):
    """Cityscapes gtFine: 19 classes; the other label ids become ``ignore_index``.
    Splits: train (2975), val (500), test (1525; its public masks are all void)."""

    name = "cityscapes"
    classes = CLASSES
    palette = PALETTE
    ignore_index = IGNORE_INDEX
    lut = LUT

    def __init__(self, root, split, transforms=None):
        super().__init__(root, split, transforms)
        if split not in SPLITS:
            raise UserError(f"unknown cityscapes split {split!r}; valid: {', '.join(SPLITS)}")
        require_dir(self.root, "Cityscapes root", _HINT)
        img_dir = require_dir(self.root / "leftImg8bit" / split, "Cityscapes image folder", _HINT)
        gt_dir = require_dir(self.root / "gtFine" / split, "Cityscapes gtFine folder", _HINT)
        pairs = []
        for p in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = p.name[: -len("_leftImg8bit.png")]
            pairs.append((p, gt_dir / p.parent.name / f"{stem}_gtFine_labelIds.png"))
        missing = [m for _, m in pairs if not m.is_file()]
        if missing:
            raise UserError(f"{len(missing)} Cityscapes label file(s) missing, e.g. {missing[0]}; extract "
                            f"gtFine_trainvaltest.zip into {self.root}")
        self.pairs = require_nonempty(pairs, self.name, split, img_dir)
