"""Image and mask decoding with clear, one-line errors naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, read_file

from ..errors import UserError

Image.MAX_IMAGE_PIXELS = 200_000_000  # refuse decompression bombs beyond ~14k x 14k, far above any dataset here


def read_image(path: str | Path) -> torch.Tensor:
    """Decode any image Pillow or torchvision reads into uint8 RGB ``3×H×W``.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted; unreadable or truncated files
    raise :class:`UserError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:  # torchvision's libjpeg-turbo/libpng decoders are the fast path
        img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        if img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3:
            return img
    except (RuntimeError, ValueError):
        pass
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(to_8bit(im).convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e.__class__.__name__}: {e} (corrupt or truncated? re-export "
                        f"or remove the file)") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


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


def read_index_mask(path: str | Path) -> np.ndarray:
    """Read a class-index mask (palette PNG or grayscale PNG) as a ``H×W`` uint8/uint16 array of raw values."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L", "I;16", "I;16B", "I", "1"):
                return np.asarray(im).astype(np.int64 if im.mode.startswith("I") else np.uint8)
            if im.mode in ("RGB", "RGBA"):
                arr = np.asarray(im)
                if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
                    return arr[..., 0].copy()  # an index mask saved as grey RGB
                raise UserError(f"mask {path} is an RGB colour image; give the dataset a colour table "
                                f"(folder: colors in classes.txt) or convert it to an index PNG")
            raise UserError(f"mask {path} has unsupported mode {im.mode}; save it as a palette or grayscale PNG")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read mask {path}: {e.__class__.__name__}: {e} (corrupt or truncated?)") from None


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
