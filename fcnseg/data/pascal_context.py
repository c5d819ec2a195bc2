"""PASCAL-Context (Mottaghi et al. 2014): the 59-class task (``classes=59``, the default) or the full 459-class
labelling (``classes=459``).

59 classes, in the layout mmsegmentation's and detectron2's converters write
(``tools/dataset_converters/pascal_context.py`` with the Detail API and ``trainval_merged.json``)::

    VOCdevkit/VOC2010/JPEGImages/*.jpg
    VOCdevkit/VOC2010/SegmentationClassContext/*.png      0 = background/void, 1..59 = the classes below
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt

459 classes, from the release's ``trainval.tar.gz`` (https://cs.stanford.edu/~roozbeh/pascal-context/), extracted
into ``VOC2010`` (where detectron2's and ODISE's converters look) or into ``root`` itself (the FCN authors'
``data/pascal-context``)::

    trainval/*.mat        variable ``LabelMap`` (uint16): 0 = unlabelled, k = line k of labels.txt
    labels.txt            "1: accordion" … "459: wool"

with the images of ``VOC2010/JPEGImages`` and the split lists of ``ImageSets/SegmentationContext`` when the 59-class
conversion wrote them, else VOC 2010's ``ImageSets/Main/{train,val}.txt`` (the FCN authors' lists).

``root`` may be the folder holding ``VOCdevkit``, or ``VOC2010`` itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, require_nonempty
from .io import read_mat_variable

SPLITS = ("train", "val")
CLASS_SETS = (59, 459)
FULL_CLASSES = 459
# the full labelling has a class 255 ("money"): its unlabelled pixels take a value above every class, as
# detectron2's and ODISE's 459-class conversions (uint16 65535)
FULL_IGNORE_INDEX = 65535

CLASSES = ["aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
           "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
           "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
           "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
           "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
           "water", "window", "wood"]


def read_label_names(path: Path) -> list[str]:
    """The release's ``labels.txt`` ("k: name", k = 1..459) → the 459 names in label order."""
    if not path.is_file():
        raise UserError(f"PASCAL-Context label list not found: {path} (labels.txt ships in trainval.tar.gz)")
    entries = [line.partition(":") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    numbers = [k.strip() for k, _, _ in entries]
    if numbers != [str(i) for i in range(1, FULL_CLASSES + 1)] or not all(sep for _, sep, _ in entries):
        raise UserError(f"{path}: expected {FULL_CLASSES} lines 'k: name' numbered 1..{FULL_CLASSES}, as the "
                        f"labels.txt of trainval.tar.gz; extract it again")
    return [name.strip() for _, _, name in entries]


class PascalContext(PairedFileDataset):
    """PASCAL-Context. ``classes=59``: raw 0 → ``ignore_index``, raw k → k−1; splits train (4996), val (5104).
    ``classes=459``: ``LabelMap`` 0 (unlabelled) → ``ignore_index`` (65535: 255 is a class here), k → k−1."""

    name = "pascal-context"
    classes = CLASSES
    palette = None  # no official colour table
    ignore_index = IGNORE_INDEX
    lut = np.array([IGNORE_INDEX] + list(range(59)), dtype=np.int64)

    def __init__(self, root, split, transforms=None, classes: int = 59):
        super().__init__(root, split, transforms)
        if split not in SPLITS:
            raise UserError(f"unknown pascal-context split {split!r}; valid: {', '.join(SPLITS)}")
        if str(classes) not in map(str, CLASS_SETS):
            raise UserError(f"pascal-context classes={classes!r}; valid: {', '.join(map(str, CLASS_SETS))}")
        full = int(classes) == FULL_CLASSES
        labels = "trainval" if full else "SegmentationClassContext"
        for voc in (self.root, self.root / "VOC2010", self.root / "VOCdevkit" / "VOC2010"):
            if (voc / "JPEGImages").is_dir() and (full or (voc / labels).is_dir()):
                break
        else:
            if full:
                raise UserError(f"PASCAL VOC 2010 images not found under {self.root}: expected "
                                f"VOCdevkit/VOC2010/JPEGImages (from VOCtrainval_03-May-2010.tar)")
            raise UserError(f"PASCAL-Context not found under {self.root}: expected VOCdevkit/VOC2010/JPEGImages and "
                            f"SegmentationClassContext (convert with mmsegmentation's "
                            f"tools/dataset_converters/pascal_context.py)")
        lists = voc / "ImageSets" / "SegmentationContext"
        if full:
            context = next((d for d in (voc, self.root) if (d / labels).is_dir()), None)
            if context is None:
                raise UserError(f"PASCAL-Context full labels not found: no trainval/ folder in {voc} or {self.root} "
                                f"(extract trainval.tar.gz there)")
            self.classes = read_label_names(context / "labels.txt")
            self.ignore_index = FULL_IGNORE_INDEX
            self.lut = np.array([FULL_IGNORE_INDEX] + list(range(FULL_CLASSES)), dtype=np.int64)
            if not (lists / f"{split}.txt").is_file():
                lists = voc / "ImageSets" / "Main"  # the FCN authors' lists (pascalcontext_layers.py)
            suffix, folder = ".mat", context / labels
        else:
            suffix, folder = ".png", voc / labels
        lst = lists / f"{split}.txt"
        if not lst.is_file():
            hint = "VOC 2010 ships it in VOCtrainval_03-May-2010.tar" if full else \
                "written by the PASCAL-Context conversion script"
            raise UserError(f"list file not found: {lst} ({hint})")
        ids = [line.split()[0] for line in lst.read_text().splitlines() if line.strip()]
        self.pairs = require_nonempty([(voc / "JPEGImages" / f"{i}.jpg", folder / f"{i}{suffix}") for i in ids],
                                      self.name, split, lst)

    def read_mask(self, path: Path) -> np.ndarray:
        if path.suffix != ".mat":
            return super().read_mask(path)
        label_map = read_mat_variable(path, "LabelMap")
        if label_map.ndim != 2:
            raise UserError(f"{path}: 'LabelMap' has shape {label_map.shape}, expected H×W")
        return label_map.astype(np.int64)
