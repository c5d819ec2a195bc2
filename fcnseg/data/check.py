"""``data check``: read every sample once and list what would break or silently spoil training.

Each problem is one line naming the file(s) and the offending values. Nothing here raises: a reader's
:class:`UserError` (unreadable file, unmapped colour, …) becomes a problem line for that sample.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from . import get_dataset
from .base import PairedFileDataset, SegmentationDataset
from .io import exif_orientation, read_image

JPEG_MAGIC = b"\xff\xd8\xff"
ORIENTATIONS = {2: "mirrored", 3: "rotated 180°", 4: "flipped", 5: "mirrored and rotated 90°", 6: "rotated 90°",
                7: "mirrored and rotated 270°", 8: "rotated 270°"}


def _is_jpeg(path: Path) -> bool:
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(3) == JPEG_MAGIC
    except OSError:
        return False  # reported as unreadable when the mask is read


def _image_size(path: Path) -> tuple[int, int]:
    """Fully decode ``path`` as training does (the stored pixels) → (H, W); corrupt or truncated files raise."""
    return tuple(read_image(path, exif=False).shape[-2:])


def _orientation_problem(path: Path) -> str | None:
    """A photo whose EXIF tag rotates it: training reads the stored pixels (masks label those), while predict and
    serve show photos upright as viewers do, so a model trained on such data sees the photos turned."""
    orientation = exif_orientation(path)
    if orientation == 1:
        return None
    return (f"{path}: EXIF orientation {orientation} ({ORIENTATIONS.get(orientation, 'unknown')}): training reads "
            f"the stored pixels, as its mask does, but predict and serve turn photos upright; save the image and "
            f"its mask upright (e.g. Pillow's ImageOps.exif_transpose) and drop the tag")


def _describe_values(raw: np.ndarray, train: np.ndarray, bad: np.ndarray, raw_differs: bool) -> str:
    vals, counts = np.unique(raw[bad], return_counts=True)
    parts = []
    for v, c in list(zip(vals.tolist(), counts.tolist()))[:8]:
        tid = int(train[bad][raw[bad] == v][0])
        parts.append(f"raw {v} (→ train id {tid}) at {c} px" if raw_differs else f"{v} at {c} px")
    return ", ".join(parts) + (" …" if len(vals) > 8 else "")


def _check_mask(ds: SegmentationDataset, where: str, raw: np.ndarray, train: np.ndarray,
                raw_differs: bool, c: int | None = None) -> list[str]:
    if c is None and ds.heads and train.ndim == 3:  # one label map per head, each with its own classes
        return [p for (name, n), r, t in zip(ds.heads, raw, train)
                for p in _check_mask(ds, f"{where} ({name})", r, t, raw_differs, n)]
    out = []
    c, ign = c or ds.num_classes, ds.ignore_index
    bad = ((train < 0) | (train >= c)) & (train != ign)
    if bad.any():
        out.append(f"{where}: label values outside 0..{c - 1} and ignore {ign}: "
                   f"{_describe_values(raw, train, bad, raw_differs)}")
    if c > 2:
        present = set(np.unique(raw).tolist())
        if present == {0, 255}:
            out.append(f"{where}: mask holds only the values 0 and 255 (a black/white binary mask?); 255 is ignored, "
                       f"so save class indices 0..{c - 1} instead")
    return out


def check_dataset(ds: SegmentationDataset, *, progress: bool = True) -> list[str]:
    """Read every sample of ``ds`` once; return one line per problem found (empty list: all good)."""

    problems: list[str] = []
    n = len(ds)
    where_split = f"{ds.name} split {ds.split!r}" + (f" in {ds.root}" if ds.root is not None else "")
    if n == 0:
        return [f"{where_split} is empty: no samples found"]
    paired = isinstance(ds, PairedFileDataset)
    if paired:
        by_stem: dict[str, list[Path]] = defaultdict(list)
        for img, _ in ds.pairs:
            by_stem[Path(img).stem].append(Path(img))
        for stem, paths in sorted(by_stem.items()):
            if len(paths) > 1:
                problems.append(f"duplicate stem {stem!r}: {', '.join(map(str, paths))} (rename or remove one; "
                                f"masks are matched by stem)")
    for i in tqdm(range(n), desc=f"check {ds.name}/{ds.split}", file=sys.stderr, disable=not progress,
                  unit="img", dynamic_ncols=True):
        try:
            if paired:
                img_path, mask_path = (Path(p) for p in ds.pairs[i])
                where = ds.describe(i) if ds.heads else str(mask_path)  # (a file per labelling)
                if mask_path.suffix.lower() != ".mat" and _is_jpeg(mask_path):
                    problems.append(f"{mask_path}: mask is a JPEG; lossy compression changes label values near "
                                    f"edges, so save masks as PNG")
                size = None
                try:
                    size = _image_size(img_path)
                except UserError as e:
                    problems.append(str(e))
                if (turned := _orientation_problem(img_path)) is not None:
                    problems.append(turned)
                raw = np.asarray(ds.raw_mask(i))
                shape = raw.shape[-2:] if ds.heads else raw.shape[:2]  # (K×H×W with several heads)
                if size is not None and tuple(shape) != size:
                    problems.append(f"size mismatch: image {img_path} is {size[1]}x{size[0]} but mask {mask_path} is "
                                    f"{shape[1]}x{shape[0]} (W×H)")
                train = ds.to_train_ids(raw)
                problems += _check_mask(ds, where, raw, train, ds.lut is not None)
            else:
                where = ds.describe(i)
                _, mask = ds.load(i)
                m = mask.numpy()
                problems += _check_mask(ds, where, m, m, False)
        except UserError as e:
            problems.append(str(e))
        except Exception as e:  # a check must report, not crash: anything else is still one line per sample
            problems.append(f"{ds.describe(i)}: {e.__class__.__name__}: {e}")
    return problems


def check_split(name: str, root, split: str, *, progress: bool = True, **options) -> list[str]:
    """Build dataset ``name`` and check it; a construction error (missing folder, empty split) is a problem too."""
    try:
        ds = get_dataset(name, root, split, **options)
    except UserError as e:
        return [str(e)]
    return check_dataset(ds, progress=progress)


def format_report(problems: list[str], ds: SegmentationDataset | None = None, *, limit: int | None = 200) -> str:
    """A human-readable report: a summary line, then the problems (the first ``limit``)."""
    what = f"{ds.name} split {ds.split!r} ({len(ds)} samples)" if ds is not None else "dataset"
    if not problems:
        return f"{what}: no problems found"
    lines = [f"{what}: {len(problems)} problem(s)"]
    shown = problems if limit is None else problems[:limit]
    lines += [f"  {p}" for p in shown]
    if len(shown) < len(problems):
        lines.append(f"  … and {len(problems) - len(shown)} more")
    return "\n".join(lines)
