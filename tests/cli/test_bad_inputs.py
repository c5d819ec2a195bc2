"""A catalog of bad inputs, one per case, across the commands: each ends in one line naming the file or value and
the documented exit status (2 for user errors, 1 when `fcnseg data check` finds problems) — never a traceback.

docs/bad-inputs.md holds the same catalog as a table; ``test_every_case_is_documented`` keeps the two in step.
Most cases run ``fcnseg.cli.main`` in-process (fast); a few run ``python -m fcnseg`` to prove the real process
prints no traceback."""
from __future__ import annotations

import errno
import io
import os
import pickle
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg import files
from fcnseg.cli import main
from fcnseg.data.synthetic import CLASSES, PALETTE
from fcnseg.errors import UserError
from fcnseg.train import loop, setup
from fcnseg.train.checkpoint import read_checkpoint
from fcnseg.train.config import resolve_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"
H, W = 48, 64


# ------------------------------------------------------------------------------------------------- fixtures
class Payload:
    """Unpickling this runs a shell command that creates a marker file: a loader that executes it is unsafe."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


SYNTHETIC_CONFIG = {"data": "synthetic", "val_split": "val", "data_options": {"size": [40, 48]},
                    "val_data_options": {"length": 2}}


def rgb(seed=0, size=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def labels(values=(0, 1, 2), size=(H, W), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.asarray(values, dtype=np.uint8), size)


def folder(root: Path, n=2, *, mask=None, image=None, classes=("bg", "cat", "dog")) -> Path:
    """A `folder` dataset of ``n`` samples; ``mask(i)`` / ``image(i)`` override what is written for sample i."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(rgb(i) if image is None else image(i)).save(root / "images" / f"s{i}.png")
        Image.fromarray(labels(seed=i) if mask is None else mask(i), mode="L").save(root / "masks" / f"s{i}.png")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return root


def cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture(scope="module")
def w(tmp_path_factory, make_checkpoint, photos) -> types.SimpleNamespace:
    """Every bad (and odd-but-fine) file the cases below use, made once."""
    d = tmp_path_factory.mktemp("bad")
    ns = types.SimpleNamespace(dir=d)
    ns.ckpt = make_checkpoint(d / "r18.pt", config=SYNTHETIC_CONFIG)
    ns.ckpt3 = make_checkpoint(d / "three-classes.pt", arch="fcn32s", classes=CLASSES[:3], palette=PALETTE[:3],
                               config=SYNTHETIC_CONFIG)
    ns.trunc_ckpt = d / "truncated.pt"
    ns.trunc_ckpt.write_bytes(ns.ckpt.read_bytes()[: ns.ckpt.stat().st_size // 2])
    ns.marker = d / "PAYLOAD-RAN"
    ns.evil_pickle = d / "evil-pickle.pt"
    with open(ns.evil_pickle, "wb") as f:
        pickle.dump({"model": Payload(ns.marker), "model_spec": {}}, f, protocol=2)
    ns.evil_zip = d / "evil-zip.pt"
    torch.save({"model": Payload(ns.marker), "model_spec": {}}, ns.evil_zip)
    ns.state_dict = d / "bare-state-dict.pt"
    torch.save({"weight": torch.zeros(3)}, ns.state_dict)
    ns.a_file = d / "a-regular-file"
    ns.a_file.write_text("not a folder")
    # images
    img = d / "img"
    img.mkdir()
    Image.fromarray(rgb(0)).save(img / "good.png")
    Image.fromarray(rgb(1)).save(img / "photo.jpg", quality=90)
    ns.trunc_png = cut(Path(_copy(img / "good.png", d / "truncated.png")))
    ns.trunc_jpg = cut(Path(_copy(img / "photo.jpg", d / "truncated.jpg")))
    ns.bomb = photos.png_bomb(d / "bomb.png", 12_000)
    ns.junk_png = d / "junk.png"
    ns.junk_png.write_bytes(b"this is not an image\n")
    ns.empty_png = d / "empty.png"
    ns.empty_png.write_bytes(b"")
    ns.dangling = d / "dangling.png"
    ns.dangling.symlink_to(d / "no-such-target.png")
    ns.empty_dir = d / "no-images-here"
    ns.empty_dir.mkdir()
    (ns.empty_dir / "notes.txt").write_text("x")
    odd = d / "odd"
    odd.mkdir()
    Image.fromarray(rgb(2)[..., 0]).save(odd / "gray.png")                                   # L
    Image.fromarray(np.dstack([rgb(3), np.full((H, W), 128, np.uint8)])).save(odd / "rgba.png")  # RGBA
    Image.fromarray((rgb(4)[..., 0].astype(np.uint16) * 257)).save(odd / "deep16.png")          # I;16
    Image.fromarray(rgb(5)).convert("CMYK").save(odd / "cmyk.jpg")                          # CMYK JPEG
    ns.odd = {p.stem: p for p in odd.iterdir()}
    # folder datasets: every sample bad in the same way (so training meets it in its first batch)
    f = d / "datasets"
    ns.f_good = folder(f / "good")
    ns.f_corrupt_image = folder(f / "corrupt-image")
    for p in (ns.f_corrupt_image / "images").iterdir():
        p.write_bytes(b"garbage")
    ns.f_trunc_image = folder(f / "truncated-image")
    for p in (ns.f_trunc_image / "images").iterdir():
        cut(p)
    ns.f_trunc_mask = folder(f / "truncated-mask")
    for p in (ns.f_trunc_mask / "masks").iterdir():
        cut(p, 0.3)
    ns.f_missing_mask = folder(f / "missing-mask")
    (ns.f_missing_mask / "masks" / "s1.png").unlink()
    ns.f_size = folder(f / "size-mismatch", mask=lambda i: labels(size=(H // 2, W)))
    ns.f_range = folder(f / "labels-out-of-range", mask=lambda i: labels((0, 1, 7), seed=i))
    ns.f_binary = folder(f / "binary-0-255", mask=lambda i: labels((0, 255), seed=i))
    ns.f_jpeg = folder(f / "jpeg-masks")
    for p in list((ns.f_jpeg / "masks").iterdir()):
        Image.open(p).save(p.with_suffix(".jpg"), quality=75)
        p.unlink()
    ns.f_empty = d / "datasets" / "empty"
    (ns.f_empty / "images").mkdir(parents=True)
    (ns.f_empty / "masks").mkdir()
    (ns.f_empty / "classes.txt").write_text("bg\nfg\n")
    ns.f_no_classes = folder(f / "no-classes")
    (ns.f_no_classes / "classes.txt").unlink()
    ns.f_colour = folder(f / "unmapped-colour", classes=("bg 0 0 0", "cat 255 0 0", "dog 0 255 0"))
    for p in (ns.f_colour / "masks").iterdir():
        Image.fromarray(np.full((H, W, 3), (0, 0, 255), np.uint8)).save(p)
    ns.f_odd = f / "odd-images"
    (ns.f_odd / "images").mkdir(parents=True)
    (ns.f_odd / "masks").mkdir()
    for stem, p in ns.odd.items():
        _copy(p, ns.f_odd / "images" / p.name)
        Image.fromarray(labels(), mode="L").save(ns.f_odd / "masks" / f"{stem}.png")
    (ns.f_odd / "classes.txt").write_text("bg\ncat\ndog\n")
    return ns


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def run_main(capsys, args: list[str]) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    """The single `fcnseg: error:` line of stderr (progress bars aside), and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in re.split(r"[\r\n]", err)
             if re.match(r"fcnseg( [a-z]+)*: (error: |data check found )", line)]
    assert len(lines) == 1, err
    return lines[0]


def train_args(root: Path, out: Path, *extra) -> list:
    return ["train", "--data", "folder", "--root", root, "--set", "train_split=all", "--set", "val_split=all",
            "--backbone", "resnet18", "--batch-size", "2", "--workers", "0", "--crop-size", "32", "--amp", "none",
            "--max-iters", "1", "--val-every", "100", "--out", out, *extra]


# ---------------------------------------------------------------------------------------------------- the catalog
@dataclass
class Case:
    id: str
    command: str
    args: Callable  # (w, tmp_path) -> argv
    expect: Callable | str  # substring, or (w, tmp_path) -> substring naming the file / value
    status: int = 2


CASES = [
    # predict
    Case("missing image", "predict", lambda w, t: ["predict", w.ckpt, w.dir / "nope.png", "--out", t],
         lambda w, t: f"no such file, folder or matching glob: {w.dir / 'nope.png'}"),
    Case("dangling symlink as image", "predict", lambda w, t: ["predict", w.ckpt, w.dangling, "--out", t],
         lambda w, t: f"no such file, folder or matching glob: {w.dangling}"),
    Case("folder without images", "predict", lambda w, t: ["predict", w.ckpt, w.empty_dir, "--out", t],
         lambda w, t: f"no images found in {w.empty_dir}"),
    Case("corrupt image (not an image)", "predict", lambda w, t: ["predict", w.ckpt, w.junk_png, "--out", t],
         lambda w, t: f"cannot read image {w.junk_png}: UnidentifiedImageError"),
    Case("empty image file", "predict", lambda w, t: ["predict", w.ckpt, w.empty_png, "--out", t],
         lambda w, t: f"cannot read image {w.empty_png}"),
    Case("truncated PNG", "predict", lambda w, t: ["predict", w.ckpt, w.trunc_png, "--out", t],
         lambda w, t: f"cannot read image {w.trunc_png}: OSError: image file is truncated"),
    Case("truncated JPEG", "predict", lambda w, t: ["predict", w.ckpt, w.trunc_jpg, "--out", t],
         lambda w, t: f"cannot read image {w.trunc_jpg}: OSError: image file is truncated"),
    Case("decompression bomb", "predict", lambda w, t: ["predict", w.ckpt, w.bomb, "--out", t],
         lambda w, t: f"image {w.bomb} is 12000×12000 = 144,000,000 pixels, over the limit of 100,000,000"),
    Case("image over --max-pixels", "predict",
         lambda w, t: ["predict", w.ckpt, w.odd["gray"], "--out", t, "--max-pixels", "100"],
         lambda w, t: f"image {w.odd['gray']} is {W}×{H} = {W * H:,} pixels, over the limit of 100 (a "
                      f"decompression-bomb guard); if you trust the file, raise it with --max-pixels {W * H}"),
    Case("output folder is a file", "predict",
         lambda w, t: ["predict", w.ckpt, w.odd["gray"], "--out", w.a_file / "sub"],
         lambda w, t: f"cannot write to output folder {w.a_file / 'sub'}: Not a directory"),
    Case("truncated checkpoint (predict)", "predict",
         lambda w, t: ["predict", w.trunc_ckpt, w.odd["gray"], "--out", t],
         lambda w, t: f"cannot read {w.trunc_ckpt}: PytorchStreamReader failed reading zip archive"),
    Case("missing --out", "predict", lambda w, t: ["predict", w.ckpt, w.junk_png],
         "the following arguments are required: --out"),
    # evaluate
    Case("missing checkpoint", "evaluate", lambda w, t: ["evaluate", w.dir / "none.pt"],
         lambda w, t: f"weight file not found: {w.dir / 'none.pt'}"),
    Case("truncated checkpoint (evaluate)", "evaluate", lambda w, t: ["evaluate", w.trunc_ckpt],
         lambda w, t: f"cannot read {w.trunc_ckpt}: PytorchStreamReader failed reading zip archive"),
    Case("pickle with executable payload", "evaluate", lambda w, t: ["evaluate", w.evil_pickle],
         lambda w, t: f"refusing to load {w.evil_pickle}: it contains objects other than tensors"),
    Case("torch zip with executable payload", "evaluate", lambda w, t: ["evaluate", w.evil_zip],
         lambda w, t: f"refusing to load {w.evil_zip}: it contains objects other than tensors"),
    Case("state dict instead of a checkpoint", "evaluate", lambda w, t: ["evaluate", w.state_dict],
         lambda w, t: f"{w.state_dict} is not an fcnseg checkpoint"),
    Case("dataset with more classes than the checkpoint", "evaluate",
         lambda w, t: ["evaluate", w.ckpt3, "--data", "synthetic", "--split", "val", "--max-images", "1"],
         lambda w, t: f"synthetic has 7 classes but {w.ckpt3} predicts 3"),
    Case("unknown split", "evaluate", lambda w, t: ["evaluate", w.ckpt, "--split", "holdout"],
         "synthetic has no split 'holdout'"),
    Case("evaluate output under a file", "evaluate",
         lambda w, t: ["evaluate", w.ckpt, "--max-images", "1", "--out", w.a_file / "eval"],
         lambda w, t: f"cannot write {w.a_file / 'eval' / 'metrics.json'}: Not a directory"),
    Case("empty split", "evaluate", lambda w, t: ["evaluate", w.ckpt, "--data", "folder", "--root", w.f_empty,
                                                 "--split", "all"],
         lambda w, t: f"folder split 'all' is empty: no samples found under {w.f_empty / 'images'}"),
    # train
    Case("unknown recipe", "train", lambda w, t: ["train", "--recipe", "nope"], "unknown recipe 'nope'; valid: demo"),
    Case("unknown backbone", "train", lambda w, t: ["train", "--recipe", "demo", "--backbone", "resnet5",
                                                    "--out", t], "unknown model fcn8s/resnet5"),
    Case("unknown dataset", "train", lambda w, t: ["train", "--data", "nodata", "--out", t],
         "unknown dataset 'nodata'; valid: synthetic"),
    Case("run folder under a file", "train", lambda w, t: ["train", "--data", "synthetic", "--out", w.a_file / "run"],
         lambda w, t: f"cannot write to output folder {w.a_file / 'run'}: Not a directory"),
    Case("truncated checkpoint (--resume)", "train",
         lambda w, t: ["train", "--data", "synthetic", "--resume", w.trunc_ckpt, "--out", t],
         lambda w, t: f"cannot read {w.trunc_ckpt}: PytorchStreamReader"),
    Case("truncated checkpoint (--init-from)", "train",
         lambda w, t: train_args(w.f_good, t, "--init-from", w.trunc_ckpt),
         lambda w, t: f"cannot read {w.trunc_ckpt}: PytorchStreamReader"),
    Case("pickle payload (--init-from)", "train", lambda w, t: train_args(w.f_good, t, "--init-from", w.evil_pickle),
         lambda w, t: f"refusing to load {w.evil_pickle}"),
    Case("checkpoint of another backbone (--init-from)", "train",
         lambda w, t: train_args(w.f_good, t, "--init-from", w.ckpt, "--backbone", "vgg16"),
         lambda w, t: f"{w.ckpt}: none of its backbone tensors fit this model, e.g. layer backbone.body.conv1.weight"),
    Case("corrupt image (train)", "train", lambda w, t: train_args(w.f_corrupt_image, t),
         lambda w, t: f"cannot read image {w.f_corrupt_image / 'images'}"),
    Case("corrupt image, 2 DataLoader workers", "train",
         lambda w, t: train_args(w.f_corrupt_image, t, "--workers", "2"),
         lambda w, t: f"fcnseg: error: cannot read image {w.f_corrupt_image / 'images'}"),
    Case("truncated mask (train)", "train", lambda w, t: train_args(w.f_trunc_mask, t),
         lambda w, t: f"cannot read mask {w.f_trunc_mask / 'masks'}"),
    Case("missing mask (train)", "train", lambda w, t: train_args(w.f_missing_mask, t),
         lambda w, t: f"have no mask with the same stem in {w.f_missing_mask / 'masks'}, e.g. s1.png"),
    Case("mask size mismatch (train)", "train", lambda w, t: train_args(w.f_size, t),
         lambda w, t: f"but image {w.f_size / 'images'}"),
    Case("labels out of range (train)", "train", lambda w, t: train_args(w.f_range, t),
         lambda w, t: f"label 7 is outside [0, 3) and not the ignore index 255 in batch {w.f_range / 'images'}"),
    Case("empty split (train)", "train", lambda w, t: train_args(w.f_empty, t),
         "folder split 'all' is empty"),
    Case("no classes.txt", "train", lambda w, t: train_args(w.f_no_classes, t),
         lambda w, t: f"no classes.txt or class_names.txt in {w.f_no_classes}"),
    Case("bad --set", "train", lambda w, t: ["train", "--recipe", "demo", "--set", "lr"],
         "--set expects KEY=VALUE, got 'lr'"),
    # data check (exit 1, one problem line per sample naming the file)
    Case("corrupt image (data check)", "data check", lambda w, t: ["data", "check", "folder", "--root",
                                                                   w.f_corrupt_image],
         lambda w, t: f"cannot read image {w.f_corrupt_image / 'images' / 's0.png'}", 1),
    Case("truncated image (data check)", "data check",
         lambda w, t: ["data", "check", "folder", "--root", w.f_trunc_image],
         lambda w, t: f"cannot read image {w.f_trunc_image / 'images' / 's0.png'}: OSError", 1),
    Case("truncated mask (data check)", "data check",
         lambda w, t: ["data", "check", "folder", "--root", w.f_trunc_mask],
         lambda w, t: f"cannot read mask {w.f_trunc_mask / 'masks' / 's0.png'}", 1),
    Case("missing mask (data check)", "data check",
         lambda w, t: ["data", "check", "folder", "--root", w.f_missing_mask],
         "1 image(s) in", 1),
    Case("mask size mismatch (data check)", "data check", lambda w, t: ["data", "check", "folder", "--root", w.f_size],
         lambda w, t: f"size mismatch: image {w.f_size / 'images' / 's0.png'} is 64x48 but mask "
                      f"{w.f_size / 'masks' / 's0.png'} is 64x24 (W×H)", 1),
    Case("labels out of range (data check)", "data check",
         lambda w, t: ["data", "check", "folder", "--root", w.f_range],
         lambda w, t: f"{w.f_range / 'masks' / 's0.png'}: label values outside 0..2 and ignore 255: 7 at", 1),
    Case("{0,255}-only masks", "data check", lambda w, t: ["data", "check", "folder", "--root", w.f_binary],
         lambda w, t: f"{w.f_binary / 'masks' / 's0.png'}: mask holds only the values 0 and 255", 1),
    Case("JPEG masks", "data check", lambda w, t: ["data", "check", "folder", "--root", w.f_jpeg],
         lambda w, t: f"{w.f_jpeg / 'masks' / 's0.jpg'}: mask is a JPEG", 1),
    Case("empty split (data check)", "data check", lambda w, t: ["data", "check", "folder", "--root", w.f_empty],
         "folder split 'all' is empty", 1),
    Case("colour not in classes.txt", "data check", lambda w, t: ["data", "check", "folder", "--root", w.f_colour],
         lambda w, t: f"mask {w.f_colour / 'masks' / 's0.png'} has colour(s) not in the colour table of "
                      f"classes.txt: (0, 0, 255)", 1),
    Case("missing dataset root", "data check", lambda w, t: ["data", "check", "folder", "--root", w.dir / "absent"],
         lambda w, t: f"folder dataset root not found: {w.dir / 'absent'}", 1),
    # serve
    Case("missing model (serve)", "serve", lambda w, t: ["serve", w.dir / "none.pt"],
         lambda w, t: f"model file not found: {w.dir / 'none.pt'}"),
    Case("truncated checkpoint (serve)", "serve", lambda w, t: ["serve", w.trunc_ckpt, "--port", "1"],
         lambda w, t: f"cannot read {w.trunc_ckpt}"),
    Case("port out of range (serve)", "serve", lambda w, t: ["serve", w.ckpt, "--port", "70000"],
         "--port must be 1-65535, got 70000"),
]


def _expect(case: Case, w, t) -> str:
    return case.expect(w, t) if callable(case.expect) else case.expect


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_with_exit_status(case, w, tmp_path, capsys):
    if case.command == "serve":
        pytest.importorskip("uvicorn")
    rc, out, err = run_main(capsys, case.args(w, tmp_path / "out"))
    assert rc == case.status, (out, err)
    expect = _expect(case, w, tmp_path / "out")
    line = one_error_line(err)
    if case.status == 1:  # data check: the problems on stdout, one summary line on stderr
        assert expect in out, out
        assert re.fullmatch(r"fcnseg: data check found \d+ problem\(s\)", line), err
    else:
        assert line.startswith("fcnseg: error: ") or line.startswith("fcnseg ") and "error:" in line, err
        assert expect in line, err
    assert not w.marker.exists(), "a payload was unpickled and executed"


def test_predict_names_each_unreadable_input(w, tmp_path, capsys):
    """Several bad inputs among good ones: the good ones are written, each bad one is listed by name, exit 2."""
    rc, out, err = run_main(capsys, ["predict", w.ckpt, w.junk_png, w.trunc_png, w.odd["gray"], "--out", tmp_path])
    assert rc == 2
    assert f"skipped: cannot read image {w.junk_png}" in err and f"skipped: cannot read image {w.trunc_png}" in err
    assert "2 of 3 inputs could not be read" in one_error_line(err)
    assert (tmp_path / "gray.png").is_file() and not (tmp_path / "junk.png").exists()


@pytest.mark.parametrize("stem, mode", [("gray", "L"), ("rgba", "RGBA"), ("deep16", "I;16"), ("cmyk", "CMYK")])
def test_odd_image_modes_are_converted(stem, mode, w, tmp_path, capsys):
    src = w.odd[stem]
    assert Image.open(src).mode == mode  # the fixture really is that kind of file
    rc, out, err = run_main(capsys, ["predict", w.ckpt, src, "--out", tmp_path])
    assert rc == 0, err
    pred = Image.open(tmp_path / f"{stem}.png")
    assert pred.mode == "P" and pred.size == (W, H)
    assert np.asarray(pred).max() < 7
    image = fcnseg.data.io.read_image(src)
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, H, W)
    if stem == "deep16":  # 16-bit values are rescaled to 8 bit (÷ 257), not clipped to white
        assert torch.equal(image[0], torch.from_numpy(rgb(4)[..., 0]))


def test_16_bit_images_keep_their_brightness_relative_to_each_other(tmp_path):
    """A fixed 16 → 8 bit rule: a dark 16-bit image stays dark (scaling by each image's own maximum stretched it to
    white, so brightness differed between the images of one dataset), for files and for the web demo's uploads."""
    from fcnseg.serve import decode_image
    dark = np.tile(np.linspace(0, 2570, W).astype(np.uint16), (H, 1))  # 2570 = 10 × 257
    Image.fromarray(dark).save(tmp_path / "dark.png")
    assert Image.open(tmp_path / "dark.png").mode == "I;16"
    expected = torch.from_numpy((dark / 257.0).round().astype(np.uint8))
    for image in (fcnseg.data.io.read_image(tmp_path / "dark.png"),
                  decode_image((tmp_path / "dark.png").read_bytes(), "dark.png")):
        assert int(image.max()) == 10 and all(torch.equal(c, expected) for c in image)
    floats = Image.fromarray(np.full((H, W), 0.5, np.float32))
    assert np.asarray(fcnseg.data.io.to_8bit(floats)).max() == 128  # floats in 0…1 are fractions of white


def test_odd_image_modes_pass_data_check_and_load(w, capsys):
    rc, out, err = run_main(capsys, ["data", "check", "folder", "--root", w.f_odd])
    assert rc == 0, out + err
    ds = fcnseg.data.get_dataset("folder", w.f_odd, "all")
    for i in range(len(ds)):
        image, mask = ds[i]
        assert tuple(image.shape) == (3, H, W) and tuple(mask.shape) == (H, W)


# ------------------------------------------------------------------------------------- weights (library API)
def test_other_backbone_via_load_weights_names_the_layer(w):
    for backbone in ("resnet50", "vgg16"):  # shape clash / no shared layer names: both must fail loudly
        model = fcnseg.build_model("fcn8s", backbone=backbone, num_classes=7)
        with pytest.raises(UserError, match=r"r18\.pt: .*layer backbone\.body\.") as e:
            fcnseg.load_weights(model, w.ckpt)
        assert "\n" not in str(e.value)


def test_num_classes_mismatch_with_strict_classes(w, caplog):
    model = fcnseg.build_model("fcn8s", backbone="resnet18", num_classes=5)
    with pytest.raises(UserError, match=r"layer score_fr\.weight has shape \(7, 512, 1, 1\) but the model expects "
                                        r"\(5, 512, 1, 1\)"):
        fcnseg.load_weights(model, w.ckpt, strict_classes=True)
    report = fcnseg.load_weights(model, w.ckpt)  # the default re-initialises the head, and says so
    assert {"score_fr", "score_pool3", "score_pool4"} <= set(report["reinitialized"])


@pytest.mark.parametrize("which", ["evil_pickle", "evil_zip"])
def test_pickle_payload_is_never_executed(which, w):
    path = getattr(w, which)
    model = fcnseg.build_model("fcn8s", backbone="resnet18", num_classes=7)
    with pytest.raises(UserError, match="refusing to load .*GLOBAL posix.system"):
        fcnseg.load_weights(model, path)
    with pytest.raises(UserError, match="refusing to load"):
        read_checkpoint(path)
    assert not w.marker.exists()
    # and the payload is real: an unsafe loader would have run it
    if which == "evil_pickle":
        with open(path, "rb") as f:
            pickle.load(f)  # noqa: S301 - deliberately, to prove the fixture is live
        assert w.marker.exists()
        w.marker.unlink()


# ---------------------------------------------------------------------------------------- training failures
def _wrap_model(monkeypatch, forward_factory):
    real = setup.build_model

    def build(*a, **k):
        model = real(*a, **k)
        model.forward = forward_factory(model.forward)
        return model

    monkeypatch.setattr(setup, "build_model", build)


def test_nan_loss_names_iteration_and_files(w, tmp_path, monkeypatch, capsys):
    def nan_from_third_call(forward):
        calls = [0]

        def fwd(x):
            calls[0] += 1
            out = forward(x)
            return out * float("nan") if calls[0] >= 3 else out
        return fwd

    _wrap_model(monkeypatch, nan_from_third_call)
    rc, out, err = run_main(capsys, train_args(w.f_good, tmp_path / "run", "--max-iters", "5"))
    assert rc == 2
    line = one_error_line(err)
    assert "loss is nan at iteration 3 on batch " in line, line
    for i in (0, 1):  # both samples of the batch, image and mask
        assert str(w.f_good / "images" / f"s{i}.png") in line and str(w.f_good / "masks" / f"s{i}.png") in line
    assert "lower --lr" in line


def test_an_unannotated_image_does_not_stop_training(tmp_path, capsys):
    """s0's mask is all void: with batch 1 one step sees no labelled pixel, which must not end as a NaN loss."""
    root = folder(tmp_path / "data", mask=lambda i: labels((255,)) if i == 0 else labels(seed=i))
    rc, out, err = run_main(capsys, train_args(root, tmp_path / "run", "--batch-size", "1", "--crop-size", "64",
                                               "--max-iters", "2"))
    assert rc == 0, err
    assert (tmp_path / "run" / "last.pt").is_file()


def test_batch_norm_of_one_value_per_channel_is_a_user_error(w, tmp_path, capsys):
    """Batch 1 and a 32-pixel crop leave ResNet's stride-32 features 1×1: BatchNorm cannot train on that."""
    rc, out, err = run_main(capsys, train_args(w.f_good, tmp_path / "run", "--batch-size", "1"))
    assert rc == 2
    line = one_error_line(err)
    assert "batch 1 with crop" in line and "--batch-size 2" in line, line


def test_out_of_memory_suggests_smaller_batch_crop_or_autocast(w, tmp_path, monkeypatch, capsys):
    def oom(forward):
        def fwd(x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return fwd

    _wrap_model(monkeypatch, oom)
    rc, out, err = run_main(capsys, train_args(w.f_good, tmp_path / "run"))
    assert rc == 2
    line = one_error_line(err)
    assert "out of memory at iteration 1 (batch 2, crop 32)" in line
    assert "--batch-size" in line and "crop size" in line and "--amp bf16/fp16" in line


@pytest.mark.parametrize("where", ["torch.save", "fsync", "os.replace"])
def test_disk_full_while_checkpointing_keeps_previous_checkpoint(where, tmp_path, monkeypatch, capsys):
    """Iteration 1 checkpoints fine; at iteration 2 the disk is full: one line, last.pt still holds iteration 1."""
    run = tmp_path / "run"
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_save, real_fsync, real_replace = torch.save, os.fsync, os.replace
    state = {"iteration": 0}

    def save(obj, f, *a, **k):
        state["iteration"] = obj.get("iteration", 0) if isinstance(obj, dict) else 0
        if where == "torch.save" and state["iteration"] >= 2:
            f.write(b"PK\x03\x04 partial")  # some bytes reach the disk before it fills up
            raise enospc
        return real_save(obj, f, *a, **k)

    def fsync(fd):
        if where == "fsync" and state["iteration"] >= 2:
            raise enospc
        return real_fsync(fd)

    def replace(src, dst):
        if where == "os.replace" and state["iteration"] >= 2 and str(dst).endswith(".pt"):
            raise enospc
        return real_replace(src, dst)

    monkeypatch.setattr(files.torch, "save", save)
    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    rc, out, err = run_main(capsys, ["train", "--data", "synthetic", "--backbone", "resnet18", "--arch", "fcn32s",
                                     "--batch-size", "2", "--workers", "0", "--crop-size", "32", "--amp", "none",
                                     "--set", "data_options={length: 4, size: [40, 48]}",
                                     "--set", "val_data_options={length: 1}", "--val-every", "1",
                                     "--max-iters", "3", "--out", run])
    monkeypatch.undo()
    assert rc == 2
    line = one_error_line(err)
    assert f"cannot write {run / 'last.pt'}: No space left on device" in line, line
    ckpt = read_checkpoint(run / "last.pt")  # the previous one, intact
    assert ckpt["iteration"] == 1
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


def test_stale_temporary_checkpoints_are_removed_on_resume(tmp_path):
    """A process killed while checkpointing leaves `.last.pt.tmpPID`; the next run removes it and ignores it."""
    run = tmp_path / "run"
    cfg = dict(data="synthetic", backbone="resnet18", arch="fcn32s", batch_size=2, workers=0, crop_size=32, amp="none",
               data_options={"length": 4, "size": [40, 48]}, val_data_options={"length": 1}, val_every=1,
               pretrained_backbone=None, out=str(run))
    loop.train(resolve_config(None, None, {**cfg, "max_iters": 1}), progress=False)
    stale = run / ".last.pt.tmp99999"
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    loop.train(resolve_config(None, None, {**cfg, "max_iters": 2, "resume": "auto"}), progress=False)
    assert read_checkpoint(run / "last.pt")["iteration"] == 2
    assert not stale.exists()


# ---------------------------------------------------------------------------------------------- serve uploads
@pytest.fixture(scope="module")
def client(w):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient
    from fcnseg.serve import create_app
    with TestClient(create_app(w.ckpt, max_upload_mb=0.25, amp="none", device="cpu")) as c:
        yield c


def _png(seed=0, size=(H, W)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb(seed, size)).save(buf, format="PNG")
    return buf.getvalue()


SERVE_CASES = [  # id, filename, content, status, message excerpt
    ("non-image upload", "notes.txt", b"hello, not an image", 415, "notes.txt is not a supported image"),
    ("image extension, text content", "photo.png", b"<html>surprise</html>", 415, "photo.png is not a supported"),
    ("truncated PNG upload", "cut.png", _png()[:200], 400,
     "cannot read image cut.png: OSError: image file is truncated"),
    ("decompression bomb upload", "bomb.png", lambda photos: photos.png_bomb(None, 12_000), 413,
     "image bomb.png is 12000×12000 = 144,000,000 pixels, over the limit of 40,000,000"),
    ("empty upload", "empty.png", b"", 400, "empty.png is empty"),
    ("oversized upload", "big.png", b"\x89PNG\r\n\x1a\n" + os.urandom(600_000), 413, "upload too large: the limit is"),
    ("path traversal in a non-image's name", "../../../../etc/passwd", b"root:x:0:0", 415,
     "passwd is not a supported image"),
]


@pytest.mark.parametrize("case", SERVE_CASES, ids=[c[0] for c in SERVE_CASES])
def test_serve_rejects_bad_uploads_with_json_error(case, client, photos):
    _, filename, content, status, message = case
    content = content(photos) if callable(content) else content
    r = client.post("/segment", files={"file": (filename, content, "application/octet-stream")})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert message in r.json()["error"]
    assert ".." not in r.json()["error"] and "/etc" not in r.json()["error"]
    assert client.get("/healthz").json()["status"] == "ok"


def test_serve_path_traversal_filename_is_only_echoed_sanitised(client, w, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = {p for p in w.dir.rglob("*")}
    name = "../" * 6 + "tmp/evil/../../x.png"
    r = client.post("/segment", files={"file": (name, _png(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == "x.png" and body["download_name"] == "x_mask.png"
    assert (body["width"], body["height"]) == (W, H)
    assert not list(tmp_path.iterdir()) and {p for p in w.dir.rglob("*")} == before  # nothing written anywhere


def test_serve_missing_file_field(client):
    r = client.post("/segment", files={"image": ("a.png", _png(), "image/png")})  # the wrong field name
    assert r.status_code == 400 and "no file" in r.json()["error"]


# ---------------------------------------------------------------------------------- real processes, and docs
@pytest.mark.parametrize("case_id", ["pickle with executable payload", "truncated checkpoint (--resume)",
                                     "corrupt image, 2 DataLoader workers", "output folder is a file",
                                     "truncated image (data check)"])
def test_real_process_prints_no_traceback(case_id, w, tmp_path, run_cli):
    case = next(c for c in CASES if c.id == case_id)
    r = run_cli(*case.args(w, tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == case.status, r.stderr
    assert "Traceback" not in r.stderr
    line = one_error_line(r.stderr)
    assert _expect(case, w, tmp_path / "out") in (line if case.status == 2 else r.stdout)
    assert not w.marker.exists()


def test_every_case_is_documented():
    text = DOC.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    documented = {line.split("|")[1].strip() for line in rows}
    missing = [c.id for c in CASES] + [c[0] for c in SERVE_CASES]
    missing = [c for c in missing if c not in documented]
    assert not missing, f"add these cases to {DOC}: {missing}"
    assert len(rows) >= 30
