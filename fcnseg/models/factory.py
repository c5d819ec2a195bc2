"""``build_model``, the list of valid (arch, backbone, geometry) combinations, and ``model_spec`` (what a checkpoint
records to rebuild a model)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..weights import load_pretrained_backbone
from .backbones import BACKBONES, build_backbone
from .baselines import BASELINE_ARCH, BASELINE_BACKBONES, TorchvisionFCN
from .fcn import ARCHS, FCN, PAPER_ARCHS

GEOMETRIES = ("aligned", "caffe")


def list_models() -> list[str]:
    """Every valid ``arch/backbone[/geometry]`` combination, e.g. ``fcn8s/vgg16/caffe``."""
    out = []
    for arch in ARCHS:
        for bb in BACKBONES:
            out.append(f"{arch}/{bb}")
            if bb in ("vgg16", "vgg19") and arch in PAPER_ARCHS:
                out.append(f"{arch}/{bb}/caffe")
    return out + [f"{BASELINE_ARCH}/{bb}" for bb in BASELINE_BACKBONES]


def build_model(arch: str, *, backbone: str = "vgg16", num_classes: int, geometry: str = "aligned",
                pretrained_backbone: str | Path | None = None, learnable_upsampling: bool = False,
                global_context: bool = False, grid: str | None = None) -> FCN:
    """Build an FCN mapping N×3×H×W (normalised as ``model.normalization`` says) to N×num_classes×H×W logits.

    ``pretrained_backbone``: ``None`` (random), ``"imagenet"`` (torchvision weights through its weights API and the
    TORCH_HOME cache), or a path to a weight file of any format :func:`fcnseg.load_weights` reads.
    ``global_context`` adds ParseNet's image-level branch: class scores of the globally averaged stride-32 features,
    added to every pixel's logits (zero-initialised, so a fresh model predicts as without it).
    """
    if arch == BASELINE_ARCH and backbone in BASELINE_BACKBONES and geometry == "aligned" and num_classes >= 1:
        model = TorchvisionFCN(backbone, num_classes)  # a peer for comparisons, not an FCN of the paper
        model.backbone_name = backbone
        return model
    if arch not in ARCHS or backbone not in BACKBONES or geometry not in GEOMETRIES or (
            geometry == "caffe" and (backbone not in ("vgg16", "vgg19") or arch not in PAPER_ARCHS)):
        raise ValueError(f"unknown model {arch}/{backbone}/{geometry}; valid: {', '.join(list_models())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    model = FCN(build_backbone(backbone, geometry=geometry), num_classes, arch=arch, geometry=geometry,
                learnable_upsampling=learnable_upsampling, global_context=global_context, grid=grid)
    model.backbone_name = backbone
    if pretrained_backbone is not None:
        load_pretrained_backbone(model, pretrained_backbone)
    return model


def model_spec(model: nn.Module) -> dict:
    """What is needed to rebuild ``model`` (stored in checkpoints)."""
    return {"arch": model.arch, "backbone": model.backbone_name, "num_classes": model.num_classes,
            "geometry": model.geometry, "learnable_upsampling": model.learnable_upsampling,
            **({"grid": model.grid} if hasattr(model, "grid") else {}),
            **({"global_context": True} if getattr(model, "global_context", False) else {}),
            "normalization": model.normalization.to_dict()}
