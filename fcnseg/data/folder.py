"""Your own data: a folder of images and masks matched by file stem.

Accepted layouts (``SPLIT`` = the split name; split ``all`` reads ``root`` itself)::

    root/[SPLIT/]images/*.jpg|png|…   root/[SPLIT/]masks/*.png          + root/classes.txt
    root/[SPLIT/]JPEGImages/*.jpg     root/[SPLIT/]SegmentationClass/*.png (or SegmentationClassPNG/, or *.npy)
                                      + root/class_names.txt             (what labelme's labelme2voc.py writes)

Masks: palette or grayscale PNGs hold class indices as stored (255 = ignore); labelme's .npy masks map −1 to 255.
When ``classes.txt`` gives colours, RGB and palette masks are decoded by colour through its table (an editor's
palette order need not be the class order); grayscale masks still hold indices.

Class list (looked up in ``root/[SPLIT/]`` then ``root/``), one class per line, in index order:

* ``classes.txt``: ``name`` or ``name R G B``; with colours, RGB and palette masks are decoded with them. A line
  ``__ignore__ R G B`` maps that colour to 255 without adding a class.
* ``class_names.txt`` (labelme2voc): ``_background_`` first; ``__ignore__`` lines are skipped (labelme saves its
  ignore label −1 as 255).
* neither: pass ``num_classes=N`` (classes are named ``class_0`` …).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, PairedFileDataset, require_nonempty
from .io import DECODE_ERRORS, open_image, read_index_mask

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTS = (".png", ".npy", ".bmp", ".tif", ".tiff", ".gif", ".jpg", ".jpeg")  # preference order: lossless first
IGNORE_NAME = "__ignore__"


def read_class_file(path: Path) -> tuple[list[str], list[tuple[int, int, int]] | None, dict[int, int]]:
    """Parse ``classes.txt``/``class_names.txt`` → (names, palette or None, {packed RGB: index})."""
    names, colours, table = [], [], {}
    raw = path.read_bytes()
    try:  # Windows editors save UTF-8 with a byte-order mark, or UTF-16 ("Unicode"); a BOM must not become a name
        text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 4 and all(p.lstrip("-").isdigit() for p in parts[-3:]):
            name, rgb = " ".join(parts[:-3]), tuple(int(p) for p in parts[-3:])
            if not all(0 <= v <= 255 for v in rgb):
                raise UserError(f"{path} line {n}: colour {rgb} is outside 0..255")
        else:
            name, rgb = line.strip(), None
        index = IGNORE_INDEX if name == IGNORE_NAME else len(names)
        if rgb is not None:
            key = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
            if key in table:
                raise UserError(f"{path} line {n}: colour {rgb} is already used by another class")
            table[key] = index
        if name != IGNORE_NAME:
            names.append(name)
            colours.append(rgb)
    if not names:
        raise UserError(f"{path} lists no classes; write one class name per line")
    if any(c is None for c in colours) and any(c is not None for c in colours):
        raise UserError(f"{path}: give a colour 'name R G B' on every class line or on none")
    return names, (colours if colours[0] is not None else None), table


class FolderDataset(PairedFileDataset):
    """Images and masks in two folders, matched by stem; see the module docstring for layouts and options."""

    name = "folder"
    palette = None
    ignore_index = IGNORE_INDEX

    def __init__(self, root, split="all", transforms=None, *, num_classes: int | None = None):
        super().__init__(root, split, transforms)
        if not self.root.is_dir():
            raise UserError(f"folder dataset root not found: {self.root}")
        base = self.root if split == "all" else self.root / split
        if not base.is_dir():
            have = sorted(p.name for p in self.root.iterdir() if p.is_dir() and self._layout(p))
            valid = ", ".join(["all"] * bool(self._layout(self.root)) + have) or "none found"
            raise UserError(f"folder split {split!r} not found: no {base} (valid splits: {valid})")
        layout = self._layout(base)
        if layout is None:
            splits = sorted(p.name for p in self.root.iterdir() if p.is_dir() and self._layout(p))
            raise UserError(f"no images/ + masks/ (or JPEGImages/ + SegmentationClass/) folders in {base}"
                            + (f"; splits found: {', '.join(splits)}" if splits and split == "all" else ""))
        img_dir, mask_dirs = layout
        self.color_table: dict[int, int] = {}
        self.classes, self.palette = self._read_classes(base, num_classes)
        masks: dict[str, Path] = {}
        for d in mask_dirs:  # earlier folders and extensions win: SegmentationClassPNG/*.png before *.npy
            found = sorted((MASK_EXTS.index(p.suffix.lower()), p) for p in d.iterdir()
                           if p.suffix.lower() in MASK_EXTS)  # a.PNG pairs with a.JPG as a.png does
            for _, p in found:
                masks.setdefault(p.stem, p)
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        by_stem: dict[str, list[str]] = defaultdict(list)
        for p in images:
            by_stem[p.stem].append(p.name)
        twins = {stem: names for stem, names in by_stem.items() if len(names) > 1}
        if twins:  # both would pair with the one mask of that stem: a sample counted twice, or a wrong pairing
            stem, names = next(iter(twins.items()))
            raise UserError(f"{len(twins)} stem(s) in {img_dir} name more than one image, e.g. {stem!r}: "
                            f"{', '.join(names)}; masks are matched by stem, so rename or remove one")
        missing = [p for p in images if p.stem not in masks]
        if missing:
            raise UserError(f"{len(missing)} image(s) in {img_dir} have no mask with the same stem in "
                            f"{mask_dirs[0]}, e.g. {missing[0].name}")
        self.pairs = require_nonempty([(p, masks[p.stem]) for p in images], self.name, split, img_dir)
        lossy = [m for _, m in self.pairs if m.suffix.lower() in (".jpg", ".jpeg")]
        if lossy:
            log.warning("%d mask(s) in %s are JPEGs (e.g. %s): lossy compression changes label values near edges; "
                        "save masks as PNG (fcnseg data check lists them)", len(lossy), lossy[0].parent, lossy[0].name)

    @staticmethod
    def _layout(base: Path) -> tuple[Path, list[Path]] | None:
        if (base / "images").is_dir() and (base / "masks").is_dir():
            return base / "images", [base / "masks"]
        if (base / "JPEGImages").is_dir():
            dirs = [base / d for d in ("SegmentationClassPNG", "SegmentationClass") if (base / d).is_dir()]
            if dirs:
                return base / "JPEGImages", dirs
        return None

    def _read_classes(self, base: Path, num_classes: int | None):
        for d in dict.fromkeys([base, self.root]):
            for fname in ("classes.txt", "class_names.txt"):
                if (d / fname).is_file():
                    names, palette, self.color_table = read_class_file(d / fname)
                    if num_classes is not None and num_classes != len(names):
                        raise UserError(f"num_classes={num_classes} but {d / fname} lists {len(names)} classes")
                    return names, palette
        if num_classes is None:
            raise UserError(f"no classes.txt or class_names.txt in {base}: write one class name per line (index "
                            f"order), or pass num_classes=N")
        if num_classes < 1:
            raise UserError(f"num_classes must be at least 1, got {num_classes}")
        return [f"class_{i}" for i in range(num_classes)], None

    def read_mask(self, path):
        path = Path(path)
        if path.suffix.lower() == ".npy":  # labelme2voc's SegmentationClass/*.npy: int32, −1 = ignore
            try:
                arr = np.load(path)
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read mask {path}: {e}") from None
            return np.where(arr < 0, IGNORE_INDEX, arr).astype(np.int64)
        if not self.color_table:
            return read_index_mask(path)
        with open_image(path, what="mask") as im:
            if im.mode not in ("RGB", "RGBA", "P", "PA"):  # grayscale masks hold indices
                return read_index_mask(path)
            try:
                rgb = np.asarray(im.convert("RGB")).astype(np.int64)
            except DECODE_ERRORS as e:
                raise UserError(f"cannot read mask {path}: {e.__class__.__name__}: {e} (corrupt or "
                                f"truncated?)") from None
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        colours, inverse = np.unique(packed, return_inverse=True)
        unknown = [int(c) for c in colours if int(c) not in self.color_table]
        if unknown:
            shown = ", ".join(str((c >> 16, (c >> 8) & 255, c & 255)) for c in unknown[:5])
            raise UserError(f"mask {path} has colour(s) not in the colour table of classes.txt: {shown}"
                            f"{' …' if len(unknown) > 5 else ''}; add them to classes.txt or repaint the mask")
        index = np.array([self.color_table[int(c)] for c in colours], dtype=np.int64)
        return index[inverse.reshape(packed.shape)]
