"""``fcnseg report`` and the validation loss it plots: the loop's validation loss equals the training loss computed
independently on the validation set, and the report is one page that needs no other file."""
from __future__ import annotations

import base64
import json
import math
import re
import shutil
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcnseg.cli import main
from fcnseg.evaluation import evaluate
from fcnseg.metrics import scores
from fcnseg.train.checkpoint import model_from_checkpoint
from fcnseg.train.config import resolve_config
from fcnseg.train.loop import ValidationLoss, train
from fcnseg.viz import log_records

WEIGHTS = [1.0, 2.0, 0.5, 1.0, 1.5, 3.0, 1.0]  # the synthetic classes' loss weights: the mean is a weighted one
SECTIONS = {"summary": "Summary", "loss": "Loss: training and validation", "miou": "Validation mean IoU",
            "lr": "Learning rate", "per-class-iou": "Per-class IoU", "confusion": "Confusion matrix",
            "predictions": "Predictions", "config": "Config", "provenance": "Provenance"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run: 3 iterations, validated at 2 and 3 (the end) on 2 synthetic images, with class weights."""
    out = tmp_path_factory.mktemp("report") / "run"
    cfg = resolve_config(None, None, {
        "data": "synthetic", "data_options": {"length": 8, "size": [48, 64]}, "val_data_options": {"length": 2},
        "backbone": "resnet18", "batch_size": 2, "workers": 0, "crop_size": 40, "optimizer": "sgd", "lr": 0.01,
        "amp": "none", "pretrained_backbone": None, "log_every": 1, "max_iters": 3, "val_every": 2,
        "class_weights": WEIGHTS, "out": str(out)})
    train(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def evaluation(run):
    """``fcnseg evaluate`` of the run's best.pt, in the folder the report reads with --eval."""
    out = run.parent / "eval"
    assert main(["evaluate", str(run / "best.pt"), "--out", str(out)]) == 0
    return out


def test_validation_loss_is_the_training_loss_on_the_validation_set(run):
    """The last validation's loss, recomputed from last.pt: each validation image through the network at its size,
    the weighted cross-entropy summed over all pixels, divided by the summed weights of their classes."""
    vals = [r for r in log_records(run / "log.jsonl") if "val" in r]
    assert [r["iter"] for r in vals] == [2, 3]
    model, ckpt = model_from_checkpoint(run / "last.pt")
    model.eval()
    from fcnseg.data import get_dataset
    ds = get_dataset("synthetic", None, "val", None, length=2, size=[48, 64])
    weight = torch.tensor(WEIGHTS)
    total = weighted = 0.0
    with torch.no_grad():
        for i in range(len(ds)):
            image, mask = (t.as_subclass(torch.Tensor) for t in ds[i])
            logits = model(model.normalization(image[None]))
            assert logits.shape[-2:] == mask.shape
            total += float(F.cross_entropy(logits, mask[None].long(), weight=weight, reduction="sum"))
            weighted += float(weight[mask.long()].sum())
    assert vals[-1]["val"]["loss"] == pytest.approx(total / weighted, rel=1e-4)
    assert vals[0]["val"]["loss"] != pytest.approx(vals[-1]["val"]["loss"], rel=1e-6)  # two different weights
    assert ckpt["metrics"]["loss"] == vals[-1]["val"]["loss"]


def test_validation_loss_by_hand():
    """Two images of two pixels, one pixel ignored: the mean and sum reductions with class weights (1, 3)."""
    probs = [torch.tensor([[0.5, 0.25], [0.5, 0.75]]), torch.tensor([[0.9, 0.5], [0.1, 0.5]])]  # C×W, one row
    masks = [torch.tensor([[0, 1]]), torch.tensor([[255, 1]])]
    dataset = [(torch.zeros(3, 1, 2, dtype=torch.uint8), m) for m in masks]
    pixels = [(1.0, math.log(2)), (3.0, math.log(4 / 3)), (3.0, math.log(2))]  # (weight, −log p) of the labelled
    expected = {"mean": sum(w * n for w, n in pixels) / 7.0, "sum": sum(w * n for w, n in pixels) / 2}
    for reduction, value in expected.items():
        calls = iter(probs)
        predictor = types.SimpleNamespace(heads=None, model=None,
                                          predict_image=lambda image, _c=calls, **_: next(_c).reshape(1, 2, 1, 2))
        run = types.SimpleNamespace(loss_weight=torch.tensor([1.0, 3.0]),
                                    cfg=types.SimpleNamespace(ignore_index=255, loss_reduction=reduction))
        loss = ValidationLoss(run)
        evaluate(predictor, dataset, num_classes=2, progress=False, on_prediction=loss)
        assert loss.value() == pytest.approx(value, rel=1e-6)


def _page_images(text: str) -> list[bytes]:
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", text)
    assert all(u.startswith("data:image/png;base64,") for u in urls), [u[:40] for u in urls]
    return [base64.b64decode(u.split(",", 1)[1]) for u in urls]


def test_report_is_one_self_contained_page(run, evaluation, tmp_path, capsys):
    ev = evaluation
    m = json.loads((ev / "metrics.json").read_text())
    hist = np.load(ev / "confusion.npy")
    assert hist.shape == (7, 7) and scores(hist)["mean_iou"] == pytest.approx(m["mean_iou"])
    assert hist.sum() == 2 * 48 * 64 and (ev / "predictions.png").is_file()
    out = tmp_path / "mail" / "r.html"
    assert main(["report", str(run), "--eval", str(ev), "--out", str(out)]) == 0
    text = out.read_text()
    assert "<script" not in text and "<link" not in text and "url(" not in text
    images = _page_images(text)
    assert len(images) == 6 and all(i.startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    for name in ("loss", "miou", "lr", "per-class-iou", "confusion", "predictions"):  # the PNGs, beside the page
        assert (tmp_path / "mail" / f"r-{name}.png").read_bytes() in images
    for key, title in SECTIONS.items():
        assert f'<section id="{key}"><h2>{title}' in text
    last_val = [r for r in log_records(run / "log.jsonl") if "val" in r][-1]
    assert f"last validation loss</th><td>{last_val['val']['loss']:.4f} (iteration 3)" in text
    assert "backbone: resnet18" in text  # the config
    assert "fcnseg evaluate" in text and "training, from iteration 0" in text  # both provenance records
    assert "predictions.png" in text and "scored for this report" not in text  # nothing recomputed


def test_report_scores_the_checkpoint_without_an_evaluation(run, evaluation, tmp_path, capsys):
    """No --eval, or one from before confusion.npy and predictions.png: the checkpoint is scored for them."""
    bare = shutil.copytree(evaluation, tmp_path / "eval")
    (bare / "confusion.npy").unlink()
    (bare / "predictions.png").unlink()
    for extra in ([], ["--eval", str(bare)]):
        assert main(["report", str(run), *extra]) == 0
        text = (run / "report.html").read_text()
        assert len(_page_images(text)) == 6 and "scored for this report" in text


def test_report_without_a_checkpoint_says_what_it_left_out(run, tmp_path, capsys):
    """A run folder with its log but no checkpoint (deleted, or not copied with it): says what it left out."""
    folder = tmp_path / "r"
    folder.mkdir()
    shutil.copy(run / "log.jsonl", folder)
    assert main(["report", str(folder)]) == 0
    text = (folder / "report.html").read_text()
    assert len(_page_images(text)) == 4  # loss, mIoU, lr, per-class IoU
    assert "No confusion matrix: no checkpoint to score" in text and "From the validation at iteration 3." in text
    assert "config.yaml is missing" in text


@pytest.mark.parametrize("case, message", [
    ("missing", "run folder not found"),
    ("empty", "no log.jsonl under"),
    ("started", "holds no training iteration yet"),
    ("no-metrics", "has no metrics.json"),
])
def test_report_errors_are_one_line(run, tmp_path, capsys, case, message):
    folder = tmp_path / "r"
    args = ["report", str(folder)]
    if case != "missing":
        folder.mkdir()
    if case == "started":
        (folder / "log.jsonl").write_text(json.dumps({"iter": 0, "world_size": 1}) + "\n")
    if case == "no-metrics":
        shutil.copy(run / "log.jsonl", folder / "log.jsonl")
        args += ["--eval", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
