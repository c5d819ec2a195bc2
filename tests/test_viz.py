"""Pictures: labels without a colour paint black; index PNGs hold any class count."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fcnseg.data.io import read_index_mask
from fcnseg.viz import colorize, save_index_png


def test_colorize_paints_labels_without_a_colour_black():
    palette = [(10, 20, 30), (40, 50, 60), (70, 80, 90)]
    out = colorize(torch.tensor([[0, 1, 2, -1, 3, 255]]), palette)  # -1 took class 0's colour (clamped to 0)
    assert out[:, 0].T.tolist() == [[10, 20, 30], [40, 50, 60], [70, 80, 90], [0, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_index_pngs_hold_more_than_256_classes(tmp_path):
    mask = np.array([[0, 7], [300, 65535]])
    save_index_png(mask, [(1, 2, 3)], tmp_path / "many.png")  # 300 was saved as 44 (uint8 wrap-around)
    save_index_png(mask % 8, [(1, 2, 3)], tmp_path / "few.png")
    assert read_index_mask(tmp_path / "many.png").tolist() == mask.tolist()
    assert Image.open(tmp_path / "few.png").mode == "P" and read_index_mask(tmp_path / "few.png").tolist() == [[0, 7],
                                                                                                              [4, 7]]
