"""Weight files people actually have, loaded into fcnseg models.

Formats (detected from the file's content; override with ``format=``):

* ``fcnseg``      — fcnseg checkpoints (``last.pt`` / ``best.pt``) or bare fcnseg state dicts;
* ``pytorch-fcn`` — pytorch-fcn's ``*_from_caffe.pth`` and its training checkpoints (``model_state_dict``); its
  ``vgg16_from_caffe.pth`` holds Caffe's VGG16 under torchvision's names, recognised by name or checksum;
* ``torchvision`` — torchvision ImageNet classification state dicts (VGG, ResNet, Inception-v3, MobileNetV3), and
  VGG16's features-only ``IMAGENET1K_FEATURES`` file (its classifier values are missing, so fc6/fc7 are left as they are);
* ``caffemodel``  — the authors' Caffe ``.caffemodel`` binaries, decoded directly (no Caffe needed);
* ``matconvnet``  — MatConvNet SimpleNN ``.mat`` files such as ``imagenet-vgg-verydeep-19.mat``;
* ``safetensors`` — ``.safetensors`` files holding any of the state dicts above (``fcnseg.save_weights`` writes them
  with the model's spec, classes and palette as metadata).

Every torch file is read with ``torch.load(weights_only=True)``; nothing is ever unpickled. Named weights (the
authors' released nets, fetched by name into the TORCH_HOME cache) are in :mod:`fcnseg.weights.registry`.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..files import safe_torch_load
from ..normalization import CAFFE_BGR, IMAGENET, INCEPTION, VGG16_FEATURES, Normalization
from .caffemodel import caffemodel_state_dict
from .matconvnet import matconvnet_state_dict
from .pytorch_fcn import from_pytorch_fcn
from .safetensors import looks_like_safetensors, parse_metadata, read_safetensors
from .torchvision import from_torchvision, imagenet_state_dict, vgg_features_only

log = logging.getLogger("fcnseg")
FORMATS = ("fcnseg", "pytorch-fcn", "torchvision", "caffemodel", "matconvnet", "safetensors")
# pytorch-fcn's VGG16 (torchfcn/models/vgg.py: ~/data/models/pytorch/vgg16_from_caffe.pth): Caffe's weights, which
# expect BGR 0-255 input, saved under torchvision's key names
PYTORCH_FCN_VGG16_MD5 = "aa75b158f4181e7f6230029eb96c1b13"
# pytorch-fcn checkpoints name their model class; at-once FCN-8s scales its skips, the staged nets do not
_PYTORCH_FCN_ATONCE = {"FCN8sAtOnce": True, "FCN8s": False, "FCN16s": False}
_FCNSEG_ATONCE = {"fcn8s-atonce": True, "fcn8s": False, "fcn16s": False, "fcn4s": False}


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
    if path.suffix == ".safetensors" or looks_like_safetensors(head, path.stat().st_size):
        return "safetensors"
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
    if state and not load and not reinit:
        raise UserError(f"{source}: none of its {len(state)} tensors fit this model, e.g. {next(iter(state))} does "
                        f"not exist in it (weights of another network?)")
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
        ups = set(getattr(model, "upsample_layers", list)())
        if reinit <= ups and all(own[k].shape[:2] == state[k].shape[:2] for k in state if k.split(".")[0] in reinit):
            log.warning("%s: %s keep this model's bilinear kernels (the file's have another size: a ResNet, MobileNet "
                        "or Inception head from before the aligned grid)", source, ", ".join(sorted(reinit)))
        else:
            log.warning("%s: %s re-initialised for %d classes (the file has another class count)",
                        source, ", ".join(sorted(reinit)), getattr(model, "num_classes", -1))
    unused_head = [k for k in unexpected if k.split(".")[0] in _HEAD_NAMES or k.startswith(("score", "upscore"))]
    if unused_head and not any(k.split(".")[0] in head for k in load):
        log.warning("%s: its head layers (e.g. %s) do not fit this model, which keeps its own untrained head: train "
                    "it before predicting", source, unused_head[0])
    elif unexpected:
        log.info("%s: %d tensors not used by this model (e.g. %s)", source, len(unexpected), unexpected[0])
    return {"loaded": len(load), "missing": missing, "unexpected": unexpected, "reinitialized": sorted(reinit)}


_HEAD_NAMES = {"score_fr", "score_pool4", "score_pool3", "upscore", "upscore2", "upscore8", "upscore16",
               "upscore_pool4"}


def _check_skip_scaling(model: nn.Module, state: dict, file_atonce: bool | None, path: Path) -> None:
    """FCN-8s at-once multiplies pool4 by 0.01 and pool3 by 0.0001 before scoring them; the staged FCN-16s/8s do
    not. The tensors' names are the same, so weights of one in the other would give skip scores 100× and 10⁴× off
    without any error: refuse, when the file says which it is."""
    arch = getattr(model, "arch", None)
    if file_atonce and arch in ("fcn16s", "fcn8s", "fcn4s"):
        raise UserError(f"{path} holds an FCN-8s at-once net, whose skips are scaled by 0.01 and 0.0001 before "
                        f"scoring: load it into --arch fcn8s-atonce, not {arch}")
    if file_atonce is False and arch == "fcn8s-atonce" and any(k.startswith("score_pool4.") for k in state):
        raise UserError(f"{path} holds a staged FCN-16s/8s net, whose skips are not scaled: load it into --arch "
                        f"fcn8s (or fcn16s), not fcn8s-atonce")


def _pytorch_fcn_vgg16(path: Path, state: dict) -> bool:
    """pytorch-fcn's ``vgg16_from_caffe.pth``: torchvision's VGG16 names, Caffe's weights."""
    if "features.0.weight" not in state or "conv1_1.weight" in state:
        return False
    if "from_caffe" in path.name:
        return True
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest() == PYTORCH_FCN_VGG16_MD5


