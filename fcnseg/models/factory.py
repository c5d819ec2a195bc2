"""``build_model``, the list of valid (arch, backbone, geometry) combinations, ``model_spec`` (what a checkpoint
records to rebuild a model) and ``save_weights`` (a model → ``.safetensors``)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import UserError
from ..weights import load_pretrained_backbone, load_weights
from ..weights.registry import get_weights, weights_file
from ..weights.safetensors import fcnseg_metadata, write_safetensors
from .backbones import BACKBONES, build_backbone
from .baselines import BASELINE_ARCH, BASELINE_BACKBONES, TorchvisionFCN
from .fcn import ARCHS, FCN, PAPER_ARCHS
from .fusion import LateFusion, widen_input

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


def build_model(arch: str | None = None, *, backbone: str | None = None, num_classes: int | None = None,
                geometry: str | None = None, pretrained_backbone: str | Path | None = None,
                learnable_upsampling: bool = False, global_context: bool = False, grid: str | None = None,
                weights: str | None = None, heads: tuple[tuple[str, int], ...] | None = None, in_channels: int = 3,
                streams: int = 1) -> FCN:
    """Build an FCN mapping N×3×H×W (normalised as ``model.normalization`` says) to N×num_classes×H×W logits.

    ``backbone`` defaults to ``"vgg16"`` and ``geometry`` to ``"aligned"``; ``num_classes`` is required unless
    ``weights`` is given.
    ``weights``: a name from :func:`fcnseg.list_weights` (e.g. ``"voc-fcn8s"``, the authors' released FCN-8s): the
    model is built as those weights need (arch, backbone, geometry, classes; arguments that disagree are an error),
    the file is fetched into the TORCH_HOME cache and checked against its published checksum, and the model gets
    the weights' ``classes``, ``palette`` and ``normalization``.
    ``pretrained_backbone``: ``None`` (random), ``"imagenet"`` (torchvision weights through its weights API and the
    TORCH_HOME cache), or a path to a weight file of any format :func:`fcnseg.load_weights` reads.
    ``global_context`` adds ParseNet's image-level branch: class scores of the globally averaged stride-32 features,
    added to every pixel's logits (zero-initialised, so a fresh model predicts as without it).
    ``heads``: ``((name, classes), ...)`` for an FCN with several score heads trained together (the paper's SIFT Flow
    net: ``(("semantic", 33), ("geometric", 3))``); ``num_classes`` is then their sum (see :class:`FCN`).
    ``in_channels``: channels of the input (NYUDv2's RGB-D: 4, early fusion: the first convolution widened, see
    :func:`~fcnseg.models.fusion.widen_input`); ``streams``: split them into that many FCNs whose scores are
    averaged (RGB-HHA: ``in_channels=6, streams=2``, late fusion, :class:`~fcnseg.models.fusion.LateFusion`). Such a
    model keeps the RGB ``normalization`` of its backbone until one for its channels is set (training takes it from
    the dataset's ``input_normalization``).
    """
    if heads:
        if weights is not None or arch == BASELINE_ARCH:
            raise ValueError(f"heads= needs an FCN built by arch (one of {', '.join(ARCHS)}), without weights=")
        total = sum(int(n) for _, n in heads)
        if num_classes not in (None, total):
            raise ValueError(f"num_classes={num_classes} but heads {tuple(heads)} have {total} classes: leave "
                             f"num_classes out")
        num_classes = total
    if in_channels != 3 or streams != 1:
        return _build_fused(arch, in_channels=in_channels, streams=streams, backbone=backbone,
                            num_classes=num_classes, geometry=geometry, pretrained_backbone=pretrained_backbone,
                            learnable_upsampling=learnable_upsampling, global_context=global_context, grid=grid,
                            weights=weights, heads=heads)
    if weights is not None:
        return _build_named(weights, arch=arch, backbone=backbone, num_classes=num_classes, geometry=geometry,
                            pretrained_backbone=pretrained_backbone, learnable_upsampling=learnable_upsampling,
                            global_context=global_context, grid=grid)
    if arch is None or num_classes is None:
        raise ValueError(f"build_model needs {'arch' if arch is None else 'num_classes'} (or weights=NAME; see "
                         f"fcnseg.list_weights())")
    backbone, geometry = backbone or "vgg16", geometry or "aligned"
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
                learnable_upsampling=learnable_upsampling, global_context=global_context, grid=grid, heads=heads)
    model.backbone_name = backbone
    if pretrained_backbone is not None:
        load_pretrained_backbone(model, pretrained_backbone)
    return model


def _build_fused(arch: str | None, *, in_channels: int, streams: int, weights: str | None, **options) -> nn.Module:
    """``build_model`` with another input than RGB: one FCN with a widened first convolution, or several FCNs (one
    per stream of ``in_channels // streams`` channels) under :class:`LateFusion`."""
    if weights is not None or arch == BASELINE_ARCH:
        raise ValueError(f"in_channels / streams need an FCN built by arch (one of {', '.join(ARCHS)}), without "
                         f"weights= (named weights take RGB)")
    if not (isinstance(streams, int) and isinstance(in_channels, int) and 1 <= streams <= in_channels
            and in_channels % streams == 0):
        raise ValueError(f"in_channels={in_channels!r} must split evenly into streams={streams!r} (positive integers)")
    if streams > 1:
        return LateFusion([build_model(arch, in_channels=in_channels // streams, **options) for _ in range(streams)])
    return widen_input(build_model(arch, **options), in_channels)


def _build_named(name: str, *, arch: str | None, backbone: str | None, num_classes: int | None,
                 geometry: str | None, pretrained_backbone: str | Path | None, **options) -> FCN:
    """``build_model(weights=name)``: the registry entry's model, loaded from the cached (or fetched) file."""
    entry = get_weights(name)
    if pretrained_backbone is not None:
        raise ValueError(f"give weights= or pretrained_backbone=, not both (weights {name!r} include the backbone)")
    if options.get("global_context"):
        raise ValueError(f"weights {name!r} have no global-context branch: leave global_context out")
    wanted = {"arch": entry.arch, "backbone": entry.backbone, "geometry": entry.geometry,
              "num_classes": entry.num_classes}
    given = {"arch": arch, "backbone": backbone, "geometry": geometry, "num_classes": num_classes}
    for key, value in given.items():
        if value is not None and value != wanted[key]:
            raise ValueError(f"weights {name!r} are a {entry.arch}/{entry.backbone}/{entry.geometry} net with "
                             f"{entry.num_classes} classes, not {key}={value!r}: leave {key} out")
    path = weights_file(entry)
    model = build_model(**wanted, **options)
    report = load_weights(model, path, format=entry.format, strict_classes=True)
    if report["missing"]:
        raise UserError(f"{path} (weights {name!r}) has no values for {len(report['missing'])} of the model's "
                        f"tensors, e.g. {report['missing'][0]}; delete it and rerun to download {entry.url}")
    model.normalization = entry.normalization
    model.classes = list(entry.classes)
    model.palette = list(entry.palette) if entry.palette else None
    return model


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s weights to a ``.safetensors`` file, with its spec (arch, backbone, geometry,
    normalisation), ``classes`` and ``palette`` as metadata; :func:`fcnseg.load_weights` reads it back."""
    meta = fcnseg_metadata(model_spec(model), getattr(model, "classes", None), getattr(model, "palette", None))
    return write_safetensors(model.state_dict(), path, meta)


def model_spec(model: nn.Module) -> dict:
    """What is needed to rebuild ``model`` (stored in checkpoints)."""
    return {"arch": model.arch, "backbone": model.backbone_name, "num_classes": model.num_classes,
            "geometry": model.geometry, "learnable_upsampling": model.learnable_upsampling,
            **({"grid": model.grid} if hasattr(model, "grid") else {}),
            **({"global_context": True} if getattr(model, "global_context", False) else {}),
            **({"heads": [list(h) for h in model.heads]} if getattr(model, "heads", None) else {}),
            **({"in_channels": model.in_channels} if getattr(model, "in_channels", 3) != 3 else {}),
            **({"streams": len(model.streams)} if isinstance(model, LateFusion) else {}),
            "normalization": model.normalization.to_dict()}
