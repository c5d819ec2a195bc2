"""Weight files people actually have, loaded into fcnseg models.

Formats (detected from the file's content; override with ``format=``):

* ``fcnseg``      — fcnseg checkpoints (``last.pt`` / ``best.pt``) or bare fcnseg state dicts;
* ``pytorch-fcn`` — pytorch-fcn's ``*_from_caffe.pth`` and its training checkpoints (``model_state_dict``);
* ``torchvision`` — torchvision ImageNet classification state dicts (VGG, ResNet, Inception-v3, MobileNetV3);
* ``caffemodel``  — the authors' Caffe ``.caffemodel`` binaries, decoded directly (no Caffe needed);
* ``matconvnet``  — MatConvNet SimpleNN ``.mat`` files such as ``imagenet-vgg-verydeep-19.mat``.

Every torch file is read with ``torch.load(weights_only=True)``; nothing is ever unpickled.
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

log = logging.getLogger("fcnseg")
FORMATS = ("fcnseg", "pytorch-fcn", "torchvision", "caffemodel", "matconvnet")


def safe_torch_load(path: str | Path) -> object:
    """``torch.load(weights_only=True)`` with one-line errors for missing, truncated and unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [e.__class__.__name__]
        # torch's message opens with advice about weights_only=False; the line naming the refused object says more
        first = next((line for line in lines if "GLOBAL" in line), lines[0])
        raise UserError(f"refusing to load {path}: it contains objects other than tensors and plain containers, "
                        f"which could run code ({first[:160]}); only load files you trust with other tools") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0].split(". ")[0]
        raise UserError(f"cannot read {path}: {first[:200]} (truncated or corrupt? re-download "
                        f"or use an earlier checkpoint)") from None


