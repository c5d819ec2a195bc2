"""Backbones: each wraps a torchvision model and returns ``{stride: feature}`` for strides 4, 8, 16 and 32.

Every backbone declares ``out_channels`` ({stride: channels}) and ``default_normalization``; FCN-32s/16s/8s (and
FCN-4s) are then just "which strides to fuse" (see :mod:`fcnseg.models.fcn`).
"""
from __future__ import annotations

from .inception import InceptionBackbone
from .mobilenet import MobileNetBackbone
from .resnet import ResNetBackbone
from .vgg import VGGBackbone

BACKBONES = ("vgg16", "vgg19", "inception_v3", "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large")


def build_backbone(name: str, *, geometry: str = "aligned"):
    """Build a randomly initialised backbone by name (ImageNet weights are loaded by :mod:`fcnseg.weights`)."""
    if name in ("vgg16", "vgg19"):
        return VGGBackbone(name, geometry=geometry)
    if geometry != "aligned":
        raise ValueError(f"geometry {geometry!r} exists only for VGG backbones; use geometry='aligned' with {name}")
    if name.startswith("resnet"):
        return ResNetBackbone(name)
    if name == "inception_v3":
        return InceptionBackbone()
    if name == "mobilenet_v3_large":
        return MobileNetBackbone()
    raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")


__all__ = ["BACKBONES", "build_backbone", "VGGBackbone", "ResNetBackbone", "InceptionBackbone", "MobileNetBackbone"]
