"""torch.hub entry points: ``torch.hub.load("OWNER/fcnseg", "fcn8s", weights="voc-fcn8s")``, or from a clone,
``torch.hub.load(path, "fcn8s", source="local", weights="voc-fcn8s")``. Names: ``fcnseg.list_weights()``."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from fcnseg import list_weights  # noqa: F401  (torch.hub.list shows it next to the models)
from fcnseg import build_model

dependencies = ["torch", "torchvision"]


def _fcn(arch: str, weights: str | None, num_classes: int | None, backbone: str | None, geometry: str | None,
         pretrained_backbone: str | Path | None) -> nn.Module:
    return build_model(arch, weights=weights, num_classes=num_classes, backbone=backbone, geometry=geometry,
                       pretrained_backbone=pretrained_backbone)


def fcn32s(*, weights: str | None = None, num_classes: int | None = None, backbone: str | None = None,
           geometry: str | None = None, pretrained_backbone: str | Path | None = None) -> nn.Module:
    """FCN-32s; ``weights`` names released weights (e.g. ``voc-fcn32s``), or ``num_classes`` builds a fresh one."""
    return _fcn("fcn32s", weights, num_classes, backbone, geometry, pretrained_backbone)


def fcn16s(*, weights: str | None = None, num_classes: int | None = None, backbone: str | None = None,
           geometry: str | None = None, pretrained_backbone: str | Path | None = None) -> nn.Module:
    """FCN-16s; ``weights`` names released weights (e.g. ``voc-fcn16s``), or ``num_classes`` builds a fresh one."""
    return _fcn("fcn16s", weights, num_classes, backbone, geometry, pretrained_backbone)


def fcn8s(*, weights: str | None = None, num_classes: int | None = None, backbone: str | None = None,
          geometry: str | None = None, pretrained_backbone: str | Path | None = None) -> nn.Module:
    """FCN-8s; ``weights`` names released weights (e.g. ``voc-fcn8s``), or ``num_classes`` builds a fresh one."""
    return _fcn("fcn8s", weights, num_classes, backbone, geometry, pretrained_backbone)


def fcn8s_atonce(*, weights: str | None = None, num_classes: int | None = None, backbone: str | None = None,
                 geometry: str | None = None, pretrained_backbone: str | Path | None = None) -> nn.Module:
    """FCN-8s trained all at once (scaled skips); ``weights`` e.g. ``voc-fcn8s-atonce``."""
    return _fcn("fcn8s-atonce", weights, num_classes, backbone, geometry, pretrained_backbone)
