"""PASCAL-Context, 59 classes (Mottaghi et al. 2014), in the layout mmsegmentation's and detectron2's converters
write (``tools/dataset_converters/pascal_context.py`` with the Detail API and ``trainval_merged.json``)::

    VOCdevkit/VOC2010/JPEGImages/*.jpg
    VOCdevkit/VOC2010/SegmentationClassContext/*.png      0 = background/void, 1..59 = the classes below
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt

``root`` may be the folder holding ``VOCdevkit``, or ``VOC2010`` itself.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, require_nonempty

SPLITS = ("train", "val")

CLASSES = ["aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
           "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
           "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
           "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
           "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
           "water", "window", "wood"]


class PascalContext(PairedFileDataset):
    """PASCAL-Context 59: raw 0 → ``ignore_index``, raw k → k−1. Splits: train (4996), val (5104)."""

    name = "pascal-context"
    classes = CLASSES
    palette = None  # no official colour table
    ignore_index = IGNORE_INDEX
    lut = np.array([IGNORE_INDEX] + list(range(59)), dtype=np.int64)

    def __init__(self, root, split, transforms=None):
        super().__init__(root, split, transforms)
        if split not in SPLITS:
            raise UserError(f"unknown pascal-context split {split!r}; valid: {', '.join(SPLITS)}")
        for voc in (self.root, self.root / "VOC2010", self.root / "VOCdevkit" / "VOC2010"):
            if (voc / "SegmentationClassContext").is_dir() and (voc / "JPEGImages").is_dir():
                break
        else:
            raise UserError(f"PASCAL-Context not found under {self.root}: expected VOCdevkit/VOC2010/JPEGImages and "
                            f"SegmentationClassContext (convert with mmsegmentation's "
                            f"tools/dataset_converters/pascal_context.py)")
        lst = voc / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if not lst.is_file():
            raise UserError(f"list file not found: {lst} (written by the PASCAL-Context conversion script)")
        ids = [line.split()[0] for line in lst.read_text().splitlines() if line.strip()]
        self.pairs = require_nonempty([(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClassContext" / f"{i}.png")
                                       for i in ids], self.name, split, lst)
