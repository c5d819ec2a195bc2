"""The command line: every command's --help has an example; user errors are one line with exit status 2; the
evaluate / predict / visualize / plot commands write what they promise."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.cli import build_parser, main
from fcnseg.config import resolve_config
from fcnseg.engine import train

COMMANDS = ["demo", "train", "evaluate", "predict", "visualize", "plot", "data", "data check", "data stats",
            "data download", "models", "recipes"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(command.split() + ["--help"])
    assert e.value.code == 0
    assert "example:" in capsys.readouterr().out


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fcnseg", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["train", "--recipe", "nope"], "unknown recipe 'nope'; valid: demo"),
    (["train", "--data", "camvid", "--root", "/no/such/dir", "--max-iters", "1"], "/no/such/dir"),
    (["train", "--data", "nodata"], "unknown dataset 'nodata'; valid: synthetic"),
    (["train", "--recipe", "demo", "--backbone", "resnet5"], "unknown model fcn8s/resnet5"),
    (["train", "--recipe", "caffe-voc-fcn16s", "--root", "x"], "--init-from"),
    (["train", "--recipe", "demo", "--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
    (["train", "--recipe", "demo", "--time-budget", "soon"], "cannot read time budget 'soon'"),
    (["train", "--recipe", "demo", "--set", "channels_last=maybe"], "channels_last must be true, false or auto"),
    (["evaluate", "/no/such.pt"], "weight file not found: /no/such.pt"),
    (["predict", "/no/such.pt", "x.png", "--out", "o"], "not found: /no/such.pt"),
    (["train", "--recipe", "demo", "--max-iters", "zero"], "invalid int value"),
    (["train", "--recipe", "demo", "--set", "lr=fast"], "lr must be a number, got 'fast'"),
    (["train", "--recipe", "demo", "--set", "max_iters=2.5"], "max_iters must be a whole number, got 2.5"),
    (["train", "--recipe", "camvid-torchvision-baseline", "--set", "global_context=true"], "has none"),
])
def test_user_errors_are_one_line_exit_2(args, message, tmp_path):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert message in lines[0] and "Traceback" not in r.stderr


def test_set_reads_numbers_yaml_keeps_as_text():
    """YAML 1.1 reads 4e-3 (no dot) as a string; `--set lr=4e-3` once reached the trainer as text and crashed."""
    cfg = resolve_config("ccp", None, {"lr": "4e-3", "max_iters": "1e3", "ema_decay": "null", "poly_power": "1",
                                       "time_budget": "20m"})
    assert cfg.lr == 0.004 and isinstance(cfg.lr, float)
    assert cfg.max_iters == 1000 and isinstance(cfg.max_iters, int)
    assert cfg.ema_decay is None and cfg.poly_power == 1.0 and isinstance(cfg.poly_power, float)
    assert cfg.time_budget == "20m"  # a key that may be text keeps it


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = resolve_config("demo", None, {"out": str(out), "max_iters": 3, "val_every": 100, "workers": 0,
                                        "data_options": {"length": 12, "size": [64, 80]},
                                        "val_data_options": {"length": 3}, "batch_size": 2})
    train(cfg, progress=False)
    return out / "best.pt"


def test_evaluate_writes_metrics(checkpoint, tmp_path, capsys):
    assert main(["evaluate", str(checkpoint), "--out", str(tmp_path / "ev"), "--flip"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "per_class", "per_image_mean_iou"):
        assert key in m
    assert m["images"] == 3 and set(m["per_class"]) == {"sky", "grass", "road", "building", "tree", "car", "person"}
    assert (tmp_path / "ev" / "metrics.md").read_text().startswith("# synthetic val")
    assert Image.open(tmp_path / "ev" / "confusion.png").size[0] > 100
    # image-level tags given: no image may be predicted a class its truth lacks, so the score can only rise
    assert main(["evaluate", str(checkpoint), "--out", str(tmp_path / "tags"), "--flip", "--given-tags"]) == 0
    t = json.loads((tmp_path / "tags" / "metrics.json").read_text())
    assert t["protocol"]["given_tags"] is True and "ground-truth tags" in (tmp_path / "tags" / "metrics.md").read_text()
    assert t["pixel_accuracy"] >= m["pixel_accuracy"]


def test_predict_writes_palette_pngs_and_overlays(checkpoint, tmp_path):
    imgs = tmp_path / "in"
    imgs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(imgs / "a.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(imgs / "grey.jpg")
    assert main(["predict", str(checkpoint), str(imgs), "--out", str(tmp_path / "out"), "--probs"]) == 0
    mask = Image.open(tmp_path / "out" / "a.png")
    assert mask.mode == "P" and mask.size == (53, 37)
    assert np.asarray(mask).max() < 7
    assert Image.open(tmp_path / "out" / "grey_overlay.png").size[1] >= 20
    probs = np.load(tmp_path / "out" / "a.npy")
    assert probs.shape == (7, 37, 53) and np.allclose(probs.astype(np.float32).sum(0), 1, atol=1e-2)


def test_predict_with_known_tags(checkpoint, tmp_path, capsys):
    imgs = tmp_path / "in"
    imgs.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (41, 57, 3), dtype=np.uint8)).save(imgs / "a.png")
    assert main(["predict", str(checkpoint), str(imgs), "--out", str(tmp_path / "free"), "--probs"]) == 0
    assert main(["predict", str(checkpoint), str(imgs), "--out", str(tmp_path / "tags"), "--tags", "sky, road"]) == 0
    free = np.load(tmp_path / "free" / "a.npy").astype(np.float32)
    tagged = np.asarray(Image.open(tmp_path / "tags" / "a.png"))
    assert set(np.unique(tagged)) <= {0, 2}  # sky and road only
    by_hand = np.where(free[0] >= free[2], 0, 2)  # the likelier of the two (float16 ties aside)
    assert (tagged == by_hand).mean() > 0.99
    assert main(["predict", str(checkpoint), str(imgs), "--out", str(tmp_path / "bad"), "--tags", "sky,jeans"]) == 2
    assert "--tags: unknown class 'jeans'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_predict_reports_unreadable_inputs(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert main(["predict", str(checkpoint), str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.png" in err and "1 of 1 inputs could not be read" in err


@pytest.mark.parametrize("option, message", [(["--scales", "0,1"], "--scales must all be positive, got '0,1'"),
                                             (["--window", "-5"], "--window is a tile size in pixels")])
def test_predict_refuses_impossible_options_in_one_line(checkpoint, tmp_path, capsys, option, message):
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), *option]) == 2
    assert message in capsys.readouterr().err


def test_colorize_paints_labels_without_a_colour_black():
    from fcnseg.viz import colorize
    palette = [(10, 20, 30), (40, 50, 60), (70, 80, 90)]
    out = colorize(torch.tensor([[0, 1, 2, -1, 3, 255]]), palette)  # -1 took class 0's colour (clamped to 0)
    assert out[:, 0].T.tolist() == [[10, 20, 30], [40, 50, 60], [70, 80, 90], [0, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_index_pngs_hold_more_than_256_classes(tmp_path):
    from fcnseg.data.io import read_index_mask
    from fcnseg.viz import save_index_png
    mask = np.array([[0, 7], [300, 65535]])
    save_index_png(mask, [(1, 2, 3)], tmp_path / "many.png")  # 300 was saved as 44 (uint8 wrap-around)
    save_index_png(mask % 8, [(1, 2, 3)], tmp_path / "few.png")
    assert read_index_mask(tmp_path / "many.png").tolist() == mask.tolist()
    assert Image.open(tmp_path / "few.png").mode == "P" and read_index_mask(tmp_path / "few.png").tolist() == [[0, 7],
                                                                                                              [4, 7]]


def test_predict_a_one_pixel_image_with_the_recipes_scales(checkpoint, tmp_path):
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    out = tmp_path / "o"
    assert main(["predict", str(checkpoint), str(tmp_path / "dot.png"), "--out", str(out), "--scales", "0.5,1"]) == 0
    assert Image.open(out / "dot.png").size == (1, 1)


def test_visualize_and_plot(checkpoint, tmp_path):
    assert main(["visualize", str(checkpoint), "--n", "2", "--out", str(tmp_path / "grid.png")]) == 0
    w, h = Image.open(tmp_path / "grid.png").size
    assert w > 3 * 64 and h >= 2 * 64
    assert main(["plot", str(checkpoint.parent), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "curves.png").is_file()


def test_help_lists_every_command():
    text = build_parser().format_help()
    for c in ("demo", "train", "evaluate", "predict", "visualize", "plot", "data"):
        assert c in text


def test_evaluate_protocol_defaults_come_from_the_recipe_and_flags_override():
    import argparse
    from fcnseg.cli import _predict_options
    ckpt = {"config": {"resize": [180, 240], "eval_flip": True, "eval_scales": [1, 1.25, 1.5]}}
    ns = lambda **kw: argparse.Namespace(**{"flip": None, "scales": None, "window": None, **kw})  # noqa: E731
    assert _predict_options(ns(), ckpt) == {"input_size": [180, 240], "flip": True, "scales": [1.0, 1.25, 1.5]}
    assert _predict_options(ns(flip=False, scales="1"), ckpt) == {"input_size": [180, 240], "scales": [1.0]}
    assert _predict_options(ns(flip=True), {"config": {}}) == {"flip": True}
    assert _predict_options(ns(), {}) == {}


def test_demo_runs_end_to_end(tmp_path):
    """The README's first command, shortened: every step of `fcnseg demo` (train, evaluate, predict, visualize,
    plot) runs and writes its files."""
    from fcnseg.cli import main
    assert main(["demo", "--max-iters", "2", "--out", str(tmp_path / "demo")]) == 0
    assert (tmp_path / "demo" / "eval" / "metrics.json").is_file()
    assert (tmp_path / "demo" / "run" / "best.pt").is_file()
    assert (tmp_path / "demo" / "grid.png").is_file() and (tmp_path / "demo" / "curves.png").is_file()


@pytest.mark.parametrize("flag, value", [([], "auto"), (["--channels-last"], True), (["--no-channels-last"], False)])
def test_train_memory_format_flags(monkeypatch, tmp_path, flag, value):
    from fcnseg import engine
    from fcnseg.cli import main
    seen = {}
    done = {"out": "r", "best_miou": 0.0, "iteration": 0, "last": "last.pt", "best": "best.pt"}
    monkeypatch.setattr(engine, "train", lambda cfg, **kw: seen.setdefault("cfg", cfg) and done)
    main(["train", "--recipe", "demo", "--out", str(tmp_path / "r"), *flag])
    assert seen["cfg"].channels_last == value
