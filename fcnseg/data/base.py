"""The dataset contract every reader follows.

A dataset yields ``(image, mask)``: ``image`` a uint8 RGB ``tv_tensors.Image`` (3×H×W), ``mask`` an int64
``tv_tensors.Mask`` (H×W) of class indices in ``[0, num_classes)`` or ``ignore_index`` (255 by convention).
A reader with several labellings of each image (``heads``, e.g. SIFT Flow's semantic and geometric classes) yields
a K×H×W mask, one row per head, each row indexing that head's own classes (``classes`` lists them all, head by head).
A reader of other input modalities (NYUDv2's depth and HHA) yields ``in_channels``×H×W images (float32 when a
channel holds depth in millimetres) and says how a model takes them (``streams``, ``input_normalization``).
Samples are decoded on access (nothing is held in RAM) unless training wraps a reader in ``DecodedCache``;
normalisation happens later, on the device, with the model's own ``Normalization``.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from ..errors import UserError
from ..normalization import Normalization
from .io import read_image, read_index_mask

IGNORE_INDEX = 255


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (bit-interleaved), which gives n distinct colours for any n."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


class SegmentationDataset(torch.utils.data.Dataset, abc.ABC):
    """Base class: subclasses set ``classes`` (and optionally ``palette``) and implement ``__len__`` and ``load``."""

    name: str = "dataset"
    # reader options that choose samples within a split (CamVid's sequences): evaluating a checkpoint on another
    # split than the one its run validated on drops them
    selection_options: tuple[str, ...] = ()
    classes: Sequence[str] = ()
    palette: Sequence[tuple[int, int, int]] | None = None
    ignore_index: int = IGNORE_INDEX
    background_index: int | None = None  # a background class: metrics then add foreground accuracy
    heads: tuple[tuple[str, int], ...] | None = None  # ((name, classes), ...) when masks are K×H×W (see above)
    # the input the model needs (NYUDv2's modalities differ): image channels, FCN streams they split into (late
    # fusion), and how many leading channels are RGB (colour jitter touches only those)
    in_channels: int = 3
    streams: int = 1
    color_channels: int = 3

    def __init__(self, root: str | Path | None, split: str, transforms: Callable | None = None):
        self.root = Path(root) if root is not None else None
        self.split = split
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def input_normalization(self, rgb: Normalization) -> Normalization:
        """The model's input normalisation for this dataset's channels, given the RGB one its backbone expects."""
        return rgb

    def display_image(self, image: torch.Tensor) -> torch.Tensor:
        """A sample's image as uint8 RGB 3×H×W, for previews."""
        return image

    def get_palette(self) -> list[tuple[int, int, int]]:
        return list(self.palette) if self.palette else default_palette(self.num_classes)

    @abc.abstractmethod
    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode sample ``index`` → (uint8 3×H×W image, int64 H×W mask), before transforms."""

    def describe(self, index: int) -> str:
        """The file(s) behind sample ``index``, for error messages."""
        return f"{self.name}[{self.split}][{index}]"

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


class PairedFileDataset(SegmentationDataset):
    """A dataset backed by a list of (image path, mask path) pairs; masks are index images remapped by ``lut``.

    Subclasses fill ``self.pairs`` and may override ``read_mask`` (e.g. for .mat files) or set ``self.lut`` — a
    256-entry (or longer) array mapping raw mask values to train ids (``ignore_index`` for void).
    """

    lut: np.ndarray | None = None

    def __init__(self, root, split, transforms=None, pairs: list[tuple[Path, Path]] | None = None):
        super().__init__(root, split, transforms)
        self.pairs = list(pairs or [])

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, index: int) -> str:
        img, mask = self.pairs[index]
        return f"{img} / {mask}"

    def read_mask(self, path: Path) -> np.ndarray:
        return read_index_mask(path)

    def raw_mask(self, index: int) -> np.ndarray:
        """The mask's stored values, before ``lut`` (``data check`` inspects these)."""
        return self.read_mask(self.pairs[index][1])

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        return apply_lut(self.lut, raw)

    def load(self, index: int):
        img_path, mask_path = self.pairs[index]
        image = read_image(img_path, exif=False)  # masks label the stored pixels: no EXIF rotation
        mask = torch.from_numpy(self.to_train_ids(self.raw_mask(index)))
        if tuple(image.shape[-2:]) != tuple(mask.shape[-2:]):
            raise UserError(f"mask {mask_path} is {mask.shape[-1]}x{mask.shape[-2]} but image {img_path} is "
                            f"{image.shape[2]}x{image.shape[1]} (W×H); masks must match their image's size")
        return image, mask


def apply_lut(lut: np.ndarray | None, raw: np.ndarray) -> np.ndarray:
    """Raw mask values → train ids through ``lut`` (None: unchanged), as int64."""
    if lut is None:
        return raw.astype(np.int64)
    if raw.size and (int(raw.max()) >= len(lut) or int(raw.min()) < 0):
        # values the table does not cover pass through unchanged, for ``data check`` and training to report
        # (indexing would wrap −1 to the table's last class)
        inside = (raw >= 0) & (raw < len(lut))
        return np.where(inside, lut[np.clip(raw, 0, len(lut) - 1)], raw).astype(np.int64)
    return lut[raw].astype(np.int64)


def require_dir(path: Path, what: str, hint: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} not found: {path} ({hint})")
    return path


def require_nonempty(pairs: list, name: str, split: str, where: Path | str) -> list:
    if not pairs:
        raise UserError(f"{name} split {split!r} is empty: no samples found under {where}")
    return pairs


class DecodedCache(torch.utils.data.Dataset):
    """Decode every sample of ``dataset`` once, apply the deterministic ``prepare`` transform (a recipe's fixed
    resize) and keep the result in RAM; each access then runs only the random ``transforms``.

    Training epochs otherwise re-decode each PNG/JPEG and re-resize it (CamVid at 240×180: 10 ms of a core per sample,
    taken from the two compute threads). Masks are held as uint8 when their values allow (class ids and 255) and come
    out as int64, as the dataset contract says. Fill it before DataLoader workers fork, so they share the memory.
    """

    def __init__(self, dataset: SegmentationDataset, prepare: Callable | None = None,
                 transforms: Callable | None = None, ignore_index: int = IGNORE_INDEX):
        self.dataset, self.prepare, self.transforms = dataset, prepare, transforms
        self.small_masks = 0 <= ignore_index <= 255  # uint8 masks only when padding with ignore_index fits them
        self.images: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # classes, num_classes, palette, … of the wrapped reader
        if name in ("dataset", "images", "masks", "prepare", "transforms", "small_masks"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.images, *self.masks))

    def fill(self, bar=None) -> "DecodedCache":
        """Decode all samples (``bar``: a tqdm-like progress bar, updated per sample)."""
        for index in range(len(self.dataset)):
            image, mask = self.dataset.load(index)
            image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
            if self.prepare is not None:
                image, mask = self.prepare(image, mask)
            mask = mask.as_subclass(torch.Tensor)
            if self.small_masks and mask.numel() and int(mask.min()) >= 0 and int(mask.max()) <= 255:
                mask = mask.to(torch.uint8)
            self.images.append(image.as_subclass(torch.Tensor).contiguous())
            self.masks.append(mask.contiguous())
            if bar is not None:
                bar.update(1)
        return self

    def __getitem__(self, index: int):
        if len(self.images) != len(self.dataset):
            raise RuntimeError("DecodedCache.fill() must run before the cache is read")
        image, mask = tv_tensors.Image(self.images[index]), tv_tensors.Mask(self.masks[index])
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, tv_tensors.Mask(mask.to(torch.int64))
