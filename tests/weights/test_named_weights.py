"""Named weights (``build_model(weights=NAME)``, ``list_weights``, ``hubconf.py``) and ``.safetensors`` files.

Nothing here touches the network: downloads are served from ``file://`` URLs or refused, the cache is a temporary
TORCH_HOME, and the registry gets a tiny entry whose checksum is computed here with ``hashlib``. The registry's own
data is checked against independent copies: the authors' numbers written out below and torchfcn's source.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import re
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import fcnseg
import fcnseg.data.download as download
from fcnseg.errors import UserError
from fcnseg.normalization import CAFFE_BGR, Normalization
from fcnseg.weights import detect_format, registry
from fcnseg.weights.caffemodel import write_caffemodel
from fcnseg.weights.pytorch_fcn import to_pytorch_fcn

REPO = Path(__file__).resolve().parents[2]
TINY = "tiny-fcn32s"
TINY_NORM = Normalization((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), name="tiny")


def digest(path: Path, algo: str = "sha256") -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algo).hexdigest()


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and message
    return message


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor random (head included), so nothing equals a fresh model's initialisation by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    return model


def tiny_model() -> torch.nn.Module:
    return randomized(fcnseg.build_model("fcn32s", backbone="mobilenet_v3_large", num_classes=3), seed=0)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME; only file:// downloads work (anything else fails as it would offline)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    real = download.urlopen

    def local_only(req, *args, **kwargs):
        url = req.full_url if hasattr(req, "full_url") else req
        if not url.startswith("file:"):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return real(req, *args, **kwargs)

    monkeypatch.setattr(download, "urlopen", local_only)
    return tmp_path / "torch-home" / "hub" / "checkpoints"


@pytest.fixture
def tiny(tmp_path, monkeypatch, home):
    """A registry entry for a small FCN-32s (MobileNetV3, 3 classes) served from a local file, its real sha256."""
    state = tiny_model().state_dict()
    remote = tmp_path / "server" / "tiny.pt"
    remote.parent.mkdir()
    torch.save(state, remote)
    entry = registry.WeightsEntry(
        TINY, remote.as_uri(), "tiny.pt", "fcn32s", ("sky", "road", "car"), TINY_NORM, source="this test",
        backbone="mobilenet_v3_large", geometry="aligned", format="fcnseg", sha256=digest(remote),
        palette=((1, 2, 3), (4, 5, 6), (7, 8, 9)))
    monkeypatch.setitem(registry.WEIGHTS, TINY, entry)
    return entry, state, remote


def register(monkeypatch, entry, **changes) -> registry.WeightsEntry:
    entry = dataclasses.replace(entry, **changes)
    monkeypatch.setitem(registry.WEIGHTS, entry.name, entry)
    return entry


def assert_same(state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    own = model.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert own[k].dtype == v.dtype and torch.equal(own[k], v), k


# ------------------------------------------------------------------------------------------------ the registry

def test_list_weights_holds_the_released_nets():
    names = fcnseg.list_weights()
    assert names == list(registry.WEIGHTS)
    assert set(names) == {"voc-fcn32s", "voc-fcn16s", "voc-fcn8s", "voc-fcn8s-atonce",
                          "siftflow-fcn32s", "siftflow-fcn16s", "siftflow-fcn8s",
                          "pascalcontext-fcn32s", "pascalcontext-fcn16s", "pascalcontext-fcn8s",
                          "nyud-fcn32s-color", "pytorch-fcn-voc-fcn32s", "pytorch-fcn-voc-fcn16s",
                          "pytorch-fcn-voc-fcn8s", "pytorch-fcn-voc-fcn8s-atonce"}
    models = set(fcnseg.list_models())
    classes = {"voc": 21, "pytorch": 21, "siftflow": 33, "pascalcontext": 60, "nyud": 40}
    for name in names:
        e = registry.get_weights(name)
        assert f"{e.arch}/{e.backbone}/{e.geometry}" in models, name
        assert e.num_classes == classes[name.split("-")[0]], name
        assert e.source and e.url.startswith(("http://dl.caffe.berkeleyvision.org/", "https://drive.google.com/",
                                              "http://drive.google.com/")), name
        assert (e.metric is None) == (e.metric_source is None), name
        assert bool(e.sha256 or e.sha1 or e.md5) == bool(e.checksum_source), name
        for value, length in ((e.sha256, 64), (e.sha1, 40), (e.md5, 32)):
            assert value is None or re.fullmatch(f"[0-9a-f]{{{length}}}", value), name
    assert len({registry.get_weights(n).filename for n in names}) == len(names)  # no two share a cache file


def test_entries_carry_the_authors_preprocessing_and_classes():
    """Written out from the authors' data layers (voc_layers.py, siftflow_layers.py, nyud_layers.py) and class
    lists, independently of the registry's own constants."""
    voc = registry.get_weights("voc-fcn8s")
    assert voc.normalization == CAFFE_BGR and voc.classes[0] == "background" and voc.classes[-1] == "tvmonitor"
    assert voc.palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0))  # the VOC colour map
    sift = registry.get_weights("siftflow-fcn8s")
    assert sift.normalization.mean == (114.578, 115.294, 108.353) and sift.normalization.bgr
    assert sift.classes[0] == "awning" and sift.classes[-1] == "window" and sift.palette is None
    ctx = registry.get_weights("pascalcontext-fcn8s")
    assert ctx.classes[:2] == ("background", "aeroplane") and ctx.classes[21] == "bag" and ctx.classes[59] == "wood"
    nyud = registry.get_weights("nyud-fcn32s-color")
    assert nyud.normalization.mean == (116.190, 97.203, 92.318) and nyud.normalization.value_range == 255
    assert nyud.classes[0] == "wall" and nyud.classes[-1] == "otherprop"
    assert registry.get_weights("voc-fcn8s-atonce").arch == "fcn8s-atonce"