def load_weights(model: nn.Module, path: str | Path, *, format: str | None = None,  # noqa: A002
                 strict_classes: bool = False) -> dict:
    """Load ``path`` into ``model`` (see the module docstring for formats). Sets ``model.normalization`` to the
    normalisation the weights were trained with. Returns a report (loaded / missing / reinitialized tensors)."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise UserError(f"unknown weight format {format!r}; valid: {', '.join(FORMATS)}")
    fmt = format or detect_format(path)
    if fmt == "safetensors":
        state, meta = read_safetensors(path)
        spec, classes, palette = parse_metadata(meta, path)
        # a file fcnseg wrote reads like an fcnseg checkpoint; any other like the bare state dict it holds
        report = _load_torch_object({"model": state, "model_spec": spec} if spec else state, model, path, None,
                                    strict_classes)
        if classes:
            model.classes, model.palette = classes, palette
        return report
    if fmt in ("torch", "fcnseg", "pytorch-fcn", "torchvision"):
        return _load_torch_object(safe_torch_load(path), model, path, format, strict_classes)
    if fmt == "caffemodel":
        state = caffemodel_state_dict(model, path)
        _check_skip_scaling(model, state, True if any(k.startswith("scale_pool") for k in state) else
                            False if any(k.startswith("score_pool4.") for k in state) else None, path)
        report = load_state_into(model, state, path, strict_classes=strict_classes)
        model.normalization = CAFFE_BGR
        return report
    if fmt == "matconvnet":
        state, norm = matconvnet_state_dict(model, path)
        report = load_state_into(model, state, path)
        model.normalization = norm
        return report
    raise UserError(f"unknown weight format {fmt!r}; valid: {', '.join(FORMATS)}")


def _load_torch_object(obj: object, model: nn.Module, path: Path, format: str | None,  # noqa: A002
                       strict_classes: bool) -> dict:
    """A loaded torch object (or a safetensors state) → ``model``; ``format`` overrides the detected naming."""
    detected, state = _torch_state(obj, path)
    fmt = detected if format is None else format
    if fmt == "fcnseg":
        spec = obj.get("model_spec") if isinstance(obj, dict) else None
        if spec:
            _check_skip_scaling(model, state, _FCNSEG_ATONCE.get(spec.get("arch")), path)
        report = load_state_into(model, state, path, strict_classes=strict_classes)
        if spec:
            model.normalization = Normalization.from_dict(spec["normalization"])
        return report
    caffe_vgg = ((format == "pytorch-fcn" and "features.0.weight" in state and "conv1_1.weight" not in state)
                 or _pytorch_fcn_vgg16(path, state))
    if fmt == "pytorch-fcn" and not caffe_vgg:
        arch = obj.get("arch") if isinstance(obj, dict) and "model_state_dict" in obj else None
        _check_skip_scaling(model, state, _PYTORCH_FCN_ATONCE.get(arch) if arch else
                            True if "atonce" in path.name.lower() else None, path)
        report = load_state_into(model, from_pytorch_fcn(model, state), path, strict_classes=strict_classes)
        model.normalization = CAFFE_BGR
        return report
    report = load_state_into(model, from_torchvision(model, state, path), path)
    if caffe_vgg:
        model.normalization = CAFFE_BGR
    elif vgg_features_only(state, path):
        model.normalization = VGG16_FEATURES
    else:
        model.normalization = INCEPTION if model.backbone.name == "inception_v3" else IMAGENET
    return report


def load_pretrained_backbone(model: nn.Module, source: str | Path) -> dict:
    """``pretrained_backbone=``: ``"imagenet"`` → torchvision's weights API (cache, or download when online);
    anything else is a path given to :func:`load_weights`."""
    if str(source) == "imagenet":
        state = imagenet_state_dict(model.backbone.name)
        report = load_state_into(model, from_torchvision(model, state, f"torchvision:{model.backbone.name}"),
                                 f"torchvision ImageNet weights for {model.backbone.name}")
        model.normalization = INCEPTION if model.backbone.name == "inception_v3" else IMAGENET
        return report
    return load_weights(model, source)
