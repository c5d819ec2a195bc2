"""pytorch-fcn (``torchfcn``) state dicts: its layer names are the Caffe names (conv1_1 … fc7, score_fr, …)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError


def from_pytorch_fcn(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename pytorch-fcn keys to fcnseg's: VGG layers go under ``backbone.``, head layers keep their names."""
    if not hasattr(model.backbone, "caffe_names"):
        raise UserError(f"pytorch-fcn weights are VGG16 FCNs; this model's backbone is {model.backbone.name}")
    names = model.backbone.caffe_names()
    out = {}
    for k, v in state.items():
        layer, _, param = k.partition(".")
        out[f"backbone.{names[layer]}.{param}" if layer in names else k] = v
    return out


def to_pytorch_fcn(model: nn.Module) -> dict[str, torch.Tensor]:
    """fcnseg VGG FCN → pytorch-fcn key names (the inverse of :func:`from_pytorch_fcn`)."""
    inverse = {f"backbone.{v}": k for k, v in model.backbone.caffe_names().items()}
    out = {}
    for k, v in model.state_dict().items():
        prefix, _, param = k.rpartition(".")
        out[f"{inverse[prefix]}.{param}" if prefix in inverse else k] = v
    return out