def test_pytorch_fcn_urls_and_md5_are_torchfcns():
    """The registry's pytorch-fcn entries against torchfcn's own source (its download methods), read as text."""
    spec = pytest.importorskip("importlib.util").find_spec("torchfcn")
    if spec is None:
        pytest.skip("torchfcn is not installed")
    found = {}
    for source in sorted(Path(spec.origin).parent.joinpath("models").glob("fcn*.py")):
        text = source.read_text()
        for path, url, md5 in re.findall(r"pretrained_model = \\\s*osp.expanduser\('[^']*/([^'/]+)'\).*?"
                                         r"url='([^']+)'.*?md5='([0-9a-f]+)'", text, re.S):
            found[path] = (url, md5)
    assert len(found) == 4
    ours = {e.filename: (e.url, e.md5) for e in registry.WEIGHTS.values() if e.format == "pytorch-fcn"}
    assert ours == found


def test_unknown_name_and_disagreeing_arguments_fail_before_any_download(tiny, home):
    with pytest.raises(ValueError, match="unknown weights 'voc-fcn9s'; valid: voc-fcn32s, "):
        fcnseg.build_model(weights="voc-fcn9s")
    for kwargs, word in (({"arch": "fcn8s"}, "arch='fcn8s'"), ({"num_classes": 5}, "num_classes=5"),
                         ({"backbone": "resnet18"}, "backbone='resnet18'"), ({"geometry": "caffe"}, "geometry")):
        with pytest.raises(ValueError, match=re.escape(word)):
            fcnseg.build_model(weights=TINY, **kwargs)
    with pytest.raises(ValueError, match="not both"):
        fcnseg.build_model(weights=TINY, pretrained_backbone="imagenet")
    with pytest.raises(ValueError, match="num_classes"):
        fcnseg.build_model("fcn8s")
    assert not home.exists() or not any(home.iterdir())


# ------------------------------------------------------------------------------------------------ fetch, verify, load

