"""Procedurally generated street scenes: the data of the demo and of most tests (no files, any size).

Each sample is a function of (seed, split, index) only, so any worker, process or machine regenerates the same
image. Scenes have a sky, a ground plane with a road in perspective, and textured objects of varied size (buildings,
trees, cars, people) drawn far-to-near so near objects occlude far ones. Colours of different classes overlap (a
green car, grey road and grey building), so a model must use texture and shape, not colour alone.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .base import SegmentationDataset

CLASSES = ("sky", "grass", "road", "building", "tree", "car", "person")
PALETTE = ((70, 130, 180), (107, 142, 35), (128, 64, 128), (70, 70, 70), (0, 100, 0), (0, 0, 142), (220, 20, 60))
SPLITS = {"train": 0, "val": 1, "test": 2}


def _noise(rng, h, w, cell):
    """Blotchy noise in [-1, 1]: random values on a coarse grid, repeated up to h×w."""
    gh, gw = -(-h // cell), -(-w // cell)
    return np.repeat(np.repeat(rng.uniform(-1, 1, (gh, gw)), cell, 0), cell, 1)[:h, :w]


def render_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene → (uint8 H×W×3 image, uint8 H×W labels)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    lab = np.zeros((h, w), np.uint8)
    horizon = rng.uniform(0.3, 0.55) * h

    def paint(region, cls, base, texture):
        nonlocal img
        lab[region] = cls
        col = np.asarray(base, np.float32)[None, :] + texture[region][:, None] * 40
        img[region] = col

    # sky: a vertical gradient with faint clouds
    sky = yy < horizon
    sky_col = np.asarray(PALETTE[0]) + rng.uniform(-30, 30, 3)
    img[sky] = sky_col + (yy[sky] / h * 60)[:, None] + _noise(rng, h, w, max(4, w // 8))[sky][:, None] * 10
    # grass: fine high-contrast texture
    paint(~sky, 1, np.asarray(PALETTE[1]) + rng.uniform(-25, 25, 3), _noise(rng, h, w, 2))
    # road: a trapezoid converging to a vanishing point on the horizon, smooth with a dashed centre line
    vx = rng.uniform(0.3, 0.7) * w
    half_bottom = rng.uniform(0.25, 0.5) * w
    t = np.clip((yy - horizon) / max(1.0, h - horizon), 0, 1)
    road = (~sky) & (np.abs(xx - (vx + (w / 2 - vx) * t)) < half_bottom * t + 1)
    grey = rng.uniform(80, 140)
    paint(road, 2, (grey, grey, grey + 5), _noise(rng, h, w, 8) * 0.2)
    centre = road & (np.abs(xx - (vx + (w / 2 - vx) * t)) < 0.02 * w * t + 0.5) & ((yy.astype(int) // 6) % 2 == 0)
    img[centre] = 230
    # objects, sorted far → near so that nearer ones are drawn last and occlude
    objects = []
    for _ in range(rng.integers(1, 4)):
        objects.append(("building", horizon + rng.uniform(0, 0.05) * h))
    for _ in range(rng.integers(0, 4)):
        objects.append(("tree", rng.uniform(horizon, h)))
    for _ in range(rng.integers(0, 4)):
        objects.append(("car", rng.uniform(horizon + 0.1 * h, h)))
    for _ in range(rng.integers(0, 3)):
        objects.append(("person", rng.uniform(horizon + 0.05 * h, h)))
    for kind, base in sorted(objects, key=lambda o: o[1]):
        depth = (base - horizon) / max(1.0, h - horizon) * 0.8 + 0.2  # near objects are bigger
        cx = rng.uniform(0, w)
        if kind == "building":
            bw, bh = rng.uniform(0.15, 0.4) * w, rng.uniform(0.2, 0.45) * h
            region = (np.abs(xx - cx) < bw / 2) & (yy < base) & (yy > base - bh)
            wall = rng.uniform(60, 160)
            windows = ((yy.astype(int) // 5) % 3 == 0) & ((xx.astype(int) // 5) % 3 == 0)
            paint(region, 3, (wall, wall * 0.9, wall * 0.8), windows.astype(np.float32) * -1.2)
        elif kind == "tree":
            r = rng.uniform(0.04, 0.12) * w * (0.5 + depth)
            trunk = (np.abs(xx - cx) < r * 0.15) & (yy < base) & (yy > base - 1.6 * r)
            canopy = (xx - cx) ** 2 + (yy - (base - 1.8 * r)) ** 2 < r ** 2
            paint(trunk | canopy, 4, (30 + rng.uniform(0, 40), 90 + rng.uniform(0, 50), 30), _noise(rng, h, w, 3))
        elif kind == "car":
            cw = rng.uniform(0.1, 0.22) * w * (0.4 + depth)
            ch = cw * rng.uniform(0.35, 0.5)
            body = (np.abs(xx - cx) < cw / 2) & (yy < base) & (yy > base - ch)
            cabin = (np.abs(xx - cx) < cw / 3) & (yy <= base - ch) & (yy > base - 1.5 * ch)
            colour = rng.uniform(0, 255, 3)
            paint(body | cabin, 5, colour, (yy - base) / max(ch, 1) * 0.6)  # shiny vertical gradient
            for off in (-cw / 3, cw / 3):
                wheel = (xx - cx - off) ** 2 + (yy - base) ** 2 < (ch * 0.3) ** 2
                paint(wheel & (yy < base + ch * 0.3), 5, (20, 20, 20), _noise(rng, h, w, 1) * 0.1)
        else:
            ph = rng.uniform(0.1, 0.2) * h * (0.4 + depth)
            body = ((xx - cx) / (ph * 0.18)) ** 2 + ((yy - (base - ph * 0.4)) / (ph * 0.4)) ** 2 < 1
            head = (xx - cx) ** 2 + (yy - (base - ph * 0.9)) ** 2 < (ph * 0.11) ** 2
            paint(body, 6, rng.uniform(0, 255, 3), _noise(rng, h, w, 2) * 0.5)
            paint(head, 6, (224, 172, 105), _noise(rng, h, w, 4) * 0.2)
    img *= rng.uniform(0.7, 1.2)  # global illumination
    img += rng.normal(0, 6, img.shape)  # sensor noise
    return img.clip(0, 255).astype(np.uint8), lab


class SyntheticDataset(SegmentationDataset):
    """``get_dataset("synthetic", None, split, length=N, size=(H, W), seed=S)``; splits train / val / test."""

    name = "synthetic"
    classes = CLASSES
    palette = PALETTE

    def __init__(self, root=None, split="train", transforms=None, *, length: int | None = None,
                 size: int | tuple[int, int] = (128, 160), seed: int = 0):
        super().__init__(root, split, transforms)
        if split not in SPLITS:
            raise UserError(f"synthetic has no split {split!r}; valid: {', '.join(SPLITS)}")
        self.length = int(length) if length is not None else (400 if split == "train" else 50)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if self.length < 1 or min(self.size) < 8:
            raise UserError(f"synthetic needs length >= 1 and size >= 8 px, got length={length}, size={size}")
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def describe(self, index: int) -> str:
        return f"synthetic[{self.split}, seed={self.seed}][{index}]"

    def load(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, SPLITS[self.split], index))
        img, lab = render_scene(rng, *self.size)
        return torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.from_numpy(lab.astype(np.int64))
