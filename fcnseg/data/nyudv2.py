"""NYUDv2 (Silberman et al. 2012): 1,449 indoor RGB-D images in the 40-class task of Gupta et al. (CVPR 2013), as the
FCN authors read it (nyud_layers.py and data/nyud/ of fcn.berkeleyvision.org).

Layout under ``root`` (ids 5001..6449, as Gupta et al.'s nyu-hooks number the labelled frames)::

    data/images/img_NNNN.png    colour, uint8 RGB
    data/depth/img_NNNN.png     depth in millimetres, uint16 (Gupta et al.'s filled-in depth)
    data/hha/img_NNNN.png       HHA: horizontal disparity, height above ground, angle with gravity; uint8 ×3
    segmentation/img_NNNN.mat   variable ``segmentation``: 0 = void, 1..40 = the classes
    train.txt, val.txt, test.txt    one id per line (e.g. 5010); trainval = train + val (or trainval.txt)

Option ``modality`` picks the input (FCN paper, section 5, NYUDv2): ``color`` (3 channels), ``depth`` (1), ``hha``
(3), ``color+depth`` (4 channels into one net: early fusion) or ``color+hha`` (6 channels, RGB then HHA, split
between two nets whose scores are averaged: late fusion).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..normalization import Normalization
from .base import IGNORE_INDEX, SegmentationDataset, require_dir, require_nonempty
from .io import read_depth, read_image, read_mat_variable

SPLITS = ("train", "val", "trainval", "test")
# model output order of the authors' data/nyud/classes.txt (their spelling); raw label k is class k−1, 0 is void
CLASSES = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
           "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
           "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
           "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
           "otherprop"]
MODALITIES = {"color": ("color",), "depth": ("depth",), "hha": ("hha",), "color+depth": ("color", "depth"),
              "color+hha": ("color", "hha")}
FOLDERS = {"color": "data/images", "depth": "data/depth", "hha": "data/hha"}
CHANNELS = {"color": 3, "depth": 1, "hha": 3}
# nyud_layers.py: HHA mean in the PNG's channel order (0-255), and the mean of log(depth in mm); the authors feed
# both without scaling (std 1). Colour keeps the normalisation of the backbone's weights (the authors subtracted
# NYUDv2's own mean pixel, BGR 116.190, 97.203, 92.318, a few grey levels from the ILSVRC one).
MEAN_HHA = (132.431, 94.076, 118.477)
MEAN_LOG_DEPTH = 7.844
LUT = np.array([IGNORE_INDEX] + list(range(len(CLASSES))), dtype=np.int64)

_HINT = "expected data/images, data/depth, data/hha, segmentation and train.txt / val.txt / test.txt (docs/datasets.md)"


class NYUDv2(SegmentationDataset):
    """NYUDv2's 40 classes (raw 0 → ``ignore_index``, raw k → k−1) with the input ``modality`` asks for: images are
    ``in_channels``×H×W, uint8, or float32 holding 0-255 colour and depth in millimetres when depth is among them."""

    name = "nyudv2"
    classes = CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(self, root, split, transforms=None, modality: str = "color"):
        super().__init__(root, split, transforms)
        if split not in SPLITS:
            raise UserError(f"unknown nyudv2 split {split!r}; valid: {', '.join(SPLITS)}")
        if modality not in MODALITIES:
            raise UserError(f"unknown nyudv2 modality {modality!r}; valid: {', '.join(MODALITIES)}")
        self.modality, self.parts = modality, MODALITIES[modality]
        self.in_channels = sum(CHANNELS[p] for p in self.parts)
        self.streams = 2 if modality == "color+hha" else 1
        self.color_channels = 3 if "color" in self.parts else 0
        require_dir(self.root, "NYUDv2 root", _HINT)
        for part in self.parts:
            require_dir(self.root / FOLDERS[part], f"NYUDv2 {part} folder", _HINT)
        require_dir(self.root / "segmentation", "NYUDv2 segmentation folder", _HINT)
        self.ids = require_nonempty(self._read_split(split), self.name, split, self.root)

    def _read_split(self, split: str) -> list[str]:
        lists = [split] if split != "trainval" or (self.root / "trainval.txt").is_file() else ["train", "val"]
        ids = []
        for name in lists:
            path = self.root / f"{name}.txt"
            if not path.is_file():
                raise UserError(f"NYUDv2 split list not found: {path} (the FCN authors' data/nyud/{name}.txt)")
            ids += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return ids

    def __len__(self) -> int:
        return len(self.ids)

    def files(self, index: int) -> list[Path]:
        """The input files of sample ``index`` (one per modality part) and its label file."""
        i = self.ids[index]
        return [self.root / FOLDERS[p] / f"img_{i}.png" for p in self.parts] + [
            self.root / "segmentation" / f"img_{i}.mat"]

    def describe(self, index: int) -> str:
        return " / ".join(map(str, self.files(index)))

    def raw_mask(self, index: int) -> np.ndarray:
        path = self.files(index)[-1]
        s = read_mat_variable(path, "segmentation")
        if s.ndim != 2:
            raise UserError(f"{path}: 'segmentation' has shape {s.shape}, expected H×W")
        return s.astype(np.int64)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        *inputs, label = self.files(index)
        raw = self.raw_mask(index)
        # values the table does not cover pass through unchanged, for ``data check`` and training to report
        mask = np.where((raw >= 0) & (raw < len(LUT)), LUT[np.clip(raw, 0, len(LUT) - 1)], raw)
        parts = []
        for part, path in zip(self.parts, inputs):
            t = torch.from_numpy(read_depth(path))[None] if part == "depth" else read_image(path, exif=False)
            if tuple(t.shape[-2:]) != mask.shape:
                raise UserError(f"{path} is {t.shape[-1]}x{t.shape[-2]} but its labels {label} are "
                                f"{mask.shape[1]}x{mask.shape[0]} (W×H); every modality must match the labels")
            parts.append(t)
        if "depth" in self.parts:  # millimetres exceed uint8: the whole image is float32
            parts = [t.float() for t in parts]
        return torch.cat(parts), torch.from_numpy(mask.astype(np.int64))

    def input_normalization(self, rgb: Normalization) -> Normalization:
        """The model's normalisation for this modality, from the RGB one its backbone's weights expect: colour as
        ``rgb``; HHA centred on the authors' mean and scaled as ``rgb`` scales colour; log-depth centred on the
        authors' mean, unscaled (nyud_layers.py). A normalisation already made for this modality is kept."""
        tag = f"+nyudv2-{self.modality}"
        if self.modality == "color" or (rgb.name.endswith(tag) and len(rgb.mean) == self.in_channels):
            return rgb
        if len(rgb.mean) != 3:
            raise UserError(f"normalisation {rgb.name!r} has {len(rgb.mean)} channels, not the RGB one a backbone "
                            f"expects or this {self.modality} input's {self.in_channels}; start from RGB weights")
        mean, std, logs = [], [], []
        for part in self.parts:
            if part == "depth":
                logs.append(len(mean))
                mean, std = mean + [MEAN_LOG_DEPTH], std + [1.0]
            else:
                scale = 1.0 if part == "color" else rgb.value_range / 255.0
                mean += [m * scale for m in (rgb.mean if part == "color" else MEAN_HHA)]
                std += list(rgb.std)
        return Normalization(tuple(mean), tuple(std), bgr=rgb.bgr and "color" in self.parts,
                             value_range=rgb.value_range, name=rgb.name + tag, log_channels=tuple(logs))

    def display_image(self, image: torch.Tensor) -> torch.Tensor:
        """Colour when the input holds it, else HHA, else depth as grey (nearest black, farthest white)."""
        if self.parts[0] != "depth":
            return image[:3].round().clamp(0, 255).to(torch.uint8) if image.is_floating_point() else image[:3]
        d = image[:1].float()
        return (d * (255.0 / d.max().clamp(min=1.0))).round().to(torch.uint8).expand(3, -1, -1)