def test_named_weights_download_verify_and_load(tiny, home, monkeypatch):
    entry, state, _ = tiny
    model = fcnseg.build_model(weights=TINY)
    assert_same(state, model)
    assert model.normalization == TINY_NORM
    assert model.classes == ["sky", "road", "car"] and model.palette == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert sorted(p.name for p in home.iterdir()) == ["tiny.pt"]  # no .part left behind
    assert digest(home / "tiny.pt") == entry.sha256

    monkeypatch.setattr(download, "urlopen", lambda *a, **k: pytest.fail("the cached file must be used"))
    again = fcnseg.build_model("fcn32s", weights=TINY, num_classes=3)  # agreeing arguments are fine
    assert_same(state, again)


def test_wrong_checksum_is_one_line_and_leaves_nothing(tiny, home, monkeypatch):
    entry = register(monkeypatch, tiny[0], sha256="0" * 64)
    with pytest.raises(UserError) as e:
        fcnseg.build_model(weights=TINY)
    message = one_line(e)
    assert f"checksum mismatch for {entry.url}" in message and f"sha256 {tiny[0].sha256}" in message
    assert list(home.iterdir()) == []


def test_a_wrong_file_in_the_cache_is_refused(tiny, home):
    entry, _, _ = tiny
    home.mkdir(parents=True)
    placed = home / entry.filename
    torch.save({"backbone.nothing": torch.zeros(1)}, placed)
    with pytest.raises(UserError) as e:
        fcnseg.build_model(weights=TINY)
    message = one_line(e)
    assert str(placed) in message and "delete it" in message and entry.url in message
    assert placed.exists()  # a file a person put there is theirs to delete


def test_a_web_page_instead_of_the_file_says_so(tiny, home, monkeypatch, tmp_path):
    page = tmp_path / "server" / "uc"
    page.write_text("<!DOCTYPE html><html><body>Google Drive can't scan this file for viruses.</body></html>")
    register(monkeypatch, tiny[0], url=page.as_uri(), sha256=None, md5="0" * 32)
    with pytest.raises(UserError) as e:
        fcnseg.build_model(weights=TINY)
    message = one_line(e)
    assert "sent a web page" in message and str(home / "tiny.pt") in message and "browser" in message
    assert list(home.iterdir()) == []


def test_offline_with_nothing_cached_names_url_and_cache_path(home):
    with pytest.raises(UserError) as e:
        fcnseg.build_model(weights="voc-fcn8s")
    message = one_line(e)
    url = "http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel"
    assert url in message and str(home / "fcn8s-heavy-pascal.caffemodel") in message and "by hand" in message
    assert list(home.iterdir()) == []


def test_without_a_published_checksum_the_first_download_reports_its_sha256(tiny, monkeypatch, caplog):
    entry = register(monkeypatch, tiny[0], sha256=None)
    with caplog.at_level(logging.WARNING, logger="fcnseg"):
        model = fcnseg.build_model(weights=TINY)
    assert_same(tiny[1], model)
    assert digest(tiny[2]) in caplog.text and "no published checksum" in caplog.text and entry.url in caplog.text


@pytest.mark.slow
def test_an_authors_caffemodel_placed_by_hand_loads_by_name(home, monkeypatch):
    """voc-fcn32s end to end, offline: a random FCN-32s written in the authors' caffemodel layout, put in the cache
    by hand; the entry's published sha1 is swapped for this file's, so the real verification runs. Slow: a 545 MB
    file and two VGG16 models (20 s on 2 cores)."""
    source = randomized(fcnseg.build_model("fcn32s", geometry="caffe", num_classes=21), seed=1)
    state = source.state_dict()
    layers: dict[str, list[np.ndarray]] = {}
    for key, value in to_pytorch_fcn(source).items():
        layer, param = key.rsplit(".", 1)
        layers.setdefault(layer, []).insert(0 if param == "weight" else 1, value.numpy())
    del source
    home.mkdir(parents=True)
    placed = home / "fcn32s-heavy-pascal.caffemodel"
    write_caffemodel(placed, layers)
    del layers
    register(monkeypatch, registry.get_weights("voc-fcn32s"),
             sha1=digest(placed, "sha1"))
    model = fcnseg.build_model(weights="voc-fcn32s")
    assert_same(state, model)
    assert model.geometry == "caffe" and model.normalization == CAFFE_BGR
    assert model.classes[15] == "person" and model.palette[15] == (192, 128, 128)


