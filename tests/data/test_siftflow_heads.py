"""SIFT Flow's two labellings and the paper's two-headed FCN: the reader's ``task`` option on fixtures in the release's
layout, a model with a semantic and a geometric head (forward/backward at an odd size, equal to two separate nets,
checkpoint round trip), and ``fcnseg train`` + ``fcnseg evaluate`` on task=both reporting both metric sets."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from PIL import Image

import fcnseg
from fcnseg.cli import main
from fcnseg.data import get_dataset
from fcnseg.data.check import check_split
from fcnseg.data.siftflow import HEADS, SUBDIR
from fcnseg.data.stats import class_stats
from fcnseg.data.transforms import build_transforms, pad_collate
from fcnseg.errors import UserError
from fcnseg.evaluation import evaluate
from fcnseg.train.checkpoint import model_from_checkpoint
from fcnseg.train.loop import heads_loss, prepare_batch, resize_batch

H, W = 24, 32
STEMS = ["coast_arnat59", "forest_for114", "street_art256", "tallbuilding_a212", "highway_gre37", "insidecity_art1"]
TEST = STEMS[4:]


def scene(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, semantic S (0 void, 1..33) and geometric S (−1 void, 1..3) of a street scene: sky over a building over
    a road, each .mat variable stored as double, as in SiftFlowDataset.zip."""
    y = np.arange(H)[:, None].repeat(W, 1)
    band = np.digitize(y, [H // 3, 2 * H // 3])  # 0 top, 1 middle, 2 bottom
    semantic = np.array([28, 6, 22])[band].astype(np.float64)  # sky, building, road (classes.txt numbering)
    geometric = np.array([1, 3, 2])[band].astype(np.float64)  # sky, vertical, horizontal
    semantic[0, :3], geometric[0, :3] = 0, -1  # unlabelled corners
    geometric[1, 0] = 0  # (0 is void too: the authors' layer folds −1 into it)
    rng = np.random.default_rng(k)
    colours = np.array([(120, 160, 240), (150, 90, 60), (70, 70, 70)])
    image = np.clip(colours[band] + rng.integers(-12, 12, (H, W, 3)), 0, 255).astype(np.uint8)
    return image, semantic, geometric


def make_siftflow(root: Path, *, geo: bool = True) -> Path:
    base = root / "SiftFlowDataset"
    for k, stem in enumerate(STEMS):
        image, semantic, geometric = scene(k)
        for folder in ("Images", "SemanticLabels") + (("GeoLabels",) if geo else ()):
            (base / folder / SUBDIR).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(base / "Images" / SUBDIR / f"{stem}.jpg")
        scipy.io.savemat(base / "SemanticLabels" / SUBDIR / f"{stem}.mat", {"S": semantic})
        if geo:
            scipy.io.savemat(base / "GeoLabels" / SUBDIR / f"{stem}.mat", {"S": geometric})
    (base / "TestSet1.txt").write_text("".join(f"Images\\{SUBDIR}\\{s}.jpg\n" for s in TEST))
    return root


# ------------------------------------------------------------------------------------------------------ reader
def test_reader_tasks(tmp_path):
    make_siftflow(tmp_path)
    _, semantic, geometric = scene(0)
    sem = get_dataset("siftflow", tmp_path, "train")
    assert sem.heads is None and sem.num_classes == 33 and sem[0][1].shape == (H, W)

    geo = get_dataset("siftflow", tmp_path, "train", task="geometric")
    assert geo.classes == ["sky", "horizontal", "vertical"] and geo.heads is None
    assert [p.parent.parent.name for _, p in geo.pairs] == ["GeoLabels"] * 4
    mask = geo[0][1].numpy()
    assert mask[0, :4].tolist() == [255, 255, 255, 0] and mask[1, 0] == 255  # −1 and 0 are void
    assert mask[H // 2, 5] == 2 and mask[-1, 5] == 1  # vertical building, horizontal road

    both = get_dataset("siftflow", tmp_path / "SiftFlowDataset", "test", task="both")
    assert both.heads == (("semantic", 33), ("geometric", 3)) and both.num_classes == 36
    assert both.classes[:33] == sem.classes and both.classes[33:] == geo.classes
    image, mask = both[0]
    assert image.shape == (3, H, W) and mask.shape == (2, H, W) and mask.dtype == torch.int64
    expected_sem = np.where(semantic == 0, 255, semantic - 1)
    expected_geo = np.where(geometric <= 0, 255, geometric - 1)
    assert np.array_equal(mask[0].numpy(), expected_sem) and np.array_equal(mask[1].numpy(), expected_geo)
    assert "GeoLabels" in both.describe(0) and "SemanticLabels" in both.describe(0)


def test_reader_errors(tmp_path):
    make_siftflow(tmp_path, geo=False)
    with pytest.raises(UserError, match="unknown siftflow task 'depth'; valid: semantic, geometric, both"):
        get_dataset("siftflow", tmp_path, "train", task="depth")
    with pytest.raises(UserError, match="SIFT Flow GeoLabels folder not found: .*GeoLabels"):
        get_dataset("siftflow", tmp_path, "train", task="both")
    assert len(get_dataset("siftflow", tmp_path, "train")) == 4  # the semantic task needs no GeoLabels


def test_data_check_and_stats_read_each_labelling_with_its_classes(tmp_path):
    make_siftflow(tmp_path)
    assert check_split("siftflow", tmp_path, "train", progress=False, task="both") == []
    stats = class_stats(get_dataset("siftflow", tmp_path, "train", task="both"), progress=False)
    semantic, geometric = zip(*(scene(STEMS.index(s))[1:] for s in STEMS if s not in TEST))
    assert stats["classes"][33:] == ["sky", "horizontal", "vertical"]
    for k in range(3):  # the geometric counts sit after the 33 semantic ones
        assert stats["pixel_counts"][33 + k] == sum(int((g == k + 1).sum()) for g in geometric)
    assert stats["pixel_counts"][5] == sum(int((s == 6).sum()) for s in semantic)  # building
    ignored = sum(int((s == 0).sum()) + int((g <= 0).sum()) for s, g in zip(semantic, geometric))
    assert stats["ignored_pixels"] == ignored
    bad = tmp_path / "SiftFlowDataset" / "GeoLabels" / SUBDIR / f"{STEMS[0]}.mat"
    scipy.io.savemat(bad, {"S": np.full((H, W), 4.0)})
    problems = check_split("siftflow", tmp_path, "train", progress=False, task="both")
    assert len(problems) == 1
    assert (f"GeoLabels/{SUBDIR}/{STEMS[0]}.mat (geometric): label values outside 0..2 and ignore 255: raw 4 (→ train "
            f"id 4) at {H * W} px") in problems[0]


def test_training_transforms_keep_the_two_label_maps_aligned(tmp_path):
    """Scale, crop (padded with ignore), flip and collate act on both rows of a 2×H×W mask alike."""
    make_siftflow(tmp_path)
    ds = get_dataset("siftflow", tmp_path, "train", task="both")
    ds.transforms = build_transforms(True, crop_size=[40, 20], scale_range=[0.6, 1.7], hflip=True)
    geometric_of = {27: 0, 5: 2, 21: 1}  # sky → sky, building → vertical, road → horizontal
    torch.manual_seed(0)
    batch = [ds[i % len(ds)] for i in range(6)]
    images, masks = pad_collate(batch + [(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(2, 8, 8))], 255)
    assert images.shape == (7, 3, 40, 20) and masks.shape == (7, 2, 40, 20)
    sem, geo = masks[:6, 0], masks[:6, 1]
    assert (sem != 255).any()
    for s, g in geometric_of.items():  # each semantic pixel still sits on its own geometric label (or a void one)
        assert set(geo[sem == s].unique().tolist()) in ({g}, {g, 255}), s
    assert (masks[6, :, 8:, :] == 255).all()  # collate padding


# ------------------------------------------------------------------------------------------------------- model
def two_head_model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", backbone="resnet18", heads=HEADS, **kw)
    with torch.no_grad():
        for name in model.score_layers():
            getattr(model, name).weight.normal_(0, 0.05)
            getattr(model, name).bias.normal_(0, 0.05)
    return model.eval()


def test_two_head_fcn_equals_two_separate_nets():
    """The stacked head computes exactly a 33-class FCN and a 3-class FCN sharing the backbone (the authors' two
    heads), at an odd size; the loss is the sum of the two cross-entropies, and both heads learn from it."""
    model = two_head_model()
    assert model.num_classes == 36 and model.heads == HEADS
    x = torch.randn(2, 3, 67, 91)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 36, 67, 91)
    start = 0
    for name, n in HEADS:
        single = fcnseg.build_model("fcn8s", backbone="resnet18", num_classes=n).eval()
        state = {k: v[start:start + n] if k.split(".")[0] in model.score_layers() else v
                 for k, v in model.state_dict().items() if not k.startswith("upscore")}
        single.load_state_dict(state, strict=False)
        with torch.no_grad():
            assert torch.allclose(single(x), logits[:, start:start + n], atol=1e-5), name
        start += n

    model.train()
    masks = torch.stack([torch.randint(0, 33, (2, 67, 91)), torch.randint(0, 3, (2, 67, 91))], 1)
    masks[:, 1, :5] = 255
    out = model(x)
    loss = heads_loss(out, masks, model.heads, ignore_index=255)
    expected = F.cross_entropy(out[:, :33], masks[:, 0], ignore_index=255) + \
        F.cross_entropy(out[:, 33:], masks[:, 1], ignore_index=255)
    assert torch.allclose(loss, expected)
    loss.backward()
    grad = model.score_fr.weight.grad
    assert grad[:33].abs().sum() > 0 and grad[33:].abs().sum() > 0
    assert model.upscore8.weight.grad is None  # fixed bilinear upsampling


def test_two_head_model_options_and_predictor():
    with pytest.raises(ValueError, match="keeps its upsampling fixed"):
        fcnseg.build_model("fcn32s", backbone="resnet18", heads=HEADS, learnable_upsampling=True)
    with pytest.raises(ValueError, match="num_classes=33 but heads"):
        fcnseg.build_model("fcn32s", backbone="resnet18", heads=HEADS, num_classes=33)
    model = two_head_model()
    predictor = fcnseg.Predictor(model, "cpu", amp="none")
    image = torch.randint(0, 256, (1, 3, 37, 45), dtype=torch.uint8)
    first = predictor.predict_image(image)
    every = predictor.predict_image(image, all_heads=True, flip=True)
    assert first.shape == (1, 33, 37, 45) and every.shape == (1, 36, 37, 45)
    assert torch.allclose(every[:, :33].sum(1), torch.ones(1)) and torch.allclose(every[:, 33:].sum(1), torch.ones(1))
    with torch.no_grad():
        logits = model(predictor.normalize(image))
    assert torch.allclose(first, logits[:, :33].softmax(1), atol=1e-5)


def test_each_row_of_a_batch_is_checked_against_its_own_head():
    model = two_head_model()
    run = SimpleNamespace(cfg=SimpleNamespace(ignore_index=255), model=model, device=torch.device("cpu"),
                          num_classes=36, channels_last=False, train_ds=SimpleNamespace(describe=lambda i: f"img{i}"))
    images = torch.zeros(2, 3, 5, 7, dtype=torch.uint8)
    masks = torch.zeros(2, 2, 5, 7, dtype=torch.int64)
    masks[:, 0, 0, 0], masks[:, 1, 0, 0], masks[1, 1, 4, 6] = 32, 2, 255
    assert torch.equal(prepare_batch(run, images, masks, [0, 1], 1.0)[1], masks)
    masks[1, 1, 2, 3] = 3  # a semantic class, but not a geometric one
    with pytest.raises(UserError, match=r"label 3 is outside \[0, 3\) .* in batch img0; img1"):
        prepare_batch(run, images, masks, [0, 1], 1.0)
    masks[1, 1, 2, 3], masks[0, 0, 1, 1] = 0, 33
    with pytest.raises(UserError, match=r"label 33 is outside \[0, 33\)"):
        prepare_batch(run, images, masks, [0, 1], 1.0)
    resized = resize_batch(images.float(), masks, 2.0)[1]
    assert resized.shape == (2, 2, 10, 14) and resized[0, 0, 2, 2] == 33 and resized[0, 1, 0, 0] == 2


def test_two_head_checkpoint_round_trip(tmp_path):
    model = two_head_model()
    spec = fcnseg.model_spec(model)
    assert spec["heads"] == [["semantic", 33], ["geometric", 3]] and spec["num_classes"] == 36
    path = tmp_path / "two-head.pt"
    classes = [f"s{i}" for i in range(33)] + ["sky", "horizontal", "vertical"]
    torch.save({"model": model.state_dict(), "model_spec": spec, "classes": classes}, path)
    again, _ = model_from_checkpoint(path)
    assert again.heads == HEADS and again.classes == classes
    x = torch.randn(1, 3, 41, 29)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model(x))


# -------------------------------------------------------------------------------------------- train + evaluate
def test_train_and_evaluate_both_heads(tmp_path, capsys):
    """`fcnseg train` on task=both (20 iterations), then `fcnseg evaluate`: metrics.json keeps the semantic scores
    at the top level and has a section per head, counted on the fixture's own labels."""
    root = make_siftflow(tmp_path / "data")
    run = tmp_path / "run"
    code = main(["train", "--data", "siftflow", "--root", root, "--set", "data_options={task: both}", "--set",
                 "val_split=test", "--arch", "fcn8s", "--backbone", "resnet18", "--max-iters", "20", "--batch-size",
                 "2", "--crop-size", "24", "--workers", "0", "--val-every", "20", "--optimizer", "adamw", "--lr",
                 "1e-2", "--trainable", "head", "--device", "cpu", "--out", run])  # (the heads alone: fast)
    assert code in (0, None)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [r for r in log if "val" in r][-1]
    assert "mean_iou" in val["val"] and "mean_iou" in val["val_geometric"]
    capsys.readouterr()

    out = tmp_path / "eval"
    code = main(["evaluate", run / "last.pt", "--out", out, "--device", "cpu", "--amp", "none"])
    assert code in (0, None)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mean_iou"] == metrics["semantic"]["mean_iou"] and metrics["images"] == len(TEST)
    assert list(metrics["geometric"]["per_class"]) == ["sky", "horizontal", "vertical"]
    truth = [scene(STEMS.index(s))[1:] for s in TEST]
    for k, name in enumerate(("sky", "horizontal", "vertical")):
        assert metrics["geometric"]["per_class"][name]["pixels"] == sum(int((g == k + 1).sum()) for _, g in truth)
    assert metrics["semantic"]["per_class"]["building"]["pixels"] == sum(int((s == 6).sum()) for s, _ in truth)
    assert metrics["per_class"] == metrics["semantic"]["per_class"]
    assert 0 <= metrics["geometric"]["mean_iou"] <= 1
    assert (out / "confusion-geometric.png").is_file()
    assert "siftflow test, geometric head" in (out / "metrics.md").read_text()

    # a dataset of one labelling scores the model's head that has its classes
    model, _ = model_from_checkpoint(run / "last.pt")
    predictor = fcnseg.Predictor(model, "cpu", amp="none")
    joint = evaluate(predictor, get_dataset("siftflow", root, "test", task="both"), num_classes=36, progress=False)
    for k, (name, n) in enumerate(HEADS):
        alone = evaluate(predictor, get_dataset("siftflow", root, "test", task=name), num_classes=n, progress=False)
        assert torch.equal(alone["hist"], joint["heads"][k][2]), name
    assert torch.equal(joint["hist"], joint["heads"][0][2])
    assert joint["hist"].sum() == metrics["pixels"]
