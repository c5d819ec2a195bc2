"""ADE20K scene parsing, the MIT Scene Parsing Benchmark release (Zhou et al. 2017).

Layout under ``root`` (or ``root/ADEChallengeData2016``)::

    images/{training,validation}/*.jpg   annotations/{training,validation}/*.png
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, require_dir, require_nonempty

SPLITS = {"train": "training", "val": "validation"}

# objectInfo150.csv, first name of each entry, in raw-value order 1..150 (as mmsegmentation lists them).
CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway",
    "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall",
    "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag"]

_HINT = "expected ADEChallengeData2016/ with images/ and annotations/ (training, validation)"


class ADE20K(PairedFileDataset):
    """ADE20K SceneParsing, splits ``train`` (20,210) and ``val`` (2,000).

    Default: 150 classes, raw 0 ("other"/unlabelled) → ``ignore_index``, raw k → k−1 (the benchmark convention).
    ``zero_is_class=True``: 151 classes with "other" as class 0 and raw values unchanged (FCN.tensorflow's choice).
    """

    name = "ade20k"
    classes = CLASSES
    palette = None  # ADE20K publishes no colour table
    ignore_index = IGNORE_INDEX

    def __init__(self, root, split, transforms=None, *, zero_is_class: bool = False):
        super().__init__(root, split, transforms)
        if split not in SPLITS:
            raise UserError(f"unknown ade20k split {split!r}; valid: {', '.join(SPLITS)}")
        require_dir(self.root, "ADE20K root", _HINT)
        base = self.root / "ADEChallengeData2016" if (self.root / "ADEChallengeData2016").is_dir() else self.root
        img_dir = require_dir(base / "images" / SPLITS[split], "ADE20K image folder", _HINT)
        ann_dir = require_dir(base / "annotations" / SPLITS[split], "ADE20K annotation folder", _HINT)
        self.zero_is_class = zero_is_class
        if zero_is_class:
            self.classes = ["other"] + CLASSES
            self.lut = None
        else:
            self.lut = np.array([IGNORE_INDEX] + list(range(150)), dtype=np.int64)
        pairs = [(p, ann_dir / f"{p.stem}.png") for p in sorted(img_dir.glob("*.jpg"))]
        missing = [m for _, m in pairs if not m.is_file()]
        if missing:
            raise UserError(f"{len(missing)} ADE20K annotation(s) missing, e.g. {missing[0]}; re-extract "
                            f"ADEChallengeData2016.zip")
        self.pairs = require_nonempty(pairs, self.name, split, img_dir)
