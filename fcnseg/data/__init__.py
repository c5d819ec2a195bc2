"""Datasets in their published layouts: ``get_dataset(name, root, split, transforms=None)``."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, SegmentationDataset, default_palette

# name → "module:Class"; modules are imported on use so that one reader's optional dependency never breaks another
READERS = {
    "synthetic": "synthetic:SyntheticDataset",
    "camvid": "camvid:CamVid",
    "ccp": "ccp:CCP",
    "voc2012": "voc:VOC2012",
    "sbd": "voc:SBD",
    "voc-aug": "voc:VOCAug",
    "seg11valid": "voc:Seg11Valid",
    "ade20k": "ade20k:ADE20K",
    "cityscapes": "cityscapes:Cityscapes",
    "pascal-context": "pascal_context:PascalContext",
    "siftflow": "siftflow:SIFTFlow",
    "nyudv2": "nyudv2:NYUDv2",
    "folder": "folder:FolderDataset",
}


def dataset_class(name: str) -> type[SegmentationDataset]:
    if name not in READERS:
        raise UserError(f"unknown dataset {name!r}; valid: {', '.join(READERS)}")
    module, cls = READERS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def get_dataset(name: str, root: str | Path | None, split: str, transforms: Callable | None = None,
                **options) -> SegmentationDataset:
    """Build dataset ``name`` reading ``root`` (``None`` for ``synthetic``); samples are (image, mask) pairs with
    ``classes``, ``palette`` and ``ignore_index`` attributes. ``options`` are reader-specific (e.g. ``length`` and
    ``size`` for synthetic, ``zero_is_class`` for ade20k, ``modality`` for nyudv2)."""
    cls = dataset_class(name)
    if root is None and name != "synthetic":
        raise UserError(f"dataset {name!r} needs --root DIR (the folder holding its files)")
    try:
        return cls(root, split, transforms=transforms, **options)
    except TypeError as e:  # an option this reader does not take
        raise UserError(f"dataset {name!r}: {e}") from None


__all__ = ["READERS", "get_dataset", "dataset_class", "SegmentationDataset", "PairedFileDataset", "IGNORE_INDEX",
           "default_palette"]
