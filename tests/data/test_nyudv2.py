"""NYUDv2 as the FCN authors read it: a fixture in their layout (img_NNNN names, uint16 millimetre depth PNGs, uint8
HHA, ``segmentation`` .mat labels 0..40, id lists), every modality, the input normalisation against the formulas of
their nyud_layers.py, augmentation, early and late fusion models, checkpoints, and train → evaluate on the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import fcnseg
from fcnseg.cli import main
from fcnseg.data import get_dataset
from fcnseg.data.check import check_split
from fcnseg.data.nyudv2 import CLASSES, MEAN_HHA, MEAN_LOG_DEPTH
from fcnseg.data.stats import class_stats
from fcnseg.data.transforms import ColorJitterRGB, build_transforms
from fcnseg.errors import UserError
from fcnseg.models.fusion import LateFusion, widen_input
from fcnseg.normalization import CAFFE_BGR, IMAGENET
from fcnseg.train.setup import scope_parameters

H, W = 24, 32
SPLITS = {"train": ["5003", "5004", "5005", "5006"], "val": ["5010", "5011"], "test": ["5001", "5002"]}


def write_sample(root: Path, i: str, size=(H, W)) -> dict:
    """One frame as the authors store it; returns the arrays written."""
    rng = np.random.default_rng(int(i))
    arrays = {"rgb": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
              "depth": rng.integers(500, 10000, size).astype(np.uint16),  # millimetres
              "hha": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
              "seg": rng.integers(0, 41, size).astype(np.uint8)}
    arrays["seg"].flat[:2] = (0, 40)  # void and the last class in every frame
    for folder in ("data/images", "data/depth", "data/hha", "segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(arrays["rgb"]).save(root / f"data/images/img_{i}.png")
    Image.fromarray(arrays["depth"]).save(root / f"data/depth/img_{i}.png")
    Image.fromarray(arrays["hha"]).save(root / f"data/hha/img_{i}.png")
    scipy.io.savemat(root / f"segmentation/img_{i}.mat", {"segmentation": arrays["seg"]})
    return arrays


@pytest.fixture(scope="module")
def nyud(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nyud")
    for split, ids in SPLITS.items():
        (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            write_sample(root, i)
    return root


@pytest.fixture
def one_thread():
    """Two compute threads on a busy two-core machine spin against each other (measured: 10× slower steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fixture_is_in_the_authors_format(nyud):
    with Image.open(nyud / "data/depth/img_5003.png") as im:
        assert im.mode == "I;16" and np.asarray(im).dtype == np.uint16
    with Image.open(nyud / "data/hha/img_5003.png") as im:
        assert im.mode == "RGB"
    seg = scipy.io.loadmat(nyud / "segmentation/img_5003.mat")["segmentation"]
    assert seg.dtype == np.uint8 and seg.min() == 0 and seg.max() == 40
    assert (nyud / "train.txt").read_text().splitlines()[0] == "5003"


@pytest.mark.parametrize("modality, channels, streams, dtype", [
    ("color", 3, 1, torch.uint8), ("depth", 1, 1, torch.float32), ("hha", 3, 1, torch.uint8),
    ("color+depth", 4, 1, torch.float32), ("color+hha", 6, 2, torch.uint8)])
def test_each_modality_reads_its_files(nyud, modality, channels, streams, dtype):
    ds = get_dataset("nyudv2", nyud, "train", modality=modality)
    assert (ds.num_classes, ds.in_channels, ds.streams, len(ds)) == (40, channels, streams, 4)
    image, mask = ds[1]
    assert image.dtype == dtype and tuple(image.shape) == (channels, H, W) and mask.dtype == torch.int64
    a = write_sample(nyud.parent / "copy", "5004")  # the same seed: the arrays written for sample 5004
    expected = {"color": [a["rgb"].transpose(2, 0, 1)], "depth": [a["depth"][None]],
                "hha": [a["hha"].transpose(2, 0, 1)]}
    want = np.concatenate([x.astype(np.float32) for part in modality.split("+") for x in expected[part]])
    assert np.array_equal(image.numpy().astype(np.float32), want)  # millimetres, unscaled


def test_void_is_ignored_and_classes_shift_down(nyud):
    ds = get_dataset("nyudv2", nyud, "val")
    _, mask = ds[0]
    raw = scipy.io.loadmat(nyud / "segmentation/img_5010.mat")["segmentation"].astype(np.int64)
    assert np.array_equal(mask.numpy(), np.where(raw == 0, 255, raw - 1))
    assert mask.numpy().flat[0] == 255 and mask.numpy().flat[1] == 39
    assert ds.classes[0] == "wall" and ds.classes[39] == "otherprop" and len(CLASSES) == 40


def test_classes_are_those_of_the_authors_released_weights():
    from fcnseg.weights.registry import NYUD_40
    assert tuple(CLASSES) == NYUD_40


def test_splits_and_errors(nyud, tmp_path):
    assert [get_dataset("nyudv2", nyud, s).ids for s in ("trainval", "test")] == [
        SPLITS["train"] + SPLITS["val"], SPLITS["test"]]
    with pytest.raises(UserError, match="unknown nyudv2 split 'dev'; valid: train, val, trainval, test"):
        get_dataset("nyudv2", nyud, "dev")
    with pytest.raises(UserError, match="unknown nyudv2 modality 'rgbd'; valid: color, depth, hha"):
        get_dataset("nyudv2", nyud, "train", modality="rgbd")
    write_sample(tmp_path, "5003")
    with pytest.raises(UserError, match=r"split list not found: .*train\.txt"):
        get_dataset("nyudv2", tmp_path, "train")
    (tmp_path / "train.txt").write_text("5003\n5099\n")
    with pytest.raises(UserError, match=r"file not found: .*segmentation/img_5099\.mat"):
        get_dataset("nyudv2", tmp_path, "train")[1]
    write_sample(tmp_path, "5099")
    (tmp_path / "data/hha/img_5099.png").unlink()
    with pytest.raises(UserError, match=r"image not found: .*data/hha/img_5099\.png"):
        get_dataset("nyudv2", tmp_path, "train", modality="color+hha")[1]
    write_sample(tmp_path, "5099", size=(H, W + 1))
    with pytest.raises(UserError, match=r"img_5099\.png is 33x24 but its labels .*img_5099\.mat are 32x24"):
        scipy.io.savemat(tmp_path / "segmentation/img_5099.mat", {"segmentation": np.zeros((H, W), np.uint8)})
        get_dataset("nyudv2", tmp_path, "train", modality="color")[1]
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "data/depth/img_5003.png")
    with pytest.raises(UserError, match=r"depth image .*img_5003\.png has mode L; save depth as a 16-bit"):
        get_dataset("nyudv2", tmp_path, "train", modality="depth")[0]


