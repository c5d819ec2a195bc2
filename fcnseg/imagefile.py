"""Opening an image file with its size checked before anything is decoded: the decompression-bomb guard.

Pillow only: the command line checks its inputs with this before it loads torch (seconds), so a bomb or a file
that is no image is refused at once. :mod:`fcnseg.data.io` decodes what passes.
"""
from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from .errors import UserError

# Pillow's own bomb guard is a process-wide setting that would refuse an image a user allowed with --max-pixels;
# the limit is applied here instead, to the header of every image and mask before it is decoded.
Image.MAX_IMAGE_PIXELS = None
# 100 MP: a 12,000×8,000 photo passes; a 30,000×30,000 bomb (2.7 GB of RGB) does not.
MAX_PIXELS = 100_000_000
_limit = [MAX_PIXELS]  # the process-wide limit: the commands' --max-pixels sets it (set_max_pixels)
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


class ImageTooLarge(UserError):
    """An image whose header declares more pixels than the limit (``serve`` answers 413)."""


class UnreadableImage(UserError):
    """A file that is missing, not an image, or corrupt (``serve`` answers 400)."""


def set_max_pixels(n: int | None) -> None:
    """The limit every read uses when not given one: ``n`` pixels (0: no limit; None: the default, 100 MP)."""
    if n is not None and n < 0:
        raise UserError(f"--max-pixels must be 0 (no limit) or a pixel count, got {n}")
    _limit[0] = MAX_PIXELS if n is None else n


def describe(source: str | Path | bytes, name: str | None) -> str:
    return name or ("upload" if isinstance(source, bytes) else str(source))


@contextmanager
def open_image(source: str | Path | bytes, *, what: str = "image", name: str | None = None,
               max_pixels: int | None = None) -> Iterator[Image.Image]:
    """Open ``source`` (a path or the file's bytes) with its header read and its size checked, nothing decoded.
    ``max_pixels``: None → the process-wide limit (:func:`set_max_pixels`), 0 → none."""
    label = describe(source, name)
    max_pixels = _limit[0] if max_pixels is None else max_pixels
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise UnreadableImage(f"{what} not found: {label}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            w, h = im.size
            if max_pixels and w * h > max_pixels:
                raise ImageTooLarge(f"{what} {label} is {w}×{h} = {w * h:,} pixels, over the limit of "
                                    f"{max_pixels:,} (a decompression-bomb guard); if you trust the file, raise it "
                                    f"with --max-pixels {w * h}")
            yield im
    except UserError:
        raise
    except DECODE_ERRORS as e:
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise UnreadableImage(f"cannot read {what} {label}: {e.__class__.__name__}: {detail} (corrupt or truncated? "
                              f"re-export or remove the file)") from None


