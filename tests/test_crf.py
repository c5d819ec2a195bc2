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


def label_changes(mask) -> int:
    """Neighbouring pixel pairs with different labels: fewer when the labels form larger regions."""
    mask = torch.as_tensor(mask)
    return int((mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum())


def test_predict_crf_refines_each_mask_from_the_full_resolution_probabilities(tmp_path, make_checkpoint):
    """`fcnseg predict --crf` writes what dense_crf makes of the image and the probabilities `predict` computes,
    at the image's size: fewer, larger regions than the plain argmax."""
    import numpy as np
    from PIL import Image

    from fcnseg.cli import main
    from fcnseg.data import get_dataset
    from fcnseg.inference import Predictor
    from fcnseg.train.checkpoint import model_from_checkpoint
    ckpt = make_checkpoint(tmp_path, head="random")
    image = get_dataset("synthetic", None, "val", size=(96, 128))[0][0].as_subclass(torch.Tensor)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "scene.png")
    masks = {}
    for name, flags in (("plain", []), ("crf", ["--crf"]), ("small", ["--crf", "--crf-max-side", "40"])):
        out = tmp_path / name
        assert main(["predict", str(ckpt), str(tmp_path / "scene.png"), "--out", str(out), "--amp", "none",
                     *flags]) == 0
        assert (out / "scene_overlay.png").is_file()
        masks[name] = np.array(Image.open(out / "scene.png"))
    probs = Predictor(model_from_checkpoint(ckpt)[0], "cpu", amp="none").predict_image(image[None])[0]
    assert np.array_equal(masks["plain"], probs.argmax(0).numpy())
    assert np.array_equal(masks["crf"], dense_crf(image, probs).numpy())
    assert masks["small"].shape == (96, 128)
    assert (masks["crf"] != masks["plain"]).mean() > 0.01
    assert label_changes(masks["crf"]) < 0.9 * label_changes(masks["plain"])  # measured: 423 against 600


def test_dense_crf_names_its_parameters():
    image, _, probs = two_regions(8, 8, 2)
    with pytest.raises(ValueError, match="unknown DenseCRF parameter 'sxy'; valid: gauss_sxy"):
        dense_crf(image, probs, sxy=3)
    with pytest.raises(ValueError, match="same H×W"):
        dense_crf(image, probs[:, :4])
    assert dense_crf(image, probs, iterations=1, bilateral_srgb=5).shape == (8, 8)
