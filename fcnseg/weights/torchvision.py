"""torchvision ImageNet classification weights → fcnseg backbones (through torchvision's weights API)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.hub import get_dir
from torchvision.models import get_model_weights

from ..errors import UserError
from ..files import safe_torch_load

log = logging.getLogger("fcnseg")

CLASSIFIER_PREFIXES = ("fc.", "AuxLogits.", "classifier.")


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The default ImageNet weights of torchvision model ``backbone``: from the TORCH_HOME cache when present,
    downloaded (with torchvision's checksum check) when online; offline and missing → one line saying what to
    fetch and where to put it."""
    weights = get_model_weights(backbone).DEFAULT
    filename = os.path.basename(weights.url)
    cached = Path(get_dir()) / "checkpoints" / filename
    if cached.is_file():  # torch.hub would unpickle it with weights_only=False, and checks hashes only on download
        try:
            return safe_torch_load(cached)
        except UserError as e:
            raise UserError(f"{e}; delete {cached} to download it again from {weights.url}") from None
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash is a RuntimeError
        if "hash" in str(e).lower():  # torch.hub removes a download that fails the check
            raise UserError(f"the download of {weights.url} does not match torchvision's checksum for {weights}: "
                            f"try again, or download it by hand and put it at {cached}") from None
        raise UserError(f"cannot get ImageNet weights for {backbone} ({e.__class__.__name__}; offline?): download "
                        f"{weights.url} and put it at {cached}, or pass a local file as the weights, or start from "
                        f"random weights (fcnseg train --pretrained-backbone none)") from None


def vgg_features_only(state: dict[str, torch.Tensor], source) -> bool:
    """torchvision's VGG16 ``IMAGENET1K_FEATURES`` file: valid ``features``, a classifier of missing values."""
    if "features.0.weight" not in state:
        return False
    return "amdegroot" in Path(str(source)).name or any(
        not torch.isfinite(v).all() for k, v in state.items() if k.startswith("classifier."))


def from_torchvision(model: nn.Module, state: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """Rename a torchvision classification state dict into fcnseg backbone names; VGG's classifier fc6/fc7
    become the convolutionalized ``backbone.fc6`` / ``backbone.fc7`` (fc8, the 1000-way layer, is dropped)."""
    bb = model.backbone
    name = bb.name
    out = {}
    if name in ("vgg16", "vgg19"):
        for k, v in state.items():
            if k.startswith("features."):
                out[f"backbone.{k}"] = v
        features_only = vgg_features_only(state, source)
        if features_only:
            log.warning("%s: features-only VGG weights (the classifier holds no values): fc6 and fc7 keep their "
                        "initialisation", source)
        for src, dst, shape in (("classifier.0", "fc6", (4096, 512, 7, 7)), ("classifier.3", "fc7", (4096, 4096, 1, 1))):
            if f"{src}.weight" in state and not features_only:
                w = state[f"{src}.weight"]
                if w.numel() != torch.Size(shape).numel():
                    raise UserError(f"{source}: {src}.weight has shape {tuple(w.shape)}, expected 4096 outputs "
                                    f"from a 7x7x512 (fc6) or 4096 (fc7) input")
                out[f"backbone.{dst}.weight"] = w.reshape(shape)
                out[f"backbone.{dst}.bias"] = state[f"{src}.bias"]
    else:
        prefix = "backbone.features." if name == "mobilenet_v3_large" else "backbone.body."
        for k, v in state.items():
            if k.startswith(CLASSIFIER_PREFIXES):
                continue
            out[prefix + (k[len("features."):] if name == "mobilenet_v3_large" else k)] = v
    if not out:
        raise UserError(f"{source}: no tensors match backbone {name} (is it a {name} state dict?)")
    own = model.state_dict()
    stray = [k for k in out if k not in own]
    if stray:
        raise UserError(f"{source}: tensor {stray[0]} does not exist in backbone {name} (a state dict of another "
                        f"network?)")
    return out
