"""Recipes on another dataset than their own, and the `fashion` recipe, offline on a tiny CCP folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import yaml
from PIL import Image

from fcnseg.cli import main

# the recipes' model and solver, at a size a test trains in seconds: VGG19 FCN-8s checkpoints with their Adam state
# are 2.2 GB and a minute per run on a 2-core CPU, and the bug under test is in the data options, not the network
SMALL = ["--pretrained-backbone", "none", "--backbone", "resnet18", "--max-iters", "2", "--set", "resize=48",
         "--crop-size", "32", "--workers", "0", "--amp", "none"]


@pytest.fixture(scope="module")
def ccp(tmp_path_factory) -> Path:
    """Ten 60×40 photos in CCP's layout (photos/NNNN.jpg, annotations/pixel-level/NNNN.mat): 0005 and 0010 are val."""
    root = tmp_path_factory.mktemp("ccp")
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    (root / "annotations" / "pixel-level").mkdir(parents=True)
    for i in range(1, 11):
        Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)).save(root / "photos" / f"{i:04d}.jpg")
        gt = np.zeros((60, 40), np.uint8)
        gt[:10], gt[10:50, 8:32] = 19, 14  # hair, dress
        scipy.io.savemat(root / "annotations" / "pixel-level" / f"{i:04d}.mat", {"groundtruth": gt})
    return root


def test_fcn_tensorflow_recipe_trains_on_ccp(ccp, tmp_path, caplog):
    """The recipe's ADE20K option (zero_is_class) is left out with --data ccp: it reached the CCP reader, which
    refused it, so the recipe could not train on anything but ADE20K."""
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="fcnseg"):
        assert main(["train", "--recipe", "fcn-tensorflow", "--data", "ccp", "--root", str(ccp), "--out", str(out),
                     *SMALL]) == 0
    assert "its data_options are for ade20k, not ccp" in caplog.text
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["data"], config["data_options"], config["optimizer"], config["lr"]) == ("ccp", {}, "adam", 1e-4)
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 2 and len(ckpt["classes"]) == 59 and ckpt["classes"][14] == "dress"


def test_fashion_recipe_is_listed_and_trains_offline(ccp, tmp_path, capsys):
    assert main(["recipes"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fashion: "))
    assert all(item in line for item in ("data=ccp", "arch=fcn8s", "backbone=vgg19", "optimizer=adam", "lr=0.0001",
                                         "batch_size=2", "resize=256", "crop_size=224", "pretrained_backbone=imagenet"))
    out = tmp_path / "run"
    assert main(["train", "--recipe", "fashion", "--root", str(ccp), "--out", str(out), *SMALL]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["recipe"], config["data"], config["pretrained_backbone"], config["batch_size"]) == \
        ("fashion", "ccp", None, 2)
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