# ------------------------------------------------------------------------------------------------ hubconf

def test_hubconf_offline(tiny, home):
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {name for name, f in vars(hubconf).items() if callable(f) and not name.startswith("_")}  # hub.list's rule
    assert {"fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce", "list_weights"} <= entries
    assert hubconf.dependencies == ["torch", "torchvision"]
    model = torch.hub.load(str(REPO), "fcn32s", source="local", weights=TINY)
    assert_same(tiny[1], model)
    assert model.classes == ["sky", "road", "car"]
    fresh = torch.hub.load(str(REPO), "fcn8s", source="local", num_classes=4, backbone="mobilenet_v3_large")
    assert fresh.arch == "fcn8s" and fresh.num_classes == 4
    with pytest.raises(ValueError, match="arch='fcn8s'"):
        torch.hub.load(str(REPO), "fcn8s", source="local", weights=TINY)
    with pytest.raises(UserError) as e:
        torch.hub.load(str(REPO), "fcn8s_atonce", source="local", weights="voc-fcn8s-atonce")
    assert "fcn8s-atonce-pascal.caffemodel" in one_line(e)


# ------------------------------------------------------------------------------------------------ safetensors

def test_safetensors_round_trip_is_bit_identical(tmp_path):
    from safetensors.torch import load_file

    model = tiny_model()
    model.normalization, model.classes, model.palette = TINY_NORM, ["sky", "road", "car"], [(1, 2, 3), (4, 5, 6),
                                                                                              (7, 8, 9)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = fcnseg.save_weights(model, tmp_path / "tiny.safetensors")
    assert detect_format(path) == "safetensors"
    written = load_file(str(path))  # the format's own reader
    assert set(written) == set(state)
    for k, v in state.items():
        assert written[k].numpy().tobytes() == v.numpy().tobytes() and written[k].dtype == v.dtype, k

    fresh = fcnseg.build_model("fcn32s", backbone="mobilenet_v3_large", num_classes=3)
    report = fcnseg.load_weights(fresh, path, strict_classes=True)
    assert report["missing"] == [] and report["unexpected"] == []
    assert_same(state, fresh)
    assert fresh.normalization == TINY_NORM
    assert fresh.classes == ["sky", "road", "car"] and fresh.palette == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]  # no temporary file left


def test_foreign_safetensors_state_dict_loads(tmp_path):
    """A torchvision state dict saved by safetensors itself (as model hubs publish them), without any metadata."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    tv = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.bin"  # found by content, not by suffix
    save_file(tv, str(path))
    model = fcnseg.build_model("fcn8s", backbone="resnet18", num_classes=3)
    fcnseg.load_weights(model, path)
    own = model.state_dict()
    for k, v in tv.items():
        if not k.startswith("fc."):
            assert torch.equal(own[f"backbone.body.{k}"], v), k


def _header_file(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


@pytest.mark.parametrize("damage", ["truncated", "truncated header", "not a tensor", "not safetensors"])
def test_bad_safetensors_file_is_one_line(tmp_path, damage):
    model = tiny_model()
    path = tmp_path / "bad.safetensors"
    fcnseg.save_weights(model, path)
    data = path.read_bytes()
    path.write_bytes({
        "truncated": data[:len(data) // 2],
        "truncated header": data[:20],
        "not a tensor": _header_file({"backbone.x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                      "note": "a string, not a tensor"}, b"\0" * 4),
        "not safetensors": b"just some text, saved under a .safetensors name\n" * 4,
    }[damage])
    with pytest.raises(UserError) as e:
        fcnseg.load_weights(model, path)
    message = one_line(e)
    assert str(path) in message and "safetensors" in message
