"""DenseCRF post-processing: cleans up noisy predictions along image edges (needs the optional pydensecrf2)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is an optional extra (pip install 'fcnseg[crf]')")

from fcnseg.crf import dense_crf  # noqa: E402


def two_regions(h, w, seed):
    """A red left half and a blue right half, and noisy class scores that are only weakly right on average."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.zeros(h, w, dtype=torch.int64)
    truth[:, w // 2:] = 1
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[:, :, :w // 2] = torch.tensor([200, 40, 40], dtype=torch.uint8).view(3, 1, 1)
    image[:, :, w // 2:] = torch.tensor([40, 40, 200], dtype=torch.uint8).view(3, 1, 1)
    logits = torch.randn(2, h, w, generator=g) * 1.5
    logits[1] += (truth.float() - 0.5) * 1.0  # weakly right on average, wrong on many pixels
    return image, truth, logits.softmax(0)


def test_crf_snaps_noisy_scores_to_image_regions():
    image, truth, probs = two_regions(40, 60, 0)
    before = (probs.argmax(0) == truth).float().mean()
    after = (dense_crf(image, probs) == truth).float().mean()
    assert before < 0.85 and after > 0.97, (before, after)
    # bf16 probabilities (an autocast run) were a TypeError in NumPy; they refine like float32 up to rounding
    assert (dense_crf(image, probs.bfloat16()) == truth).float().mean() > 0.97


def test_evaluate_reports_with_and_without_crf(tmp_path):
    from fcnseg.cli import main
    from fcnseg.train.config import resolve_config
    from fcnseg.train.loop import train
    cfg = resolve_config("demo", None, {"out": str(tmp_path / "run"), "max_iters": 2, "workers": 0, "batch_size": 2,
                                        "data_options": {"length": 4, "size": [48, 64]},
                                        "val_data_options": {"length": 2}})
    train(cfg, progress=False)
    assert main(["evaluate", str(tmp_path / "run" / "best.pt"), "--crf", "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 <= m["crf"]["mean_iou"] <= 1 and "mean_iou" in m
    assert "with CRF" in (tmp_path / "ev" / "metrics.md").read_text()


def test_crf_at_a_lower_resolution_returns_full_size_labels_that_follow_the_image():
    image, truth, probs = two_regions(90, 120, 1)
    labels = dense_crf(image, probs, max_side=40)
    assert labels.shape == (90, 120) and labels.dtype == torch.int64
    assert (labels == truth).float().mean() > 0.95
