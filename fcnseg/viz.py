"""Colour maps, overlays, legends and image grids (so predictions are never mistaken for black images)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

IGNORE_COLOR = (0, 0, 0)


def colorize(mask: torch.Tensor, palette: Sequence[Sequence[int]]) -> torch.Tensor:
    """int H×W class map → uint8 3×H×W colour image; values the palette has no colour for (an ignore label such as
    255 or −1, a label out of range) are black."""
    colours = [list(c) for c in palette]
    lut = torch.tensor(colours + [list(IGNORE_COLOR)], dtype=torch.uint8)  # the last row for everything else
    m = mask.to(torch.int64)
    m = torch.where((m >= 0) & (m < len(colours)), m, len(colours))
    return lut[m].permute(2, 0, 1).contiguous()


def overlay(image: torch.Tensor, mask: torch.Tensor, palette, alpha: float = 0.5) -> torch.Tensor:
    """Blend the colour-mapped ``mask`` over the uint8 3×H×W ``image``."""
    col = colorize(mask, palette).float()
    return (image.float() * (1 - alpha) + col * alpha).round().clamp(0, 255).to(torch.uint8)


def save_index_png(mask: torch.Tensor | np.ndarray, palette, path: str | Path) -> None:
    """A palette PNG: pixel values are class indices (what tools read), and viewers show the class colours; indices
    above 255 are saved as a 16-bit grayscale PNG instead."""
    arr = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
        raise ValueError(f"class indices {int(arr.min())}..{int(arr.max())} do not fit a PNG")
    if arr.size and int(arr.max()) > 255:  # more than 256 classes: a 16-bit grayscale PNG (no palette) holds them
        _atomic_pil_save(Image.fromarray(arr.astype(np.uint16)), path)
        return
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    flat = [v for c in palette for v in c][:768]
    im.putpalette(flat + [0] * (768 - len(flat)))
    _atomic_pil_save(im, path)


def _atomic_pil_save(im: Image.Image, path: str | Path) -> None:
    import os
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    im.save(tmp)
    os.replace(tmp, path)


def legend(classes: Sequence[str], palette, present: Sequence[int] | None = None, width: int = 200) -> Image.Image:
    """A vertical legend of class colour swatches and names (only ``present`` classes when given)."""
    ids = list(present) if present is not None else list(range(len(classes)))
    row = 16
    im = Image.new("RGB", (width, max(row, row * len(ids)) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    for k, c in enumerate(ids):
        y = 2 + k * row
        draw.rectangle([4, y + 2, 16, y + 13], fill=tuple(palette[c]) if c < len(palette) else (0, 0, 0),
                       outline=(0, 0, 0))
        draw.text((22, y + 1), f"{c}: {classes[c] if c < len(classes) else c}", fill=(0, 0, 0), font=font)
    return im


def to_pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(t.permute(1, 2, 0).cpu().numpy())


def grid(rows: list[list[torch.Tensor]], *, titles: Sequence[str] | None = None, classes=None, palette=None,
         max_width: int = 320) -> Image.Image:
    """Rows of uint8 3×H×W panels (e.g. input | truth | prediction) → one image, with column titles and a legend."""
    scale = min(1.0, max_width / max(p.shape[-1] for r in rows for p in r))
    ph = max(int(p.shape[-2] * scale) for r in rows for p in r)
    pw = max(int(p.shape[-1] * scale) for r in rows for p in r)
    cols = max(len(r) for r in rows)
    top = 18 if titles else 0
    leg = legend(classes, palette) if classes else None
    lw = leg.width if leg else 0
    canvas = Image.new("RGB", (cols * (pw + 4) + lw, max(top + len(rows) * (ph + 4), leg.height if leg else 0)),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if titles:
        for j, t in enumerate(titles):
            draw.text((j * (pw + 4) + 4, 3), t, fill=(0, 0, 0), font=ImageFont.load_default())
    for i, r in enumerate(rows):
        for j, p in enumerate(r):
            canvas.paste(to_pil(p).resize((pw, ph), Image.NEAREST), (j * (pw + 4), top + i * (ph + 4)))
    if leg:
        canvas.paste(leg, (cols * (pw + 4), 0))
    return canvas


def save_image(im: Image.Image, path: str | Path) -> None:
    _atomic_pil_save(im, path)
