"""Clothing Co-Parsing (Yang et al., CVPR 2014): street-fashion photos with 59-label pixel annotations.

Layout under ``root`` (the github.com/bearpaw/clothing-co-parsing checkout)::

    photos/NNNN.jpg  annotations/pixel-level/NNNN.mat (variable ``groundtruth``)  label_list.mat
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, require_dir, require_nonempty
from .io import read_mat_variable

SPLITS = ("all", "train", "val")

# label_list.mat of the public release, used when the file is absent (when present, its names are used instead).
CLASSES = ["null", "accessories", "bag", "belt", "blazer", "blouse", "bodysuit", "boots", "bra", "bracelet", "cape",
           "cardigan", "clogs", "coat", "dress", "earrings", "flats", "glasses", "gloves", "hair", "hat", "heels",
           "hoodie", "intimate", "jacket", "jeans", "jumper", "leggings", "loafers", "necklace", "panties", "pants",
           "pumps", "purse", "ring", "romper", "sandals", "scarf", "shirt", "shoes", "shorts", "skin", "skirt",
           "sneakers", "socks", "stockings", "suit", "sunglasses", "sweater", "sweatshirt", "swimwear", "t-shirt",
           "tie", "tights", "top", "vest", "wallet", "watch", "wedges"]

_HINT = "expected the clothing-co-parsing folder with photos/ and annotations/pixel-level/"


def read_label_list(path) -> list[str]:
    """The class names stored in CCP's ``label_list.mat`` (a 1×59 cell of strings)."""
    cell = read_mat_variable(path, "label_list")
    try:
        return [str(np.asarray(x).ravel()[0]) for x in np.asarray(cell, dtype=object).ravel()]
    except (IndexError, TypeError) as e:
        raise UserError(f"{path}: label_list is not a cell array of names ({e})") from None


class CCP(PairedFileDataset):
    """CCP pixel-level annotations: 59 classes, ``null`` (raw 0, background) is class 0; no void label.

    Splits (CCP publishes none): ``all`` = every photo with a pixel-level annotation; ``val`` = those whose numeric
    id is a multiple of 5 (0005, 0010, …: 20%); ``train`` = the rest. The rule depends only on each image's own id,
    so a sample's split never changes when other files are added or missing.
    """

    name = "ccp"
    background_index = 0  # "null"
    classes = CLASSES
    palette = None
    ignore_index = IGNORE_INDEX

    def __init__(self, root, split, transforms=None):
        super().__init__(root, split, transforms)
        if split not in SPLITS:
            raise UserError(f"unknown ccp split {split!r}; valid: {', '.join(SPLITS)}")
        require_dir(self.root, "CCP root", _HINT)
        photos = require_dir(self.root / "photos", "CCP photos folder", _HINT)
        ann = require_dir(self.root / "annotations" / "pixel-level", "CCP pixel-level annotation folder", _HINT)
        label_list = self.root / "label_list.mat"
        if label_list.is_file():
            self.classes = read_label_list(label_list)
        pairs = []
        for mat in sorted(ann.glob("*.mat")):
            if not re.fullmatch(r"\d+", mat.stem):
                continue
            is_val = int(mat.stem) % 5 == 0
            if split == "all" or (split == "val") == is_val:
                pairs.append((photos / f"{mat.stem}.jpg", mat))
        self.pairs = require_nonempty(pairs, self.name, split, ann)

    def read_mask(self, path):
        gt = read_mat_variable(path, "groundtruth")
        if gt.ndim != 2:
            raise UserError(f"{path}: 'groundtruth' has shape {gt.shape}, expected H×W")
        return gt
