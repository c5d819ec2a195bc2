"""SIFT Flow (Liu et al. 2011), 2,688 256×256 outdoor images with 33 semantic classes, as the FCN authors read it.

Layout under ``root`` (or ``root/SiftFlowDataset``)::

    Images/spatial_envelope_256x256_static_8outdoorcategories/*.jpg
    SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/*.mat   (variable ``S``, 0..33)
    TestSet1.txt                                                            (the 200 test images)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, require_dir, require_nonempty
from .io import read_mat_variable

SPLITS = ("train", "test")
SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"

CLASSES = ["awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert",
           "door", "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock",
           "sand", "sea", "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window"]

# shipped without annotations (every pixel 0): the FCN authors' splits leave them out (data/sift-flow/classes.txt of
# fcn.berkeleyvision.org); in train they would only add all-void batches
UNANNOTATED = frozenset({"highway_bost181", "street_urb506"})

_HINT = "expected SiftFlowDataset/ with Images/, SemanticLabels/ and TestSet1.txt"


class SIFTFlow(PairedFileDataset):
    """SIFT Flow semantic labels: 33 classes, raw 0 (unlabelled) → ``ignore_index``, raw k → k−1.
    Splits: ``test`` = the images named in TestSet1.txt (200), ``train`` = all others (2,486) but the two without
    annotations (``UNANNOTATED``), as in the FCN authors' splits."""

    name = "siftflow"
    classes = CLASSES
    palette = None
    ignore_index = IGNORE_INDEX
    lut = np.array([IGNORE_INDEX] + list(range(33)), dtype=np.int64)

    def __init__(self, root, split, transforms=None):
        super().__init__(root, split, transforms)
        if split not in SPLITS:
            raise UserError(f"unknown siftflow split {split!r}; valid: {', '.join(SPLITS)}")
        require_dir(self.root, "SIFT Flow root", _HINT)
        base = self.root / "SiftFlowDataset" if (self.root / "SiftFlowDataset").is_dir() else self.root
        img_dir = require_dir(base / "Images" / SUBDIR, "SIFT Flow image folder", _HINT)
        lbl_dir = require_dir(base / "SemanticLabels" / SUBDIR, "SIFT Flow SemanticLabels folder", _HINT)
        test_list = base / "TestSet1.txt"
        if not test_list.is_file():
            raise UserError(f"SIFT Flow test list not found: {test_list} (it ships in SiftFlowDataset.zip)")
        # Lines may be bare names or paths, with / or \ separators: the file stem identifies the image.
        test = {Path(line.strip().replace("\\", "/")).stem for line in test_list.read_text().splitlines()
                if line.strip()}
        images = sorted(img_dir.glob("*.jpg"))
        unmatched = sorted(test - {p.stem for p in images})
        if unmatched:  # a partly extracted archive would otherwise shrink the test split without a word
            raise UserError(f"{len(unmatched)} image(s) named in {test_list} are missing from {img_dir}, e.g. "
                            f"{unmatched[0]}.jpg; extract SiftFlowDataset.zip again")
        pairs = [(p, lbl_dir / f"{p.stem}.mat") for p in images
                 if (p.stem in test) == (split == "test") and p.stem not in UNANNOTATED]
        self.pairs = require_nonempty(pairs, self.name, split, img_dir)

    def read_mask(self, path):
        s = read_mat_variable(path, "S")
        if s.ndim != 2:
            raise UserError(f"{path}: 'S' has shape {s.shape}, expected H×W")
        return s.astype(np.int64)  # stored as double in the release
