"""Checkpoints: what a run saves, resuming from them (including a checkpoint written before format_version)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fcnseg
from fcnseg.cli import main
from fcnseg.errors import UserError
from fcnseg.train.checkpoint import FORMAT_VERSION, model_from_checkpoint, read_checkpoint
from fcnseg.train.config import resolve_config
from fcnseg.train.loop import train


def test_checkpoint_contents(tmp_path, tiny):
    train(tiny(max_iters=2, val_every=1, arch="fcn32s"), progress=False)
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    for key in ("model", "optimizer", "scaler", "iteration", "rng", "best_miou", "config", "classes", "normalization",
                "model_spec"):
        assert key in ckpt, key
    assert ckpt["classes"][0] == "sky" and ckpt["config"]["max_iters"] == 2
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "config.yaml").is_file()
    assert not list((tmp_path / "run").glob(".*tmp*"))  # no temporary files left behind
    model, _ = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert model.arch == "fcn32s" and model.num_classes == 7
    assert ckpt["format_version"] == read_checkpoint(tmp_path / "run" / "best.pt")["format_version"] == FORMAT_VERSION


def test_resuming_from_best_pt_is_one_clear_error(tmp_path, tiny):
    train(tiny(max_iters=1, val_every=1), progress=False)
    with pytest.raises(fcnseg.errors.UserError, match="holds weights only .* resume from last.pt"):
        train(tiny("again", max_iters=2, resume=str(tmp_path / "run" / "best.pt")), progress=False)


def test_a_run_saved_without_loss_scaling_resumes_with_fp16(tmp_path, tiny):
    """A run trained in fp32/bf16 saves an empty scaler state; resuming it where amp resolves to fp16 crashed."""
    train(tiny(max_iters=1, val_every=100), progress=False)
    summary = train(tiny(max_iters=2, val_every=100, amp="fp16", resume="auto"), progress=False)
    assert summary["iteration"] == 2


def test_a_changed_lr_applies_on_resume(tmp_path, caplog, tiny):
    """The saved param groups overwrote the config's lr and weight decay: a resume with --lr kept the old rate."""
    train(tiny(max_iters=1, val_every=100), progress=False)  # sgd, lr 0.01
    caplog.set_level("INFO", logger="fcnseg")
    train(tiny(max_iters=2, val_every=100, lr=0.001, weight_decay=0.5, resume="auto"), progress=False)
    groups = read_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"]
    assert {g["initial_lr"] for g in groups} <= {0.001, 0.002} and 0.001 in {g["initial_lr"] for g in groups}
    assert "resume: lr, weight_decay from this run's config" in caplog.text


# ----------------------------------------------------------------------- a checkpoint from before format_version
# `fcnseg train --recipe demo --max-iters 2 --amp none` at commit 59aa9b1, its last.pt shrunk by
# scripts/shrink_checkpoint.py: every tensor keeps its shape and dtype but stores one value (the RNG state stays whole)
OLD = Path(__file__).resolve().parents[1] / "fixtures" / "demo-59aa9b1-last.pt"


def test_an_old_checkpoint_loads_safely_and_rebuilds_its_model():
    ckpt = read_checkpoint(OLD)  # torch.load(weights_only=True)
    assert "format_version" not in ckpt and ckpt["iteration"] == 2 and ckpt["config"]["recipe"] == "demo"
    assert ckpt["scheduler"]["name"] == "poly" and len(ckpt["optimizer"]["param_groups"]) == 2
    model = fcnseg.load_checkpoint(OLD)
    assert (model.arch, model.backbone_name, model.num_classes, model.grid) == ("fcn8s", "resnet18", 7, "corner")
    assert model.classes[0] == "sky" and model.palette[0] == (70, 130, 180) and model.normalization.name == "imagenet"
    for k, v in model.state_dict().items():  # the file's (one-value) weights, not a fresh initialisation
        assert torch.equal(v, ckpt["model"][k]), k
    assert model(torch.zeros(1, 3, 37, 45)).shape == (1, 7, 37, 45)


def test_an_old_checkpoint_resumes(tmp_path):
    """Its optimizer, scaler, schedule position and RNG state continue a run; the new checkpoint is versioned. (The
    fixture's one-value tensors are made whole first: an optimizer updates its moments in place.)"""
    ckpt = torch.load(OLD, weights_only=True)
    (tmp_path / "run").mkdir()
    torch.save(_whole(ckpt), tmp_path / "run" / "last.pt")
    cfg = resolve_config("demo", None, {"out": str(tmp_path / "run"), "resume": "auto", "max_iters": 3, "workers": 0,
                                        "val_data_options": {"length": 2}})
    summary = train(cfg, progress=False)
    new = read_checkpoint(tmp_path / "run" / "last.pt")
    assert summary["iteration"] == new["iteration"] == 3 and new["format_version"] == FORMAT_VERSION
    assert {int(s["step"]) for s in new["optimizer"]["state"].values()} == {3}  # Adam's count went on from 2
    assert not torch.equal(new["model"]["score_fr.weight"], ckpt["model"]["score_fr.weight"])


def _whole(obj):
    """``obj`` with every tensor cloned into its own memory."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _whole(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_whole(v) for v in obj)
    return obj


def test_evaluate_scores_an_old_checkpoint(tmp_path, capsys):
    assert main(["evaluate", str(OLD), "--max-images", "2", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["dataset"] == "synthetic" and "mean_iou" in metrics


def test_a_checkpoint_from_a_newer_fcnseg_is_refused_in_one_line(tmp_path):
    ckpt = torch.load(OLD, weights_only=True)
    torch.save(dict(ckpt, format_version=FORMAT_VERSION + 1), tmp_path / "future.pt")
    with pytest.raises(UserError, match=rf"future\.pt has checkpoint format {FORMAT_VERSION + 1}, newer .*upgrade"):
        read_checkpoint(tmp_path / "future.pt")


def test_load_checkpoint_gives_a_model_ready_for_the_predictor(tmp_path, tiny):
    """The public route from a run to predictions: weights, class names, palette, normalisation and the recipe's
    test-time protocol travel with the model, and the Predictor's probabilities are the model's own softmax."""
    train(tiny(max_iters=2, val_every=1, resize=[48, 64], eval_flip=True), progress=False)
    model = fcnseg.load_checkpoint(tmp_path / "run" / "best.pt")
    ckpt = read_checkpoint(tmp_path / "run" / "best.pt")
    assert model.classes == ckpt["classes"] and model.classes[0] == "sky" and len(model.classes) == 7
    assert model.palette == [tuple(c) for c in ckpt["palette"]]
    assert model.normalization.to_dict() == ckpt["model_spec"]["normalization"]
    assert model.predict_options == {"input_size": [48, 64], "flip": True}
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    images = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    probs = fcnseg.Predictor(model, "cpu", amp="none").predict_image(images)
    with torch.no_grad():
        expected = model.eval()(model.normalization(images.float())).softmax(1)
    assert probs.shape == (2, 7, 48, 64)
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)
    flipped = fcnseg.Predictor(model, "cpu", amp="none").predict_image(images, **model.predict_options)
    assert flipped.shape == (2, 7, 48, 64) and torch.allclose(flipped.sum(1), torch.ones(2, 48, 64), atol=1e-4)


def test_load_checkpoint_names_a_missing_file(tmp_path):
    with pytest.raises(UserError, match="nothing.pt"):
        fcnseg.load_checkpoint(tmp_path / "nothing.pt")