def detect_format(path: str | Path) -> str:
    """Guess a weight file's format from its first bytes (and, for torch files, its keys)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(128)
    if head.startswith(b"MATLAB"):
        return "matconvnet"
    if head.startswith(b"\x89HDF"):
        raise UserError(f"{path} is a MATLAB v7.3 (HDF5) file; save it with -v7 (MatConvNet's own files are v5)")
    # a torch zip archive, or a pickle of protocol 2-5 (legacy torch.save or a plain pickle.dump): b"\x80" + protocol
    if head.startswith(b"PK") or head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "torch"
    return "caffemodel"


def _torch_state(obj: object, path: Path) -> tuple[str, dict]:
    """Classify a loaded torch object → (format, state dict)."""
    if isinstance(obj, dict) and "model" in obj and "model_spec" in obj:
        return "fcnseg", obj["model"]
    if isinstance(obj, dict) and "model_state_dict" in obj:
        return "pytorch-fcn", obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is a torch file but not a state dict or a known checkpoint")
    keys = set(obj)
    if any(k.startswith("backbone.") for k in keys):
        return "fcnseg", obj
    if "conv1_1.weight" in keys:
        return "pytorch-fcn", obj
    return "torchvision", obj


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path, *,
                    strict_classes: bool = False, require_all: bool = False) -> dict:
    """Copy ``state`` (already in fcnseg names) into ``model``.

    Score and upsampling layers whose class count differs are left re-initialised (and reported), unless
    ``strict_classes``; any other shape mismatch is an error naming the layer. Returns a report dict.
    """
    own = model.state_dict()
    head = set(getattr(model, "score_layers", list)()) | set(getattr(model, "upsample_layers", list)())
    load, reinit, unexpected = {}, set(), []
    for k, v in state.items():
        if k not in own:
            unexpected.append(k)
            continue
        if own[k].shape != v.shape:
            layer = k.split(".")[0]
            if layer in head and not strict_classes:
                reinit.add(layer)
                continue
            raise UserError(f"{source}: layer {k} has shape {tuple(v.shape)} but the model expects "
                            f"{tuple(own[k].shape)} (another architecture or backbone?)")
        load[k] = v
    foreign = [k for k in unexpected if k.startswith("backbone.")]
    if foreign and not any(k.startswith("backbone.") for k in load):
        raise UserError(f"{source}: none of its backbone tensors fit this model, e.g. layer {foreign[0]} does not "
                        f"exist in it (a checkpoint of another backbone? check --backbone)")
    missing = [k for k in own if k not in load and k.split(".")[0] not in reinit]
    if require_all and missing:
        raise UserError(f"{source}: no weights for {len(missing)} model tensors, e.g. {missing[0]} (checkpoint of "
                        f"another architecture?)")
    model.load_state_dict(load, strict=False)
    if reinit:
        if hasattr(model, "reset_head"):
            model.reset_head()  # re-initialise the class-dependent layers consistently
            # but keep the loaded values of head layers whose shape did match
            model.load_state_dict({k: v for k, v in load.items() if k.split(".")[0] in head}, strict=False)
        log.warning("%s: %s re-initialised for %d classes (the file has another class count)",
                    source, ", ".join(sorted(reinit)), getattr(model, "num_classes", -1))
    if unexpected:
        log.info("%s: %d tensors not used by this model (e.g. %s)", source, len(unexpected), unexpected[0])
    return {"loaded": len(load), "missing": missing, "unexpected": unexpected, "reinitialized": sorted(reinit)}


def load_weights(model: nn.Module, path: str | Path, *, format: str | None = None,  # noqa: A002
                 strict_classes: bool = False) -> dict:
    """Load ``path`` into ``model`` (see the module docstring for formats). Sets ``model.normalization`` to the
    normalisation the weights were trained with. Returns a report (loaded / missing / reinitialized tensors)."""
    from ..normalization import CAFFE_BGR, IMAGENET, INCEPTION
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise UserError(f"unknown weight format {format!r}; valid: {', '.join(FORMATS)}")
    fmt = format or detect_format(path)
    if fmt in ("torch", "fcnseg", "pytorch-fcn", "torchvision"):
        obj = safe_torch_load(path)
        detected, state = _torch_state(obj, path)
        fmt = detected if format is None else format
        if fmt == "fcnseg":
            report = load_state_into(model, state, path, strict_classes=strict_classes)
            if isinstance(obj, dict) and "model_spec" in obj:
                from ..normalization import Normalization
                model.normalization = Normalization.from_dict(obj["model_spec"]["normalization"])
            return report
        if fmt == "pytorch-fcn":
            from .pytorch_fcn import from_pytorch_fcn
            report = load_state_into(model, from_pytorch_fcn(model, state), path, strict_classes=strict_classes)
            model.normalization = CAFFE_BGR
            return report
        from .torchvision import from_torchvision
        report = load_state_into(model, from_torchvision(model, state, path), path)
        model.normalization = INCEPTION if model.backbone.name == "inception_v3" else IMAGENET
        return report
    if fmt == "caffemodel":
        from .caffemodel import caffemodel_state_dict
        report = load_state_into(model, caffemodel_state_dict(model, path), path, strict_classes=strict_classes)
        model.normalization = CAFFE_BGR
        return report
    if fmt == "matconvnet":
        from .matconvnet import matconvnet_state_dict
        state, norm = matconvnet_state_dict(model, path)
        report = load_state_into(model, state, path)
        model.normalization = norm
        return report
    raise UserError(f"unknown weight format {fmt!r}; valid: {', '.join(FORMATS)}")


def load_pretrained_backbone(model: nn.Module, source: str | Path) -> dict:
    """``pretrained_backbone=``: ``"imagenet"`` → torchvision's weights API (cache, or download when online);
    anything else is a path given to :func:`load_weights`."""
    if str(source) == "imagenet":
        from .torchvision import imagenet_state_dict
        from ..normalization import IMAGENET, INCEPTION
        from .torchvision import from_torchvision
        state = imagenet_state_dict(model.backbone.name)
        report = load_state_into(model, from_torchvision(model, state, f"torchvision:{model.backbone.name}"),
                                 f"torchvision ImageNet weights for {model.backbone.name}")
        model.normalization = INCEPTION if model.backbone.name == "inception_v3" else IMAGENET
        return report
    return load_weights(model, source)
