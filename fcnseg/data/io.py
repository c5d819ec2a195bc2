"""The one image decoder (Pillow) and mask readers, with one-line errors naming the file.

Every path that reads an image — datasets, ``data check``, ``predict``, ``evaluate``, ``visualize``, ``serve`` —
goes through :func:`read_image`. It reads the header first and refuses an image over ``max_pixels`` before
decoding a single pixel (:mod:`fcnseg.imagefile`: a 1 MB PNG can declare 30000×30000 pixels, a decompression
bomb), applies EXIF orientation to photos (as viewers and browsers show them), converts every mode to uint8 RGB, and
decodes the first frame of animations and multi-page files (with a warning).
"""
from __future__ import annotations

import contextlib

import logging
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image, ImageOps

from ..errors import UserError
from ..imagefile import (DECODE_ERRORS, MAX_PIXELS, ImageTooLarge, UnreadableImage, describe, open_image,
                         set_max_pixels)

log = logging.getLogger("fcnseg")

EXIF_ORIENTATION = 0x0112
__all__ = ["DECODE_ERRORS", "MAX_PIXELS", "ImageTooLarge", "UnreadableImage", "exif_orientation", "open_image",
           "read_depth", "read_image", "read_index_mask", "read_mat_variable", "set_max_pixels", "to_8bit", "to_rgb"]


def read_image(source: str | Path | bytes, *, exif: bool = True, max_pixels: int | None = None,
               name: str | None = None) -> torch.Tensor:
    """Decode an image file (or its bytes) into uint8 RGB ``3×H×W``.

    ``exif``: rotate/flip by the EXIF orientation tag, so the result is the photo as displayed (datasets pass
    False: their masks are drawn on the stored pixels). Grayscale, palette, CMYK, 16-bit and float images are
    converted (16-bit ÷ 257); transparent images are composited onto white, as a viewer shows them; animations and
    multi-page files give their first frame. Over ``max_pixels`` (None: the process-wide limit, 100 MP unless
    :func:`set_max_pixels` changed it; 0: none) → :class:`ImageTooLarge`; missing, not an image,
    corrupt or truncated → :class:`UnreadableImage`; both name the file.
    """
    label = describe(source, name)
    with open_image(source, name=name, max_pixels=max_pixels) as im:
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            log.warning("%s has %d frames; using the first", label, frames)
        try:
            im.load()
            if exif and im.getexif().get(EXIF_ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
                im = ImageOps.exif_transpose(im)
            # one copy, HWC → CHW, into a writable array (Pillow's array view is read-only)
            arr = np.ascontiguousarray(np.asarray(to_rgb(im)).transpose(2, 0, 1))
            if not arr.flags.writeable:  # one-pixel-high images were contiguous already: still Pillow's view
                arr = arr.copy()
        except DECODE_ERRORS as e:
            detail = str(e).splitlines()[0][:200] if str(e) else ""
            raise UnreadableImage(f"cannot read image {label}: {e.__class__.__name__}: {detail} (corrupt or "
                                  f"truncated? re-export or remove the file)") from None
    return torch.from_numpy(arr)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode → ``RGB``; alpha (RGBA, LA, palette transparency) composited onto white."""
    if im.mode == "RGB":
        return im
    im = to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file (1, the default, when absent or unreadable)."""
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(EXIF_ORIENTATION, 1))
    except (*DECODE_ERRORS, TypeError):
        return 1


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float grayscale → 8-bit ``L`` by a fixed rule, so every image of a dataset keeps its brightness
    (a per-image maximum would brighten dark images): 16-bit modes ÷ 257 (65535 → 255); 32-bit integers as 8-bit
    levels when all are ≤ 255, else as 16-bit; floats in 0…1 × 255, other floats clipped to 0…255."""
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    a = np.asarray(im, dtype=np.float64)
    top = float(a.max()) if a.size else 0.0
    if im.mode.startswith("I;16") or (im.mode == "I" and top > 255):
        a = a / 257.0
    elif im.mode == "F" and top <= 1.0:
        a = a * 255.0
    return Image.fromarray(a.round().clip(0, 255).astype(np.uint8))


@contextlib.contextmanager
def _decoded(path: Path, what: str, max_pixels: int | None):
    """The image at ``path``, header-checked and decoded; a decoding error is one line naming ``what`` and the file."""
    with open_image(path, what=what, max_pixels=max_pixels) as im:
        try:
            im.load()
        except DECODE_ERRORS as e:
            raise UnreadableImage(f"cannot read {what} {path}: {e.__class__.__name__}: {e} (corrupt or "
                                  f"truncated?)") from None
        yield im


def read_index_mask(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read a class-index mask (palette PNG or grayscale PNG) as a ``H×W`` uint8/int64 array of raw values. Masks
    are never rotated by EXIF orientation: they label the stored pixels."""
    path = Path(path)
    with _decoded(path, "mask", max_pixels) as im:
        if im.mode in ("P", "L", "I;16", "I;16B", "I", "1"):
            return np.asarray(im).astype(np.int64 if im.mode.startswith("I") else np.uint8)
        if im.mode in ("RGB", "RGBA"):
            arr = np.asarray(im)
            if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
                return arr[..., 0].copy()  # an index mask saved as grey RGB
            raise UserError(f"mask {path} is an RGB colour image; give the dataset a colour table "
                            f"(folder: colors in classes.txt) or convert it to an index PNG")
        raise UserError(f"mask {path} has unsupported mode {im.mode}; save it as a palette or grayscale PNG")


def read_depth(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """A 16-bit depth PNG (millimetres, as NYUDv2's depth maps are stored) → ``H×W`` float32 millimetres. Other
    modes are refused: an 8-bit image would be read as depths of 0-255 mm."""
    path = Path(path)
    with _decoded(path, "depth image", max_pixels) as im:
        if not im.mode.startswith("I"):
            raise UserError(f"depth image {path} has mode {im.mode}; save depth as a 16-bit grayscale PNG of "
                            f"millimetres")
        return np.asarray(im).astype(np.float32)


def read_mat_variable(path: str | Path, name: str) -> np.ndarray:
    """One variable from a MATLAB .mat file (v5, as CCP and SBD ship them)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except Exception as e:  # scipy raises a mix of ValueError/TypeError/MatReadError on corrupt files
        raise UserError(f"cannot read MATLAB file {path}: {e} (corrupt or truncated?)") from None
    if name not in mat:
        have = ", ".join(k for k in mat if not k.startswith("__"))
        raise UserError(f"{path} has no variable {name!r} (it has: {have})")
    return mat[name]
