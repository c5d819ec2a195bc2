"""The command line: every command's --help has an example; user errors are one line with exit status 2; the
evaluate / predict / visualize / plot commands write what they promise."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from fcnseg.cli import build_parser, main
from fcnseg.cli.common import predict_options
from fcnseg.train import loop
from fcnseg.train.config import resolve_config
from fcnseg.train.loop import train

COMMANDS = ["demo", "train", "evaluate", "predict", "visualize", "plot", "report", "data", "data check", "data stats",
            "data download", "models", "recipes"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(command.split() + ["--help"])
    assert e.value.code == 0
    assert "example:" in capsys.readouterr().out


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
    (["predict", "m.pt", "x.png", "--out", "o", "--crf-max-side", "0"], "expected a whole number of at least 1"),
    (["train", "--recipe", "demo", "--max-iters", "zero"], "invalid int value"),
    (["train", "--recipe", "demo", "--set", "lr=fast"], "lr must be a number, got 'fast'"),
    (["train", "--recipe", "demo", "--set", "max_iters=2.5"], "max_iters must be a whole number, got 2.5"),
    (["train", "--recipe", "camvid-torchvision-baseline", "--set", "global_context=true"], "has none"),
])
def test_user_errors_are_one_line_exit_2(args, message, tmp_path, run_cli):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert message in lines[0] and "Traceback" not in r.stderr


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
    assert np.load(tmp_path / "ev" / "confusion.npy").sum() == 3 * 64 * 80  # every labelled pixel, once
    assert Image.open(tmp_path / "ev" / "predictions.png").size[1] >= 3 * 64 * 0.9  # one row per image
    # image-level tags given: no image may be predicted a class its truth lacks, so the score can only rise
    assert main(["evaluate", str(checkpoint), "--out", str(tmp_path / "tags"), "--flip", "--given-tags"]) == 0
    t = json.loads((tmp_path / "tags" / "metrics.json").read_text())
    assert t["protocol"]["given_tags"] is True and "ground-truth tags" in (tmp_path / "tags" / "metrics.md").read_text()
    assert t["pixel_accuracy"] >= m["pixel_accuracy"]


def test_evaluate_records_where_its_figures_come_from(checkpoint, tmp_path, capsys):
    """metrics.json says which code (version, commit), libraries, machine and command produced it, and when."""
    import datetime
    import torch
    import torchvision
    import fcnseg
    from fcnseg.provenance import git_commit
    from fcnseg.runtime import cpu_model
    assert main(["evaluate", str(checkpoint), "--out", str(tmp_path / "ev"), "--device", "cpu"]) == 0
    p = json.loads((tmp_path / "ev" / "metrics.json").read_text())["provenance"]
    assert p["fcnseg_version"] == fcnseg.__version__ and p["git_commit"] == git_commit()[0]
    assert p["torch_version"] == torch.__version__ and p["torchvision_version"] == torchvision.__version__
    assert p["device"] == "cpu" and p["cpu_model"] == cpu_model() and p["gpu_name"] is None
    assert p["command"] == f"fcnseg evaluate {checkpoint} --out {tmp_path / 'ev'} --device cpu"
    date = datetime.datetime.fromisoformat(p["date"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - date).total_seconds()) < 300
    assert f"Provenance: fcnseg {fcnseg.__version__}" in (tmp_path / "ev" / "metrics.md").read_text()


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
    err = capsys.readouterr().err  # no input readable: refused before the model runs
    assert err.strip() == f"fcnseg: error: cannot read image {bad}: OSError: Truncated File Read (corrupt or " \
                          "truncated? re-export or remove the file)"
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(good)
    assert main(["predict", str(checkpoint), str(bad), str(good), "--out", str(tmp_path / "o"), "--amp", "none"]) == 2
    err = capsys.readouterr().err
    assert f"skipped: cannot read image {bad}" in err and "1 of 2 inputs could not be read" in err
    assert (tmp_path / "o" / "good.png").is_file()


@pytest.mark.parametrize("option, message", [(["--scales", "0,1"], "--scales must all be positive, got '0,1'"),
                                             (["--window", "-5"], "--window is a tile size in pixels")])
def test_predict_refuses_impossible_options_in_one_line(checkpoint, tmp_path, capsys, option, message):
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), *option]) == 2
    assert message in capsys.readouterr().err


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
    for c in ("demo", "train", "evaluate", "predict", "visualize", "plot", "report", "data"):
        assert c in text


def test_optional_commands_are_listed_and_say_what_to_install(tmp_path, monkeypatch, capsys, make_checkpoint):
    """Without their optional packages, export and serve still appear, and fail in one line naming the extra."""
    for module in ("onnx", "onnxruntime", "uvicorn", "fastapi"):
        monkeypatch.setitem(sys.modules, module, None)  # `import onnx` now fails as if it were not installed
    text = build_parser().format_help()
    assert all(c in text for c in ("export", "serve", "benchmark"))
    ckpt = make_checkpoint(tmp_path / "m.pt")
    for argv, extra in ((["serve", str(ckpt)], "fcnseg[serve]"),
                        (["export", str(ckpt), "--out", str(tmp_path / "m.onnx")], "fcnseg[export]")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pip install '{extra}'" in err, err


def test_crf_without_pydensecrf2_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys, make_checkpoint):
    for module in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, module, None)  # as if pydensecrf2 were not installed
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "a.png")
    ckpt = make_checkpoint(tmp_path / "m.pt")
    for argv in (["predict", str(ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--crf"],
                 ["evaluate", str(ckpt), "--crf", "--out", str(tmp_path / "ev")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "needs pydensecrf2: pip install 'fcnseg[crf]'" in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "ev").exists()


def test_train_flags_come_from_the_config_fields():
    """Each flag's help is its TrainConfig field's; switches, negatable and list flags read as before."""
    from fcnseg.cli.train import overrides
    from fcnseg.train.config import FIELDS
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train_parser._actions}
    assert helps["lr"] == FIELDS["lr"].metadata["help"] and helps["ema_decay"].replace("%%", "%") == \
        FIELDS["ema_decay"].metadata["help"]
    args = build_parser().parse_args(["train", "--lr", "0.5", "--no-channels-last", "--deterministic", "--trainable",
                                      "head,backbone.fc7", "--crop-size", "64", "--set", "seed=3"])
    assert overrides(args) == {"crop_size": 64, "trainable": ["head", "backbone.fc7"], "lr": 0.5,
                               "channels_last": False, "deterministic": True, "seed": "3"}


def test_evaluate_protocol_defaults_come_from_the_recipe_and_flags_override():
    import argparse
    ckpt = {"config": {"resize": [180, 240], "eval_flip": True, "eval_scales": [1, 1.25, 1.5]}}
    ns = lambda **kw: argparse.Namespace(**{"flip": None, "scales": None, "window": None, **kw})  # noqa: E731
    assert predict_options(ns(), ckpt) == {"input_size": [180, 240], "flip": True, "scales": [1.0, 1.25, 1.5]}
    assert predict_options(ns(flip=False, scales="1"), ckpt) == {"input_size": [180, 240], "scales": [1.0]}
    assert predict_options(ns(flip=True), {"config": {}}) == {"flip": True}
    assert predict_options(ns(), {}) == {}


def test_demo_runs_end_to_end(tmp_path):
    """The README's first command, shortened: every step of `fcnseg demo` (train, evaluate, predict, visualize,
    plot) runs and writes its files."""
    assert main(["demo", "--max-iters", "2", "--out", str(tmp_path / "demo")]) == 0
    assert (tmp_path / "demo" / "eval" / "metrics.json").is_file()
    assert (tmp_path / "demo" / "run" / "best.pt").is_file()
    assert (tmp_path / "demo" / "grid.png").is_file() and (tmp_path / "demo" / "curves.png").is_file()


@pytest.mark.parametrize("flag, value", [([], "auto"), (["--channels-last"], True), (["--no-channels-last"], False)])
def test_train_memory_format_flags(monkeypatch, tmp_path, flag, value):
    seen = {}
    done = {"out": "r", "best_miou": 0.0, "iteration": 0, "last": "last.pt", "best": "best.pt"}
    monkeypatch.setattr(loop, "train", lambda cfg, **kw: seen.setdefault("cfg", cfg) and done)
    main(["train", "--recipe", "demo", "--out", str(tmp_path / "r"), *flag])
    assert seen["cfg"].channels_last == value


def test_listings_name_the_readers_options_and_model_variants(capsys):
    """``fcnseg data`` lists every reader with its options; ``fcnseg models`` the variants the datasets build."""
    from fcnseg.data import READERS
    assert main(["data"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines[:len(READERS)]] == list(READERS)
    listed = "\n".join(lines)
    for option in ("modality='color'", "task='semantic'", "classes=59", "sequences=None", "zero_is_class=False"):
        assert option in listed
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "fcn8s/vgg16" in out and "task=both" in out and "modality=color+depth" in out and "color+hha" in out