def test_normalization_follows_the_authors_data_layer(nyud):
    """nyud_layers.py: colour BGR minus a mean pixel, HHA minus its mean (as stored), log(depth) minus 7.844."""
    a = write_sample(nyud.parent / "copy", "5003")
    rgb, hha, depth = (torch.from_numpy(a[k]).float() for k in ("rgb", "hha", "depth"))
    bgr = rgb.numpy()[:, :, ::-1] - np.array(CAFFE_BGR.mean, np.float32)
    for modality, parts in (("color+depth", [bgr, np.log(depth.numpy())[..., None] - MEAN_LOG_DEPTH]),
                            ("color+hha", [bgr, hha.numpy() - np.array(MEAN_HHA, np.float32)]),
                            ("hha", [hha.numpy() - np.array(MEAN_HHA, np.float32)])):
        ds = get_dataset("nyudv2", nyud, "train", modality=modality)
        norm = ds.input_normalization(CAFFE_BGR)
        assert ds.input_normalization(norm) is norm  # made for this input already: kept
        got = norm(ds[0][0][None])[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got, np.concatenate(parts, -1), rtol=1e-5, atol=1e-4)
    ds = get_dataset("nyudv2", nyud, "train", modality="color+hha")
    got = ds.input_normalization(IMAGENET)(ds[0][0][None])[0, 3:].permute(1, 2, 0).numpy()
    want = (hha.numpy() - np.array(MEAN_HHA, np.float32)) / 255 / np.array(IMAGENET.std, np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # scaled as the weights' RGB, centred on HHA's mean
    with pytest.raises(UserError, match="the model takes 6-channel input .* but got 3 channels"):
        ds.input_normalization(IMAGENET)(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_colour_jitter_touches_only_rgb(nyud):
    jitter = build_transforms(True, scale_range=None, hflip=False, color_jitter=0.5)
    for modality in ("color+depth", "color+hha"):
        image, mask = get_dataset("nyudv2", nyud, "train", modality=modality)[0]
        torch.manual_seed(0)
        out, out_mask = jitter(image, mask)
        assert out.dtype == image.dtype and torch.equal(out_mask, mask)
        assert torch.equal(out[3:], image[3:])  # depth / HHA untouched
        assert not torch.equal(out[:3], image[:3])
    assert build_transforms(True, scale_range=None, hflip=False, color_jitter=0.5, color_channels=0) is None


def test_geometric_augmentation_moves_every_channel_alike(nyud):
    tf = build_transforms(True, crop_size=16, scale_range=(0.7, 1.6), hflip=True)
    for modality, split in (("color+hha", [(0, 3, "color"), (3, 6, "hha")]), ("color+depth", [(3, 4, "depth")])):
        image, mask = get_dataset("nyudv2", nyud, "train", modality=modality)[2]
        for seed in range(3):
            torch.manual_seed(seed)
            out, out_mask = tf(image, mask)
            for lo, hi, part in split:  # each part alone, under the same random draws
                alone, alone_mask = get_dataset("nyudv2", nyud, "train", modality=part)[2]
                torch.manual_seed(seed)
                ref, ref_mask = tf(alone, alone_mask)
                assert torch.equal(out[lo:hi], ref) and torch.equal(out_mask, ref_mask), (modality, part, seed)


def test_training_wires_the_modality_into_transforms_and_model(nyud):
    from fcnseg.train.config import resolve_config
    from fcnseg.train.setup import build_datasets, build_training_model
    for modality, jittered in (("color+hha", True), ("hha", False)):
        cfg = resolve_config(None, None, {"data": "nyudv2", "root": str(nyud), "color_jitter": 0.3,
                                          "data_options": {"modality": modality}, "workers": 0})
        train_ds, _ = build_datasets(cfg, main=False, progress=False)
        ops = train_ds.transforms.transforms if train_ds.transforms else []
        assert any(isinstance(t, ColorJitterRGB) for t in ops) == jittered
    cfg = resolve_config(None, None, {"data": "nyudv2", "root": str(nyud), "arch": "fcn32s", "backbone": "resnet18",
                                      "data_options": {"modality": "color+depth"}})
    ds = get_dataset("nyudv2", nyud, "train", modality="color+depth")
    model = build_training_model(cfg, 40, None, data=ds)
    assert model.in_channels == 4 and model.normalization.log_channels == (3,)
    assert model.normalization.name == "imagenet+nyudv2-color+depth"


def test_data_check_and_stats(nyud, tmp_path, capsys):
    for modality in ("color", "color+depth", "color+hha"):
        assert check_split("nyudv2", nyud, "train", progress=False, modality=modality) == []
    assert main(["data", "check", "nyudv2", "--root", nyud, "--option", "modality=color+hha"]) == 0
    stats = class_stats(get_dataset("nyudv2", nyud, "train"), progress=False)
    labels = np.concatenate([scipy.io.loadmat(nyud / f"segmentation/img_{i}.mat")["segmentation"].ravel()
                             for i in SPLITS["train"]])
    assert stats["pixel_counts"] == np.bincount(labels, minlength=41)[1:].tolist()
    assert stats["ignored_pixels"] == int((labels == 0).sum())
    out = tmp_path / "stats.json"
    assert main(["data", "stats", "nyudv2", "--root", nyud, "--out", out]) == 0
    assert json.loads(out.read_text())["classes"][:2] == ["wall", "floor"]
    bad = tmp_path / "bad"
    for i in SPLITS["train"][:2]:
        write_sample(bad, i)
    (bad / "train.txt").write_text("5003\n5004\n")
    scipy.io.savemat(bad / "segmentation/img_5003.mat", {"segmentation": np.full((H, W), 41, np.uint8)})
    (bad / "data/hha/img_5004.png").unlink()
    problems = check_split("nyudv2", bad, "train", progress=False, modality="color+hha")
    assert len(problems) == 2
    assert "img_5003.mat: label values outside 0..39 and ignore 255: 41 at 768 px" in problems[0]
    assert "image not found" in problems[1] and "data/hha/img_5004.png" in problems[1]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # data check exits 1 when it finds problems
        main(["data", "check", "nyudv2", "--root", bad, "--split", "train"])
    assert e.value.code == 1
    assert "1 problem(s)" in capsys.readouterr().out


def test_download_says_where_the_files_come_from(tmp_path, capsys):
    assert main(["data", "download", "nyudv2", "--root", tmp_path]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "nyu_depth_v2_labeled.mat" in err[0] and "saveHHA.m" in err[0]


def test_widened_first_conv_keeps_rgb_filters_and_adds_their_mean(tmp_path):
    torch.manual_seed(0)
    rgb_model = fcnseg.build_model("fcn32s", backbone="resnet18", num_classes=40)
    w = rgb_model.backbone.body.conv1.weight.detach().clone()
    torch.save(rgb_model.state_dict(), tmp_path / "rgb.pt")  # "pretrained" RGB weights, loaded before widening
    model = fcnseg.build_model("fcn32s", backbone="resnet18", num_classes=40, in_channels=4,
                               pretrained_backbone=tmp_path / "rgb.pt")
    w4 = model.backbone.body.conv1.weight
    assert tuple(w4.shape) == (64, 4, 7, 7) and model.backbone.body.conv1.in_channels == 4
    assert torch.equal(w4[:, :3], w) and torch.allclose(w4[:, 3], w.mean(1))
    depth_only = widen_input(fcnseg.build_model("fcn32s", backbone="resnet18", num_classes=40), 1)
    assert tuple(depth_only.backbone.body.conv1.weight.shape) == (64, 1, 7, 7)
    with pytest.raises(ValueError, match="must split evenly"):
        fcnseg.build_model("fcn32s", backbone="resnet18", num_classes=40, in_channels=5, streams=2)
    with pytest.raises(ValueError, match="named weights take RGB"):
        fcnseg.build_model(weights="nyud-fcn32s-color", in_channels=4)


def test_early_fusion_forward_backward_at_an_odd_size(one_thread):
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", backbone="resnet18", num_classes=40, in_channels=4)
    torch.nn.init.normal_(model.score_fr.weight, std=0.05)  # zero scores (as built) pass no gradient back
    x = torch.randn(2, 4, 67, 91)
    out = model(x)
    assert tuple(out.shape) == (2, 40, 67, 91)
    out.square().mean().backward()
    grad = model.backbone.body.conv1.weight.grad
    assert grad is not None and grad[:, 3].abs().sum() > 0  # the depth filter learns
    assert fcnseg.model_spec(model)["in_channels"] == 4


def test_late_fusion_averages_two_streams(one_thread):
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn16s", backbone="resnet18", num_classes=40, in_channels=6, streams=2)
    assert isinstance(model, LateFusion) and model.in_channels == 6 and len(model.streams) == 2
    for s in model.streams:  # non-zero scores, so that the average is not trivially zero
        torch.nn.init.normal_(s.score_fr.weight, std=0.05)
    model.eval()
    x = torch.randn(1, 6, 67, 91)
    out = model(x)
    assert tuple(out.shape) == (1, 40, 67, 91)
    torch.testing.assert_close(out, (model.streams[0](x[:, :3]) + model.streams[1](x[:, 3:])) / 2)
    model.train()
    model(torch.randn(2, 6, 67, 91)).square().mean().backward()
    assert all(s.backbone.body.conv1.weight.grad.abs().sum() > 0 for s in model.streams)
    scope_parameters(model, None)
    assert model.upsample_layers() == ["streams.0.upscore2", "streams.0.upscore16", "streams.1.upscore2",
                                       "streams.1.upscore16"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if "upscore" in n)  # fixed bilinear
    scope_parameters(model, ["head"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"streams.{k}.{layer}.{t}" for k in (0, 1) for layer in ("score_fr", "score_pool4") for t in ("weight", "bias")}
    spec = fcnseg.model_spec(model)
    assert (spec["in_channels"], spec["streams"], spec["arch"], spec["backbone"]) == (6, 2, "fcn16s", "resnet18")


@pytest.mark.parametrize("modality", ["color+depth", "color+hha"])
def test_checkpoint_round_trip(nyud, tmp_path, modality, one_thread):
    ds = get_dataset("nyudv2", nyud, "test", modality=modality)
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn32s", backbone="resnet18", num_classes=40, in_channels=ds.in_channels,
                               streams=ds.streams)
    model.normalization = ds.input_normalization(model.normalization)
    with torch.no_grad():
        for name in model.score_layers():
            model.get_submodule(name).weight.normal_(0, 0.05)
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "model_spec": fcnseg.model_spec(model), "classes": CLASSES}, path)
    loaded = fcnseg.load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.normalization == model.normalization
    images = torch.stack([ds[i][0] for i in range(2)])
    want = fcnseg.Predictor(model, "cpu", amp="none").predict_image(images)
    got = fcnseg.Predictor(loaded, "cpu", amp="none").predict_image(images)
    assert tuple(got.shape) == (2, 40, H, W)
    torch.testing.assert_close(got, want)


def test_train_then_evaluate_on_the_command_line(nyud, tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "nyudv2", "--root", nyud, "--set", "data_options={modality: color+hha}",
                 "--arch", "fcn32s", "--backbone", "resnet18", "--max-iters", 20, "--val-every", 20,
                 "--batch-size", 2, "--crop-size", 32, "--workers", 0, "--out", out,
                 "--trainable", "head"]) == 0  # the score layers of both streams: a short backward pass
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["iteration"] == 20 and ckpt["model_spec"]["streams"] == 2
    assert ckpt["model_spec"]["normalization"]["name"] == "imagenet+nyudv2-color+hha"
    assert {k for k in ckpt["model"] if "score_fr" in k} == {f"streams.{s}.score_fr.{t}" for s in (0, 1)
                                                             for t in ("weight", "bias")}
    assert all(ckpt["model"][f"streams.{s}.score_fr.weight"].abs().sum() > 0 for s in (0, 1))  # trained from 0
    assert main(["evaluate", out / "last.pt", "--split", "test", "--out", tmp_path / "eval"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["split"], metrics["images"]) == ("nyudv2", "test", 2)
    assert 0.0 <= metrics["pixel_accuracy"] <= 1.0 and (tmp_path / "eval" / "predictions.png").is_file()
