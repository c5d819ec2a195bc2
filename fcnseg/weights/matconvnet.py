"""MatConvNet SimpleNN ``.mat`` files (``imagenet-vgg-verydeep-16/19.mat``, what FCN.tensorflow loads).

Layout, as ``scipy.io.loadmat`` sees it: ``layers`` is a 1xN cell of structs with ``name``, ``type`` ('conv', 'relu',
'pool', 'softmax', …) and, for 'conv', ``weights`` = {kernel, bias}; the mean image is ``meta.normalization
.averageImage`` (beta-17 and later) or ``normalization.averageImage`` (earlier files). MatConvNet's Caffe importer
stores kernels as HxWxINxOUT (it reverses Caffe's OUTxINxHxW, then swaps to height-first "sane MATLAB" order), so
torch's OUTxINxHxW is ``permute(3, 2, 0, 1)``. fc6/fc7 are already convolutions (7x7x512x4096, 1x1x4096x4096); fc8,
the 1000-way classifier, is not used. Inputs are RGB in 0-255 minus the mean.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import scipy.io
import torch
from scipy.io.matlab import MatReadError
from torch import nn

from ..errors import UserError
from ..normalization import Normalization


def _unbox(x):
    """Strip loadmat's 1x1 wrappers (cells and struct arrays) down to the value or the struct record."""
    while isinstance(x, np.ndarray) and x.size == 1 and (x.dtype == object or x.dtype.names):
        x = x.reshape(-1)[0]
    return x


def _get(struct, field: str):
    """``struct.field`` of a loadmat struct record, or None."""
    struct = _unbox(struct)
    names = getattr(getattr(struct, "dtype", None), "names", None) or ()
    return _unbox(struct[field]) if field in names else None


def _text(x) -> str:
    x = _unbox(x)
    if isinstance(x, np.ndarray):
        return "".join(str(c) for c in x.reshape(-1))
    return "" if x is None else str(x)


def read_matconvnet(path: str | Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[float, float, float]]:
    """A SimpleNN file's conv layers (name → (HxWxINxOUT kernel, bias of OUT values), in file order) and its RGB
    mean pixel (the per-channel mean of ``averageImage``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file not found: {path}")
    try:
        data = scipy.io.loadmat(path)
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError, IndexError, KeyError, EOFError,
            zlib.error, struct.error) as e:  # what scipy's reader raises on truncated or corrupt files
        raise UserError(f"cannot read {path} as a MATLAB file: {str(e).splitlines()[0][:160]} (truncated? a v7.3 "
                        f"file must be re-saved with -v7)") from None
    if "layers" not in data and "net" in data:  # saved with save(file, 'net')
        data = {k: _get(data["net"], k) for k in ("layers", "meta", "normalization")}
    if data.get("layers") is None:
        raise UserError(f"{path} has no 'layers' variable: not a MatConvNet SimpleNN model (a DagNN file? convert "
                        f"it with dagnn.DagNN.saveobj → SimpleNN, or use the imagenet-vgg-verydeep files)")
    norm = _get(data["meta"], "normalization") if data.get("meta") is not None else data.get("normalization")
    average = _get(norm, "averageImage") if norm is not None else None
    if average is None:
        raise UserError(f"{path} has neither meta.normalization.averageImage nor normalization.averageImage: "
                        f"the mean the network was trained with is unknown")
    average = np.asarray(average, dtype=np.float64)
    if average.size == 3:
        mean = average.reshape(3)
    elif average.ndim >= 2 and average.shape[-1] == 3:
        mean = average.reshape(-1, 3).mean(axis=0)
    else:
        raise UserError(f"{path}: averageImage has shape {average.shape}; expected 3 values or an HxWx3 image")
    layers = {}
    for i, entry in enumerate(np.asarray(data["layers"], dtype=object).reshape(-1)):
        if _text(_get(entry, "type")) != "conv":
            continue
        name = _text(_get(entry, "name")) or f"layer{i + 1}"
        weights = _get(entry, "weights")
        if weights is None:  # beta-7 files keep them in 'filters' and 'biases'
            weights = np.array([_get(entry, "filters"), _get(entry, "biases")], dtype=object)
        weights = np.asarray(weights, dtype=object).reshape(-1)
        if weights.size != 2 or weights[0] is None or weights[1] is None:
            raise UserError(f"{path}: conv layer {name} does not hold a kernel and a bias")
        layers[name] = (np.asarray(weights[0], dtype=np.float32), np.asarray(weights[1], dtype=np.float32))
    if not layers:
        raise UserError(f"{path} has no 'conv' layers")
    return layers, tuple(float(m) for m in mean)


def matconvnet_state_dict(model: nn.Module, path: str | Path) -> tuple[dict[str, torch.Tensor], Normalization]:
    """The file's VGG conv1_1 … fc7 under fcnseg names, and the RGB 0-255 normalisation it was trained with."""
    if not hasattr(model.backbone, "caffe_names"):
        raise UserError(f"{path}: MatConvNet imagenet-vgg-verydeep weights are VGG networks; this model's backbone "
                        f"is {model.backbone.name} (build it with backbone='vgg16' or 'vgg19')")
    layers, mean = read_matconvnet(path)
    names = model.backbone.caffe_names()
    bb = model.backbone.name
    stray = [n for n in layers if n not in names and n != "fc8"]
    if stray:
        depth = "vgg19" if "conv5_4" in layers else "vgg16" if "conv5_3" in layers else "another network"
        raise UserError(f"{path}: layer {stray[0]} has no counterpart in backbone {bb} (the file looks like "
                        f"{depth}; build the model with that backbone)")
    absent = [n for n in names if n not in layers]
    if absent:
        raise UserError(f"{path}: no layer {absent[0]} in the file, which backbone {bb} needs (a VGG16 file for a "
                        f"VGG19 model?)")
    own = model.state_dict()
    state = {}
    for layer, path_in_model in names.items():
        kernel, bias = layers[layer]
        key = f"backbone.{path_in_model}"
        expected = own[f"{key}.weight"].shape  # OUT x IN x H x W
        if kernel.shape != (expected[2], expected[3], expected[1], expected[0]) or bias.size != expected[0]:
            raise UserError(f"{path}: layer {layer} has a {'x'.join(map(str, kernel.shape))} kernel and {bias.size} "
                            f"biases; backbone {bb} needs {expected[2]}x{expected[3]}x{expected[1]}x{expected[0]} "
                            f"(HxWxINxOUT) and {expected[0]}")
        state[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"{key}.bias"] = torch.from_numpy(np.ascontiguousarray(bias.reshape(-1)))
    norm = Normalization(mean=mean, std=(1.0, 1.0, 1.0), bgr=False, value_range=255.0, name="matconvnet")
    return state, norm
