"""Readers on tiny fixtures written in each dataset's exact layout, plus CamVid and CCP on the real files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fcnseg.data import READERS, dataset_class, get_dataset
from fcnseg.errors import UserError

H, W = 6, 8


def shared_datasets() -> Path:
    env = os.environ.get("FCNSEG_SHARED")
    if env:
        base = Path(env)
        return base / "datasets" if (base / "datasets").is_dir() else base
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def real(name: str) -> Path:
    d = shared_datasets() / name
    if not d.is_dir():
        pytest.skip(f"real dataset not available: {d}")
    return d


def write_image(path: Path, seed: int = 0, size=(H, W), fmt=None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def write_mask(path: Path, arr, palette: bool = True) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(arr, dtype=np.uint8)
    im = Image.fromarray(arr, mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)])
        im.frombytes(arr.tobytes())  # convert() may remap indices; force the stored values
    im.save(path)
    return arr


def mask_with(values, size=(H, W)) -> np.ndarray:
    """An H×W mask whose first pixels hold ``values`` (one each) and the rest ``values[0]``."""
    m = np.full(size, values[0], dtype=np.int64)
    m.flat[: len(values)] = values
    return m


def sample(ds, i=0):
    image, mask = ds[i]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, H, W)
    assert mask.dtype == torch.int64 and tuple(mask.shape) == (H, W)
    return image, mask.numpy()


def test_palette_png_fixture_keeps_values(tmp_path):
    arr = write_mask(tmp_path / "m.png", mask_with([0, 5, 200, 255]))
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        assert np.array_equal(np.asarray(im), arr)


def test_registry_names_resolve_to_my_readers():
    for name in READERS:
        if name == "synthetic":
            continue
        cls = dataset_class(name)
        assert cls.name == name and cls.ignore_index == 255
    with pytest.raises(UserError, match="unknown dataset 'nope'; valid: .*camvid"):
        dataset_class("nope")


# --- CamVid ---------------------------------------------------------------------------------------------------

def make_camvid(root: Path, with_lists: bool = True) -> None:
    lines = []
    for k, stem in enumerate(["0001TP_000010", "Seq05VD_f00000"]):
        write_image(root / "train" / f"{stem}.png", k)
        write_mask(root / "trainannot" / f"{stem}.png", mask_with([3, 11, 0, 10]), palette=False)
        lines.append(f"/SegNet/CamVid/train/{stem}.png /SegNet/CamVid/trainannot/{stem}.png")
    write_image(root / "val" / "v.png")
    write_mask(root / "valannot" / "v.png", mask_with([1]), palette=False)
    if with_lists:
        (root / "train.txt").write_text("\n".join(lines) + "\n")
        (root / "val.txt").write_text("/SegNet/CamVid/val/v.png /SegNet/CamVid/valannot/v.png\n")


@pytest.mark.parametrize("with_lists", [True, False])
def test_camvid_fixture(tmp_path, with_lists):
    make_camvid(tmp_path, with_lists)
    ds = get_dataset("camvid", tmp_path, "train")
    assert len(ds) == 2 and len(get_dataset("camvid", tmp_path, "val")) == 1
    assert ds.pairs[0] == (tmp_path / "train" / "0001TP_000010.png", tmp_path / "trainannot" / "0001TP_000010.png")
    image, mask = sample(ds)
    assert mask.flat[:4].tolist() == [3, 255, 0, 10]  # raw 11 (Unlabelled) → ignore
    assert np.array_equal(image.numpy().transpose(1, 2, 0), np.asarray(Image.open(ds.pairs[0][0])))
    assert ds.num_classes == 11 and len(ds.get_palette()) == 11 and ds.palette[0] == (128, 128, 128)


def test_camvid_errors(tmp_path):
    with pytest.raises(UserError, match=f"CamVid root not found: {tmp_path / 'nope'}"):
        get_dataset("camvid", tmp_path / "nope", "train")
    make_camvid(tmp_path)
    with pytest.raises(UserError, match="unknown camvid split 'training'; valid: train, val, test"):
        get_dataset("camvid", tmp_path, "training")
    with pytest.raises(UserError, match="CamVid test folder not found"):
        get_dataset("camvid", tmp_path, "test")
    (tmp_path / "val.txt").write_text("\n")
    with pytest.raises(UserError, match="camvid split 'val' is empty"):
        get_dataset("camvid", tmp_path, "val")


def test_camvid_real():
    root = real("camvid")
    from fcnseg.data.camvid import SEGNET_CLASS_WEIGHTS
    train, val = get_dataset("camvid", root, "train"), get_dataset("camvid", root, "val")
    assert (len(train), len(val)) == (367, 101)
    assert list(train.classes) == ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                                   "Car", "Pedestrian", "Bicyclist"]
    assert len(SEGNET_CLASS_WEIGHTS) == 11
    image, mask = val[0]
    assert tuple(image.shape) == (3, 360, 480) and tuple(mask.shape) == (360, 480)
    raw = np.asarray(Image.open(val.pairs[0][1]))
    assert np.array_equal(mask.numpy(), np.where(raw == 11, 255, raw))


# --- CCP -------------------------------------------------------------------------------------------------------

def make_ccp(root: Path, ids=range(1, 11), label_list=True) -> dict[int, np.ndarray]:
    gts = {}
    for i in ids:
        write_image(root / "photos" / f"{i:04d}.jpg", i)
        gt = mask_with([i % 59, 58, 0, 41]).astype(np.uint8)
        (root / "annotations" / "pixel-level").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "annotations" / "pixel-level" / f"{i:04d}.mat", {"groundtruth": gt})
        gts[i] = gt
    if label_list:
        names = np.empty((1, 59), dtype=object)
        for k in range(59):
            names[0, k] = f"name{k}"
        scipy.io.savemat(root / "label_list.mat", {"label_list": names})
    return gts


def test_ccp_fixture(tmp_path):
    gts = make_ccp(tmp_path)
    ds = get_dataset("ccp", tmp_path, "all")
    assert len(ds) == 10 and ds.classes[0] == "name0" and ds.classes[58] == "name58" and ds.num_classes == 59
    _, mask = sample(ds, 6)
    assert np.array_equal(mask, gts[7])
    val = get_dataset("ccp", tmp_path, "val")
    assert [p.stem for p, _ in val.pairs] == ["0005", "0010"]
    train = get_dataset("ccp", tmp_path, "train")
    assert len(train) == 8 and not {p.stem for p, _ in train.pairs} & {"0005", "0010"}
    # the rule depends on each id alone: removing files never moves a sample across splits
    (tmp_path / "annotations" / "pixel-level" / "0004.mat").unlink()
    assert [p.stem for p, _ in get_dataset("ccp", tmp_path, "val").pairs] == ["0005", "0010"]


def test_ccp_errors(tmp_path):
    make_ccp(tmp_path, ids=[1, 2], label_list=False)
    assert get_dataset("ccp", tmp_path, "all").classes[1] == "accessories"  # built-in names without label_list.mat
    with pytest.raises(UserError, match="ccp split 'val' is empty"):
        get_dataset("ccp", tmp_path, "val")
    with pytest.raises(UserError, match="unknown ccp split 'test'; valid: all, train, val"):
        get_dataset("ccp", tmp_path, "test")
    scipy.io.savemat(tmp_path / "annotations" / "pixel-level" / "0002.mat", {"gt": np.zeros((H, W), np.uint8)})
    ds = get_dataset("ccp", tmp_path, "all")
    with pytest.raises(UserError, match=r"0002.mat has no variable 'groundtruth' \(it has: gt\)"):
        ds[1]


def test_ccp_real():
    root = real("ccp")
    ds = get_dataset("ccp", root, "all")
    assert len(ds) == 800
    names = [str(np.asarray(x).ravel()[0]) for x in scipy.io.loadmat(root / "label_list.mat")["label_list"].ravel()]
    assert list(ds.classes) == names and names[0] == "null" and names[58] == "wedges" and ds.num_classes == 59
    assert len(get_dataset("ccp", root, "val")) == 160 and len(get_dataset("ccp", root, "train")) == 640
    gt = scipy.io.loadmat(root / "annotations" / "pixel-level" / "0001.mat")["groundtruth"]
    image, mask = ds[0]
    assert tuple(mask.shape) == gt.shape == tuple(image.shape[1:])
    y, x = np.argwhere(gt == gt.max())[0]  # a pixel of the image's highest label, read independently
    assert mask[y, x].item() == int(gt[y, x]) > 0
    assert np.array_equal(mask.numpy(), gt.astype(np.int64))


# --- VOC, SBD, VOC-aug, seg11valid ----------------------------------------------------------------------------

def make_voc(base: Path, train, val, year="2012", values=(0, 15, 255)) -> Path:
    voc = base / "VOCdevkit" / f"VOC{year}"
    for k, i in enumerate(list(train) + list(val)):
        write_image(voc / "JPEGImages" / f"{i}.jpg", k)
        write_mask(voc / "SegmentationClass" / f"{i}.png", mask_with(list(values)))
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (sets / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (sets / "trainval.txt").write_text("".join(f"{i}\n" for i in list(train) + list(val)))
    return voc


def make_sbd(base: Path, train, val, value=7) -> Path:
    ds = base / "benchmark_RELEASE" / "dataset"
    (ds / "cls").mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(list(train) + list(val)):
        write_image(ds / "img" / f"{i}.jpg", 100 + k)
        seg = mask_with([0, value, 20]).astype(np.uint8)
        scipy.io.savemat(ds / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((1, 20)),
                                                              "CategoriesPresent": np.array([[value]])}})
    (ds / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (ds / "val.txt").write_text("".join(f"{i}\n" for i in val))
    return ds


def test_voc2012_fixture(tmp_path):
    voc = make_voc(tmp_path, ["2007_000032", "2007_000039"], ["2007_000033"])
    for root in (tmp_path, tmp_path / "VOCdevkit", voc):
        ds = get_dataset("voc2012", root, "train")
        assert len(ds) == 2 and ds.num_classes == 21
    _, mask = sample(ds)
    assert mask.flat[:3].tolist() == [0, 15, 255]
    assert ds.palette[15] == (192, 128, 128) and ds.classes[15] == "person"
    assert len(get_dataset("voc2012", tmp_path, "trainval")) == 3
    with pytest.raises(UserError, match="unknown voc2012 split 'test'; valid: train, val, trainval"):
        get_dataset("voc2012", tmp_path, "test")
    with pytest.raises(UserError, match="VOC2012 not found under .*VOCdevkit/VOC2012/JPEGImages"):
        get_dataset("voc2012", tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages", "train")


def test_sbd_fixture(tmp_path):
    make_sbd(tmp_path, ["2008_000002", "2008_000003"], ["2008_000004"])
    ds = get_dataset("sbd", tmp_path, "train")
    assert len(ds) == 2 and len(get_dataset("sbd", tmp_path / "benchmark_RELEASE" / "dataset", "val")) == 1
    _, mask = sample(ds)
    assert mask.flat[:3].tolist() == [0, 7, 20]
    with pytest.raises(UserError, match="SBD not found under"):
        get_dataset("sbd", tmp_path / "VOCdevkit", "train")


def test_voc_aug_union(tmp_path):
    make_voc(tmp_path, train=["a", "b"], val=["c"], values=(0, 15, 255))
    make_sbd(tmp_path, train=["b", "c", "d"], val=["e"], value=7)
    ds = get_dataset("voc-aug", tmp_path, "train")
    # (SBD train ∪ SBD val ∪ VOC train) − VOC val
    assert [p.stem for p, _ in ds.pairs] == ["a", "b", "d", "e"]
    masks = {p.stem: sample(ds, i)[1].flat[1] for i, (p, _) in enumerate(ds.pairs)}
    assert masks == {"a": 15, "b": 15, "d": 7, "e": 7}  # b exists in both: VOC's mask wins
    assert [p.stem for p, _ in get_dataset("voc-aug", tmp_path, "val").pairs] == ["c"]


def test_seg11valid(tmp_path):
    make_voc(tmp_path, ["x"], ["y", "z"], year="2011")
    with pytest.raises(UserError, match=r"seg11valid.txt not found .*fcn.berkeleyvision.org.*seg11valid.txt"):
        get_dataset("seg11valid", tmp_path, "val")
    (tmp_path / "seg11valid.txt").write_text("y\nz\n")
    ds = get_dataset("seg11valid", tmp_path, "val")
    assert [p.stem for p, _ in ds.pairs] == ["y", "z"] and "VOC2011" in str(ds.pairs[0][0])
    other = tmp_path / "as-extracted"  # VOCtrainval_25-May-2011.tar unpacks to TrainVal/VOCdevkit/VOC2011
    make_voc(other / "TrainVal", ["x"], ["y"], year="2011")
    (other / "seg11valid.txt").write_text("y\n")
    assert [p.stem for p, _ in get_dataset("seg11valid", other, "val").pairs] == ["y"]
    sample(ds)
    with pytest.raises(UserError, match="valid: val"):
        get_dataset("seg11valid", tmp_path, "train")


# --- ADE20K, Cityscapes, PASCAL-Context, SIFT Flow -----------------------------------------------------------

def make_ade(root: Path) -> None:
    base = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        write_image(base / "images" / split / f"ADE_{split[:5]}_00000001.jpg")
        write_mask(base / "annotations" / split / f"ADE_{split[:5]}_00000001.png", mask_with([0, 1, 150, 12]),
                   palette=False)


def test_ade20k(tmp_path):
    make_ade(tmp_path)
    ds = get_dataset("ade20k", tmp_path, "train")
    assert len(ds) == 1 and ds.num_classes == 150 and ds.classes[:5] == ["wall", "building", "sky", "floor", "tree"]
    assert ds.classes[-1] == "flag" and len(set(ds.classes)) == 150
    assert sample(ds)[1].flat[:4].tolist() == [255, 0, 149, 11]
    ds = get_dataset("ade20k", tmp_path / "ADEChallengeData2016", "val", zero_is_class=True)
    assert ds.num_classes == 151 and ds.classes[0] == "other" and ds.classes[1] == "wall"
    assert sample(ds)[1].flat[:4].tolist() == [0, 1, 150, 12]
    (tmp_path / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000001.png").unlink()
    with pytest.raises(UserError, match="1 ADE20K annotation.* missing, e.g. .*ADE_train_00000001.png"):
        get_dataset("ade20k", tmp_path, "train")
    with pytest.raises(UserError, match="valid: train, val"):
        get_dataset("ade20k", tmp_path, "training")


def test_cityscapes(tmp_path):
    stem = "aachen_000000_000019"
    write_image(tmp_path / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png")
    write_mask(tmp_path / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png",
               mask_with([7, 26, 0, 33, 9, 24]), palette=False)
    ds = get_dataset("cityscapes", tmp_path, "train")
    assert len(ds) == 1 and ds.num_classes == 19 and ds.palette[13] == (0, 0, 142) and ds.classes[13] == "car"
    assert sample(ds)[1].flat[:6].tolist() == [0, 13, 255, 18, 255, 11]
    with pytest.raises(UserError, match="Cityscapes image folder not found: .*leftImg8bit/val"):
        get_dataset("cityscapes", tmp_path, "val")


def test_pascal_context(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    write_image(voc / "JPEGImages" / "2008_000002.jpg")
    write_mask(voc / "SegmentationClassContext" / "2008_000002.png", mask_with([0, 1, 59, 37]), palette=False)
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (voc / "ImageSets" / "SegmentationContext" / "train.txt").write_text("2008_000002\n")
    ds = get_dataset("pascal-context", tmp_path, "train")
    assert ds.num_classes == 59 and ds.classes[36] == "person"
    assert sample(ds)[1].flat[:4].tolist() == [255, 0, 58, 36]
    with pytest.raises(UserError, match="list file not found: .*SegmentationContext/val.txt"):
        get_dataset("pascal-context", voc, "val")


CONTEXT_LABELS = Path(__file__).resolve().parents[1] / "fixtures" / "pascal-context" / "labels.txt"


def make_context_full(voc: Path, context: Path, ids=("2008_000002", "2008_000003")) -> None:
    """trainval.tar.gz's layout (trainval/*.mat with a uint16 ``LabelMap``, labels.txt "k: name") in ``context``,
    beside VOC 2010's JPEGImages and ImageSets/Main lists in ``voc``."""
    (context / "trainval").mkdir(parents=True, exist_ok=True)
    (context / "labels.txt").write_text(CONTEXT_LABELS.read_text())
    for k, i in enumerate(ids):
        write_image(voc / "JPEGImages" / f"{i}.jpg", k)
        label_map = mask_with([0, 1, 255, 256, 459, 284, 360]).astype(np.uint16)
        scipy.io.savemat(context / "trainval" / f"{i}.mat", {"LabelMap": label_map})
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text(f"{ids[0]}\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text(f"{ids[1]}\n")


def test_pascal_context_459(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    make_context_full(voc, voc)  # trainval.tar.gz extracted into VOC2010
    ds = get_dataset("pascal-context", tmp_path, "train", classes=459)
    assert ds.num_classes == 459 and ds.ignore_index == 65535 and len(ds) == 1
    assert ds.classes[:3] == ["accordion", "aeroplane", "air conditioner"] and ds.classes[-1] == "wool"
    assert (ds.classes[254], ds.classes[255], ds.classes[283], ds.classes[359]) == ("money", "monkey", "person", "sky")
    image, mask = ds[0]
    assert image.shape == (3, H, W) and mask.dtype == torch.int64
    # unlabelled → 65535; label k → k − 1, class 255 ("monkey") included
    assert mask.flatten()[:7].tolist() == [65535, 0, 254, 255, 458, 283, 359]
    assert [p.stem for p, _ in get_dataset("pascal-context", voc, "val", classes="459").pairs] == ["2008_000003"]
    with pytest.raises(UserError, match="SegmentationClassContext"):  # the 59 classes (the default) read PNGs
        get_dataset("pascal-context", tmp_path, "train")

    # the 59-class conversion's split lists are used when present; the full labels also sit in root itself
    other = tmp_path / "other"
    make_context_full(other / "VOC2010", other)
    (other / "VOC2010" / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (other / "VOC2010" / "ImageSets" / "SegmentationContext" / "train.txt").write_text("2008_000003\n")
    assert [p.stem for p, _ in get_dataset("pascal-context", other, "train", classes=459).pairs] == ["2008_000003"]

    from fcnseg.train.config import TrainConfig
    from fcnseg.train.setup import check_labels
    with pytest.raises(UserError, match="marks unlabelled pixels 65535 .*pass --ignore-index 65535"):
        check_labels(TrainConfig(data="pascal-context"), ds)
    check_labels(TrainConfig(data="pascal-context", ignore_index=65535), ds)


def test_pascal_context_459_errors(tmp_path):
    voc = tmp_path / "VOC2010"
    make_context_full(voc, voc)
    with pytest.raises(UserError, match="pascal-context classes=60; valid: 59, 459"):
        get_dataset("pascal-context", voc, "train", classes=60)
    (voc / "labels.txt").write_text("1: accordion\n2: aeroplane\n")
    with pytest.raises(UserError, match=r"labels.txt: expected 459 lines 'k: name' numbered 1..459"):
        get_dataset("pascal-context", voc, "train", classes=459)
    (voc / "labels.txt").unlink()
    with pytest.raises(UserError, match=r"label list not found: .*labels.txt \(labels.txt ships in trainval.tar.gz"):
        get_dataset("pascal-context", voc, "train", classes=459)
    for f in (voc / "trainval").iterdir():
        f.unlink()
    (voc / "trainval").rmdir()
    with pytest.raises(UserError, match="no trainval/ folder in .*extract trainval.tar.gz there"):
        get_dataset("pascal-context", voc, "train", classes=459)


def test_siftflow(tmp_path):
    from fcnseg.data.siftflow import SUBDIR
    base = tmp_path / "SiftFlowDataset"
    # highway_bost181 and street_urb506 ship without annotations (all 0): the FCN authors' splits leave them out
    for k, stem in enumerate(["coast_arnat59", "forest_for114", "street_art256", "highway_bost181", "street_urb506"]):
        write_image(base / "Images" / SUBDIR / f"{stem}.jpg", k)
        (base / "SemanticLabels" / SUBDIR).mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(base / "SemanticLabels" / SUBDIR / f"{stem}.mat",
                         {"S": mask_with([0, 1, 33, k + 1]).astype(np.float64)})
    (base / "TestSet1.txt").write_text(f"Images\\{SUBDIR}\\forest_for114.jpg\nstreet_art256\n")
    test = get_dataset("siftflow", tmp_path, "test")
    train = get_dataset("siftflow", base, "train")
    assert [p.stem for p, _ in test.pairs] == ["forest_for114", "street_art256"]
    assert [p.stem for p, _ in train.pairs] == ["coast_arnat59"] and train.num_classes == 33
    assert sample(train)[1].flat[:4].tolist() == [255, 0, 32, 0]
    assert train.classes[27] == "sky"
    (base / "Images" / SUBDIR / "street_art256.jpg").unlink()
    with pytest.raises(UserError, match=r"1 image\(s\) named in .*TestSet1.txt are missing from .*street_art256.jpg"):
        get_dataset("siftflow", base, "train")


# --- folder ----------------------------------------------------------------------------------------------------

def test_folder_index_masks(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    write_image(tmp_path / "images" / "b.png", 1)
    write_mask(tmp_path / "masks" / "a.png", mask_with([0, 2, 255]))
    write_mask(tmp_path / "masks" / "b.png", mask_with([1]), palette=False)
    (tmp_path / "masks" / "unused.png").write_bytes(b"")  # masks without an image are ignored
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    ds = get_dataset("folder", tmp_path, "all")
    assert ds.classes == ["background", "cat", "dog"] and ds.palette is None and len(ds) == 2
    assert sample(ds)[1].flat[:3].tolist() == [0, 2, 255]
    assert sample(ds, 1)[1].flat[0] == 1


def test_folder_rgb_colour_table(tmp_path):
    write_image(tmp_path / "train" / "images" / "a.png")
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (9, 9, 9)
    (tmp_path / "train" / "masks").mkdir(parents=True)
    Image.fromarray(rgb).save(tmp_path / "train" / "masks" / "a.png")
    (tmp_path / "classes.txt").write_text("background 0 0 0\nroad 255 0 0\n__ignore__ 9 9 9\n")
    ds = get_dataset("folder", tmp_path, "train")
    assert ds.classes == ["background", "road"] and ds.palette == [(0, 0, 0), (255, 0, 0)]
    m = sample(ds)[1]
    assert m[0, :3].tolist() == [1, 255, 0] and (m[1:] == 0).all()
    rgb[2, 2] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "train" / "masks" / "a.png")
    with pytest.raises(UserError, match=r"a.png has colour\(s\) not in the colour table of classes.txt: \(1, 2, 3\)"):
        ds[0]
    with pytest.raises(UserError, match=r"folder split 'val' not found: .*valid splits: train\)"):
        get_dataset("folder", tmp_path, "val")
    with pytest.raises(UserError, match=r"no images/ \+ masks/ .* folders in .*; splits found: train$"):
        get_dataset("folder", tmp_path, "all")


def test_folder_palette_masks_decode_by_colour_table(tmp_path):
    # an editor saved the palette in its own order: index 0 is car's colour, index 1 road's
    write_image(tmp_path / "images" / "a.JPG")
    (tmp_path / "masks").mkdir()
    im = Image.fromarray(mask_with([0, 1, 2]).astype(np.uint8), mode="P")
    im.putpalette([0, 0, 142, 128, 64, 128, 9, 9, 9] + [0] * (253 * 3))
    im.save(tmp_path / "masks" / "a.PNG")  # upper-case extensions pair like lower-case ones
    (tmp_path / "classes.txt").write_text("bg 0 0 0\nroad 128 64 128\ncar 0 0 142\n__ignore__ 9 9 9\n")
    ds = get_dataset("folder", tmp_path, "all")
    assert sample(ds)[1].flat[:3].tolist() == [2, 1, 255]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_folder_class_file_with_byte_order_mark(tmp_path, encoding):
    # Windows editors add a BOM; read naively it became part of the first name, so __ignore__ turned into class 0
    write_image(tmp_path / "images" / "a.png")
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[0, 0], rgb[0, 1] = (255, 255, 255), (255, 0, 0)
    (tmp_path / "masks").mkdir()
    Image.fromarray(rgb).save(tmp_path / "masks" / "a.png")
    (tmp_path / "classes.txt").write_text("__ignore__ 255 255 255\nbg 0 0 0\nfg 255 0 0\n", encoding=encoding)
    ds = get_dataset("folder", tmp_path, "all")
    assert ds.classes == ["bg", "fg"]
    assert sample(ds)[1].flat[:3].tolist() == [255, 1, 0]
    (tmp_path / "classes.txt").write_bytes(b"bg\n\xe9\xff\n")
    with pytest.raises(UserError, match=r"classes.txt is not UTF-8 text .*save it as UTF-8"):
        get_dataset("folder", tmp_path, "all")


def test_negative_raw_labels_are_not_wrapped_by_the_lookup_table(tmp_path):
    from fcnseg.data.siftflow import SUBDIR
    base = tmp_path / "SiftFlowDataset"
    write_image(base / "Images" / SUBDIR / "coast_arnat59.jpg")
    (base / "SemanticLabels" / SUBDIR).mkdir(parents=True)
    scipy.io.savemat(base / "SemanticLabels" / SUBDIR / "coast_arnat59.mat",
                     {"S": mask_with([1, -1, 0, 33]).astype(np.float64)})
    (base / "TestSet1.txt").write_text("coast_arnat59\n")
    ds = get_dataset("siftflow", base, "test")
    # −1 indexed the table from its end and became class 32 ("window"); it now stays −1, which training and
    # `data check` report as a label out of range
    assert ds.to_train_ids(np.array([-1, 0, 1, 33])).tolist() == [-1, 255, 0, 32]
    assert sample(ds)[1].flat[:4].tolist() == [0, -1, 255, 32]


def test_folder_labelme_layout(tmp_path):
    # what labelme2voc.py writes: class_names.txt (no __ignore__), SegmentationClass/*.npy (−1 = ignore) and
    # SegmentationClassPNG/*.png (palette, −1 saved as 255)
    write_image(tmp_path / "JPEGImages" / "img1.jpg")
    write_image(tmp_path / "JPEGImages" / "img2.jpg", 1)
    write_mask(tmp_path / "SegmentationClassPNG" / "img1.png", mask_with([0, 1, 2, 255]))
    (tmp_path / "SegmentationClass").mkdir()
    np.save(tmp_path / "SegmentationClass" / "img1.npy", mask_with([2]).astype(np.int32))  # PNG preferred
    np.save(tmp_path / "SegmentationClass" / "img2.npy", mask_with([1, -1]).astype(np.int32))
    (tmp_path / "class_names.txt").write_text("_background_\nperson\ncar")
    ds = get_dataset("folder", tmp_path, "all")
    assert ds.classes == ["_background_", "person", "car"]
    assert sample(ds)[1].flat[:4].tolist() == [0, 1, 2, 255]
    assert sample(ds, 1)[1].flat[:2].tolist() == [1, 255]


def test_folder_class_options_and_errors(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    write_mask(tmp_path / "masks" / "a.png", mask_with([0, 4]))
    with pytest.raises(UserError, match="no classes.txt or class_names.txt in .*pass num_classes=N"):
        get_dataset("folder", tmp_path, "all")
    ds = get_dataset("folder", tmp_path, "all", num_classes=5)
    assert ds.classes == [f"class_{i}" for i in range(5)]
    write_image(tmp_path / "images" / "b.jpg")
    with pytest.raises(UserError, match=r"1 image\(s\) in .*images have no mask with the same stem .*b.jpg"):
        get_dataset("folder", tmp_path, "all", num_classes=5)
    (tmp_path / "classes.txt").write_text("a 0 0 0\nb\n")
    with pytest.raises(UserError, match="give a colour 'name R G B' on every class line or on none"):
        get_dataset("folder", tmp_path, "all")
    with pytest.raises(UserError, match="folder dataset root not found"):
        get_dataset("folder", tmp_path / "missing", "all")
