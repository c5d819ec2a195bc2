"""Metrics against a hand-computed case and against pytorch-fcn's label_accuracy_score."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnseg.metrics import confusion_matrix, image_mean_iou, scores


def test_hand_computed_case():
    # truth / prediction over 8 pixels, 3 classes, one ignored pixel (255)
    t = torch.tensor([0, 0, 0, 1, 1, 2, 2, 255])
    p = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    hist = confusion_matrix(t, p, 3)
    assert hist.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 2]]
    s = scores(hist, ["a", "b", "c"])
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)
    assert s["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    iou = [2 / 3, 1 / 3, 2 / 3]  # tp / (gt + pred - tp): 2/(3+2-2), 1/(2+2-1), 2/(2+3-2)
    assert s["mean_iou"] == pytest.approx(np.mean(iou))
    assert s["fw_iou"] == pytest.approx(3 / 7 * iou[0] + 2 / 7 * iou[1] + 2 / 7 * iou[2])
    assert s["per_class"]["b"]["iou"] == pytest.approx(1 / 3)
    assert image_mean_iou(hist) == pytest.approx(np.mean(iou))


def test_uint8_truth_counts_like_int64_and_bad_predictions_are_refused():
    t, p = torch.tensor([20, 20, 5, 255]), torch.tensor([20, 3, 5, 1])
    ref = confusion_matrix(t, p, 21)
    assert ref[20, 20] == 1 and ref[20, 3] == 1 and ref[5, 5] == 1 and int(ref.sum()) == 3
    assert torch.equal(confusion_matrix(t.to(torch.uint8), p.to(torch.uint8), 21), ref)  # 20 * 21 wrapped in uint8
    with pytest.raises(ValueError, match="prediction -1 is outside 0..20"):
        confusion_matrix(t, torch.tensor([20, -1, 5, 1]), 21)


def test_absent_class_is_left_out_of_the_means():
    hist = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 3)
    s = scores(hist)
    assert s["mean_iou"] == 1.0 and s["per_class"]["2"]["iou"] is None


def test_agrees_with_pytorch_fcn(torchfcn):
    rng = np.random.default_rng(0)
    n = 5
    trues = [rng.integers(0, n, (37, 41)) for _ in range(4)]
    for t in trues:
        t[rng.random(t.shape) < 0.1] = 255  # ignore pixels
    preds = [np.where(rng.random(t.shape) < 0.6, np.clip(t, 0, n - 1), rng.integers(0, n, t.shape)) for t in trues]
    # pytorch-fcn ignores labels outside [0, n) through its mask in _fast_hist
    ref = torchfcn.utils.label_accuracy_score(trues, preds, n)
    hist = sum(confusion_matrix(torch.from_numpy(t), torch.from_numpy(p), n) for t, p in zip(trues, preds))
    s = scores(hist)
    got = (s["pixel_accuracy"], s["mean_accuracy"], s["mean_iou"], s["fw_iou"])
    assert np.allclose(got, ref, rtol=1e-12), (got, ref)


def test_foreground_accuracy_by_hand():
    # truth rows, prediction columns; class 0 background: 90 bg pixels (80 right), 10 fg pixels of class 1 (6 right,
    # 3 called background, 1 called class 2) and 5 of class 2 (4 right)
    hist = np.array([[80, 5, 5], [3, 6, 1], [1, 0, 4]])
    s = scores(hist, ["null", "shirt", "shoes"], background=0)
    assert s["foreground_accuracy"] == pytest.approx((6 + 4) / 15)
    assert s["pixel_accuracy"] == pytest.approx(90 / 105)
    assert "foreground_accuracy" not in scores(hist)
