"""SIFT Flow (Liu et al. 2011), 2,688 256×256 outdoor images with 33 semantic and 3 geometric classes, as the FCN
authors read it (their ``siftflow_layers.py``).

Layout under ``root`` (or ``root/SiftFlowDataset``)::

    Images/spatial_envelope_256x256_static_8outdoorcategories/*.jpg
    SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/*.mat   (variable ``S``, 0 void, 1..33)
    GeoLabels/spatial_envelope_256x256_static_8outdoorcategories/*.mat        (variable ``S``, -1 void, 1..3)
    TestSet1.txt                                                            (the 200 test images)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, apply_lut, require_dir, require_nonempty
from .io import read_mat_variable

SPLITS = ("train", "test")
TASKS = ("semantic", "geometric", "both")
SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"

CLASSES = ["awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert",
           "door", "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock",
           "sand", "sea", "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window"]
# the geometric labelling, in the order of the FCN authors' data/sift-flow/classes.txt (raw 1..3)
GEOMETRIC_CLASSES = ["sky", "horizontal", "vertical"]
# task "both": the FCN paper's two-headed net, one loss per head (siftflow-fcn*/net.py: score_fr_sem, score_fr_geo)
HEADS = (("semantic", len(CLASSES)), ("geometric", len(GEOMETRIC_CLASSES)))
SEMANTIC_LUT = np.array([IGNORE_INDEX] + list(range(len(CLASSES))), dtype=np.int64)
GEOMETRIC_LUT = np.array([IGNORE_INDEX] + list(range(len(GEOMETRIC_CLASSES))), dtype=np.int64)

# shipped without annotations (every pixel 0): the FCN authors' splits leave them out (data/sift-flow/classes.txt of
# fcn.berkeleyvision.org); in train they would only add all-void batches
UNANNOTATED = frozenset({"highway_bost181", "street_urb506"})

_HINT = "expected SiftFlowDataset/ with Images/, SemanticLabels/ and TestSet1.txt"


class SIFTFlow(PairedFileDataset):
    """SIFT Flow. ``task``: ``semantic`` (33 classes, raw 0 → ``ignore_index``, raw k → k−1), ``geometric`` (sky,
    horizontal, vertical; raw −1 and 0 → ``ignore_index``, raw k → k−1) or ``both`` (2×H×W masks: semantic, then
    geometric; ``heads`` says so, for the two-headed FCN of the paper).
    Splits: ``test`` = the images named in TestSet1.txt (200), ``train`` = all others (2,486) but the two without
    annotations (``UNANNOTATED``), as in the FCN authors' splits."""

    name = "siftflow"
    classes = CLASSES
    palette = None
    ignore_index = IGNORE_INDEX
    lut = SEMANTIC_LUT

    def __init__(self, root, split, transforms=None, task: str = "semantic"):
        super().__init__(root, split, transforms)
        if split not in SPLITS:
            raise UserError(f"unknown siftflow split {split!r}; valid: {', '.join(SPLITS)}")
        if task not in TASKS:
            raise UserError(f"unknown siftflow task {task!r}; valid: {', '.join(TASKS)}")
        self.task = task
        if task == "geometric":
            self.classes, self.lut = GEOMETRIC_CLASSES, GEOMETRIC_LUT
        elif task == "both":
            self.classes, self.heads = CLASSES + GEOMETRIC_CLASSES, HEADS
        require_dir(self.root, "SIFT Flow root", _HINT)
        base = self.root / "SiftFlowDataset" if (self.root / "SiftFlowDataset").is_dir() else self.root
        img_dir = require_dir(base / "Images" / SUBDIR, "SIFT Flow image folder", _HINT)
        sem_dir = require_dir(base / "SemanticLabels" / SUBDIR, "SIFT Flow SemanticLabels folder", _HINT)
        self.geo_dir = None if task == "semantic" else require_dir(
            base / "GeoLabels" / SUBDIR, "SIFT Flow GeoLabels folder", "it ships in SiftFlowDataset.zip beside "
            "SemanticLabels/; the geometric task needs it")
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
        # the mask path of a pair is the geometric file for task "geometric", the semantic one otherwise
        lbl_dir = self.geo_dir if task == "geometric" else sem_dir
        pairs = [(p, lbl_dir / f"{p.stem}.mat") for p in images
                 if (p.stem in test) == (split == "test") and p.stem not in UNANNOTATED]
        self.pairs = require_nonempty(pairs, self.name, split, img_dir)

    def describe(self, index: int) -> str:
        if self.task != "both":
            return super().describe(index)
        img, mask = self.pairs[index]
        return f"{img} / {mask} / {self.geo_dir / mask.name}"

    def read_mask(self, path):
        s = read_mat_variable(path, "S")
        if s.ndim != 2:
            raise UserError(f"{path}: 'S' has shape {s.shape}, expected H×W")
        s = s.astype(np.int64)  # stored as double in the release
        if self.geo_dir is not None and path.parent == self.geo_dir:
            s[s == -1] = 0  # geometric void is −1 (classes.txt); the authors fold it into 0, the semantic void
        return s

    def raw_mask(self, index: int) -> np.ndarray:
        if self.task != "both":
            return super().raw_mask(index)
        sem = self.pairs[index][1]
        semantic, geometric = self.read_mask(sem), self.read_mask(self.geo_dir / sem.name)
        if semantic.shape != geometric.shape:
            raise UserError(f"{self.geo_dir / sem.name} is {geometric.shape[1]}x{geometric.shape[0]} but {sem} is "
                            f"{semantic.shape[1]}x{semantic.shape[0]} (W×H); extract SiftFlowDataset.zip again")
        return np.stack([semantic, geometric])

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        if raw.ndim == 3:  # task "both": the semantic row, then the geometric one
            return np.stack([apply_lut(SEMANTIC_LUT, raw[0]), apply_lut(GEOMETRIC_LUT, raw[1])])
        return super().to_train_ids(raw)
