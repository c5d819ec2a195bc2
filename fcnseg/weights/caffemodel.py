"""The authors' Caffe ``.caffemodel`` files, decoded directly: no Caffe and no ``protobuf`` package needed.

A ``.caffemodel`` is one serialised ``caffe.NetParameter`` message. Only the few fields that carry weights are read;
the field numbers below are those of BVLC Caffe's ``src/caffe/proto/caffe.proto``:

* ``NetParameter``: ``layer = 100`` (``LayerParameter``, current) and ``layers = 2`` (``V1LayerParameter``, the
  format of the 2014 files such as ``VGG_ILSVRC_16_layers.caffemodel``);
* ``LayerParameter``: ``name = 1``, ``type = 2`` (a string such as ``"Convolution"``), ``blobs = 7``;
* ``V1LayerParameter``: ``name = 4``, ``type = 5`` (an enum), ``blobs = 6``, and ``layer = 1``: a nested
  ``V0LayerParameter`` (``name = 1``, ``blobs = 50``) in which the oldest files keep everything;
* ``BlobProto``: ``num = 1``, ``channels = 2``, ``height = 3``, ``width = 4`` (the legacy 4-D shape), ``data = 5``,
  ``diff = 6``, ``shape = 7`` (``BlobShape``: ``dim = 1``), ``double_data = 8``, ``double_diff = 9``. Repeated
  numbers are declared ``[packed = true]`` but a decoder must accept both encodings, so unpacked runs are read too.

Weights are decoded with ``numpy.frombuffer`` (a 540 MB FCN-8s file reads in about a second; a Python loop per float
would take minutes).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..files import atomic_write

# wire types (protobuf encoding spec): varint, 64-bit, length-delimited, 32-bit; 3/4 (groups) never occur in Caffe
VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5
# V1LayerParameter.LayerType values that write_caffemodel needs (caffe.proto)
V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "Deconvolution": 39}


class _Corrupt(Exception):
    """Internal: the bytes are not a well-formed NetParameter (turned into a UserError naming the file)."""


# ---------------------------------------------------------------------------------------------------- decoding

def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Corrupt(f"a number runs past the end of its message at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt(f"a number longer than 10 bytes at byte {pos}")


def _field(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int, int]:
    """One field at ``pos`` → (number, wire type, value or payload start, payload end, next position)."""
    start = pos
    key, pos = _varint(buf, pos, end)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise _Corrupt(f"field number 0 at byte {start}")
    if wire == VARINT:
        value, pos = _varint(buf, pos, end)
        return number, wire, value, pos, pos
    if wire == BYTES:
        size, pos = _varint(buf, pos, end)
        stop = pos + size
    elif wire in (FIXED32, FIXED64):
        stop = pos + (4 if wire == FIXED32 else 8)
    else:
        raise _Corrupt(f"wire type {wire} (not used by caffe.proto) at byte {start}")
    if stop > end:
        raise _Corrupt(f"field {number} at byte {start} runs past the end of its message (truncated file?)")
    return number, wire, pos, stop, stop


def _unpacked_run(buf: bytes, tag_pos: int, end: int, tag: int, width: int, dtype: str) -> tuple[np.ndarray, int]:
    """Unpacked repeated fixed-width numbers are (1-byte tag, value) records back to back: read the whole run at
    once with numpy instead of one Python iteration per number."""
    rec = width + 1
    n = (end - tag_pos) // rec
    records = np.frombuffer(buf, np.uint8, count=n * rec, offset=tag_pos).reshape(n, rec)
    same = records[:, 0] == tag
    k = n if same.all() else int(np.argmin(same))
    return records[:k, 1:].copy().view(dtype).reshape(-1), tag_pos + k * rec


def _packed(buf: bytes, start: int, stop: int, dtype: str) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    if (stop - start) % width:
        raise _Corrupt(f"packed numbers of {stop - start} bytes at byte {start} are not a multiple of {width}")
    return np.frombuffer(buf, dtype, count=(stop - start) // width, offset=start)


def _blob(buf: bytes, pos: int, end: int, where: str) -> np.ndarray:
    """BlobProto → array (float32 from ``data``, float64 from ``double_data``; gradients are skipped)."""
    floats, doubles, dims, legacy = [], [], [], {}
    while pos < end:
        tag_pos = pos
        number, wire, a, b, pos = _field(buf, pos, end)
        if number in (5, 6, 8, 9):  # data, diff, double_data, double_diff
            dtype = "<f4" if number in (5, 6) else "<f8"
            if wire == BYTES:
                values = _packed(buf, a, b, dtype)
            elif wire == (FIXED32 if number in (5, 6) else FIXED64) and buf[tag_pos] == (number << 3 | wire):
                values, pos = _unpacked_run(buf, tag_pos, end, number << 3 | wire, 4 if number in (5, 6) else 8,
                                            dtype)
            else:
                raise _Corrupt(f"{where}: field {number} has wire type {wire}")
            if number == 5:
                floats.append(values)
            elif number == 8:
                doubles.append(values)
        elif number in (1, 2, 3, 4) and wire == VARINT:
            legacy[number] = a
        elif number == 7 and wire == BYTES:  # BlobShape
            dims = []
            q = a
            while q < b:
                n2, w2, v, stop, q = _field(buf, q, b)
                if n2 == 1 and w2 == VARINT:
                    dims.append(v)
                elif n2 == 1 and w2 == BYTES:  # packed int64: v .. stop holds varints back to back
                    while v < stop:
                        d, v = _varint(buf, v, stop)
                        dims.append(d)
    data = floats or doubles
    values = (np.concatenate(data) if len(data) > 1 else data[0]) if data else np.zeros(0, np.float32)
    values = values.astype(np.float64 if doubles and not floats else np.float32)  # writable, native-endian
    if dims:
        shape = tuple(dims)
    elif legacy:
        n, c, h, w = (legacy.get(i, 1) for i in (1, 2, 3, 4))
        # legacy blobs are always 4-D: an InnerProduct weight is 1x1xOUTxIN, every bias 1x1x1xN (Caffe matches them
        # against the real shape from the right, see Blob::ShapeEquals); convolutions keep OUTxINxHxW
        shape = ((w,) if h == 1 else (h, w)) if n == 1 and c == 1 else (n, c, h, w)
    else:
        shape = (values.size,)
    if int(np.prod(shape)) != values.size:
        raise _Corrupt(f"{where} has {values.size} values for shape {shape}")
    return values.reshape(shape)


def _layer(buf: bytes, pos: int, end: int, v1: bool, index: int) -> tuple[str, list[np.ndarray]]:
    """LayerParameter (V2) or V1LayerParameter → (name, blobs)."""
    name_field, blobs_field = (4, 6) if v1 else (1, 7)
    name, blob_spans, v0 = None, [], None
    while pos < end:
        number, wire, a, b, pos = _field(buf, pos, end)
        if number == name_field and wire == BYTES:
            name = buf[a:b].decode("utf-8", "replace")
        elif number == blobs_field and wire == BYTES:
            blob_spans.append((a, b))
        elif v1 and number == 1 and wire == BYTES:
            v0 = (a, b)
    if v0 is not None:  # V0LayerParameter: name = 1, blobs = 50; used where the V1 layer has none of its own
        q, stop, v0_name, v0_spans = *v0, None, []
        while q < stop:
            number, wire, a, b, q = _field(buf, q, stop)
            if number == 1 and wire == BYTES:
                v0_name = buf[a:b].decode("utf-8", "replace")
            elif number == 50 and wire == BYTES:
                v0_spans.append((a, b))
        name = name if name is not None else v0_name
        blob_spans = blob_spans or v0_spans
    name = name if name is not None else f"layer{index}"
    return name, [_blob(buf, a, b, f"blob {i} of layer {name}") for i, (a, b) in enumerate(blob_spans)]


def read_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Every layer of a ``.caffemodel`` that has weights → its blobs (weight first, then bias), in file order.

    Shapes are the blobs' own (``OUTxINxHxW`` for convolutions, ``OUTxIN`` for InnerProduct, ``N`` for biases).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file not found: {path}")
    with open(path, "rb") as f:
        buf = f.read()
    layers: dict[str, list[np.ndarray]] = {}
    try:
        pos, end, index = 0, len(buf), 0
        while pos < end:
            number, wire, a, b, pos = _field(buf, pos, end)
            if number in (100, 2) and wire == BYTES:  # NetParameter.layer / NetParameter.layers (V1)
                name, blobs = _layer(buf, a, b, number == 2, index)
                index += 1
                if blobs:
                    layers[name] = blobs
            elif number in (100, 2):
                raise _Corrupt(f"NetParameter field {number} has wire type {wire}")
    except _Corrupt as e:
        raise UserError(f"cannot read {path} as a Caffe .caffemodel: {e} (a truncated download, or another kind of "
                        f"file? re-download it)") from None
    if not layers:
        raise UserError(f"{path} holds no Caffe layers with weights (a .prototxt, a solver state, or not a Caffe "
                        f"file at all?)")
    return layers


# ---------------------------------------------------------------------------------------------------- encoding

def _enc_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(number: int, wire: int) -> bytes:
    return _enc_varint(number << 3 | wire)


def _bytes_field(number: int, payload_len: int) -> bytes:
    """The key and length that precede a length-delimited payload."""
    return _tag(number, BYTES) + _enc_varint(payload_len)


def _blob_pieces(array: np.ndarray, v1: bool) -> list:
    a = np.asarray(array)
    if a.dtype == np.float64:
        data, number = np.ascontiguousarray(a, "<f8"), 8
    else:
        data, number = np.ascontiguousarray(a, "<f4"), 5
    if v1:  # V1-era files carry the legacy 4-D shape (num, channels, height, width)
        if a.ndim > 4:
            raise ValueError(f"a V1 caffemodel blob has at most 4 dimensions, got shape {a.shape}")
        dims = (1,) * (4 - a.ndim) + a.shape
        head = b"".join(_tag(i, VARINT) + _enc_varint(d) for i, d in zip((1, 2, 3, 4), dims))
    else:
        packed = b"".join(_enc_varint(d) for d in a.shape)
        shape = _bytes_field(1, len(packed)) + packed
        head = _bytes_field(7, len(shape)) + shape
    raw = memoryview(data).cast("B")
    return [head, _bytes_field(number, raw.nbytes), raw]


def _guess_type(name: str, blobs: list[np.ndarray]) -> str:
    if re.match(r"(upscore|upsample|bigscore|score2$|score4$)", name):
        return "Deconvolution"
    return "InnerProduct" if np.ndim(blobs[0]) == 2 else "Convolution"


def write_caffemodel(path: str | Path, layers: dict[str, list[np.ndarray]], *, v1: bool = False) -> None:
    """Write ``layers`` (name → blobs) as a ``.caffemodel`` that Caffe (and :func:`read_caffemodel`) can load.

    ``v1=True`` writes the deprecated ``layers`` field with legacy 4-D blob shapes, like the 2014 model-zoo files.
    The layer type is guessed from the name and the weight's rank (only Caffe itself looks at it). Written to a
    temporary file first, so an interrupted write never leaves a truncated file under ``path``.
    """
    atomic_write(path, lambda f: _write_net(f, layers, v1))


def _write_net(f, layers: dict[str, list[np.ndarray]], v1: bool) -> None:
    name = b"fcnseg"
    f.write(_bytes_field(1, len(name)) + name)  # NetParameter.name
    for layer, blobs in layers.items():
        kind = _guess_type(layer, blobs)
        lname = layer.encode()
        if v1:
            pieces = [_bytes_field(4, len(lname)), lname, _tag(5, VARINT), _enc_varint(V1_TYPES[kind])]
        else:
            pieces = [_bytes_field(1, len(lname)), lname, _bytes_field(2, len(kind)), kind.encode()]
        for blob in blobs:
            parts = _blob_pieces(blob, v1)
            size = sum(len(p) for p in parts)
            pieces += [_bytes_field(6 if v1 else 7, size)] + parts
        f.write(_bytes_field(2 if v1 else 100, sum(len(p) for p in pieces)))
        for p in pieces:
            f.write(p)


# ---------------------------------------------------------------------------------------------------- fcnseg names

# Head names in the authors' 2014 model-zoo nets (hyphenated and numbered) → fcnseg's (those of their later
# fcn.berkeleyvision.org net.py, which pytorch-fcn also uses). "upsample"/"bigscore" is the final upsampling.
LEGACY_HEAD = {"score": "score_fr", "score_fr": "score_fr", "score2": "upscore2", "score4": "upscore_pool4",
               "score_pool4": "score_pool4", "score_pool3": "score_pool3"}
FINAL_UPSAMPLING = {"fcn32s": "upscore", "fcn16s": "upscore16", "fcn8s": "upscore8", "fcn8s-atonce": "upscore8"}


# The SIFT Flow nets' two heads (siftflow-fcn*/net.py: score_fr_sem, upscore2_geo, …): fcnseg head → layer suffix
HEAD_SUFFIXES = {"semantic": "_sem", "geometric": "_geo"}


def _head_name(layer: str, arch: str) -> str:
    name = layer.replace("-", "_")
    if name.endswith("_sem"):  # SIFT Flow nets into a one-head model: the semantic head; the geometric one is unused
        name = name[:-len("_sem")]
        return name if name in LEGACY_HEAD or name.startswith("upscore") else layer
    if name in ("upsample", "bigscore"):
        return FINAL_UPSAMPLING.get(arch, name)
    if name in LEGACY_HEAD:
        return LEGACY_HEAD[name]
    if re.fullmatch(r"score\d+", name):  # PASCAL-Context's "score59": the classifier on fc7
        return "score_fr"
    return layer


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def caffemodel_state_dict(model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.caffemodel``'s blobs under fcnseg names, for :func:`fcnseg.weights.load_state_into`.

    VGG layers (conv1_1 … fc7) go under ``backbone.``; InnerProduct fc6/fc7 (the ILSVRC VGG files: 4096x25088)
    become the convolutional 4096x512x7x7 / 4096x4096x1x1 kernels; head layers keep their names (blob 0 is the
    weight, blob 1 the bias). Layers the model lacks (fc8, a loss's blobs) come back under their own names, so the
    load report lists them as unexpected.

    The SIFT Flow nets' ``_sem`` and ``_geo`` heads: into a model with the heads ``semantic`` and ``geometric``
    (``model.heads``) each layer pair is stacked as that model holds it — score layers' outputs one after the other,
    the deconvolutions' kernels on the diagonal; into a one-head model only the semantic head loads.
    """
    if not hasattr(model.backbone, "caffe_names"):
        raise UserError(f"{path}: Caffe FCN and ILSVRC weights are VGG networks; this model's backbone is "
                        f"{model.backbone.name} (build it with backbone='vgg16' or 'vgg19')")
    names = model.backbone.caffe_names()
    own = model.state_dict()
    arch = getattr(model, "arch", "fcn8s")
    suffixes = [HEAD_SUFFIXES.get(name) for name, _ in getattr(model, "heads", None) or ()]
    suffixes = suffixes if suffixes and all(suffixes) else []
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, tuple[str, list[np.ndarray]]]] = {}  # fcnseg head layer → suffix → (layer, blobs)
    for layer, blobs in read_caffemodel(path).items():
        suffix = next((x for x in suffixes if layer.replace("-", "_").endswith(x)), None)
        if layer not in names and suffix is not None:
            pairs.setdefault(_head_name(layer[:-len(suffix)], arch), {})[suffix] = (layer, blobs)
            continue
        _put(out, own, f"backbone.{names[layer]}" if layer in names else _head_name(layer, arch), layer, blobs)
    for prefix, parts in pairs.items():
        if len(parts) == len(suffixes):
            _put(out, own, prefix, prefix, _stack_heads(prefix, [parts[x][1] for x in suffixes]))
        else:  # a head without its partner cannot fill the stacked layer: reported as unused
            for layer, blobs in parts.values():
                _put(out, own, layer, layer, blobs)
    return out


def _put(out: dict, own: dict, prefix: str, layer: str, blobs: list[np.ndarray]) -> None:
    """``blobs`` of Caffe layer ``layer`` → ``out[prefix.weight]``, ``out[prefix.bias]`` (shaped as ``own`` holds
    them where only singleton dimensions differ)."""
    for i, blob in enumerate(blobs):
        key = f"{prefix}.{('weight', 'bias')[i]}" if i < 2 else f"{prefix}.blob{i}"
        t = torch.from_numpy(blob).float()
        target = own.get(key)
        if target is not None and t.shape != target.shape and t.numel() == target.numel() and (
                layer in ("fc6", "fc7") or _squeezed(t.shape) == _squeezed(target.shape)):
            # fc6/fc7 as InnerProduct: Caffe flattens its CxHxW input in the same order a view does
            t = t.reshape(target.shape)
        out[key] = t


def _stack_heads(prefix: str, heads: list[list[np.ndarray]]) -> list[np.ndarray]:
    """One layer per head → the stacked layer of a several-head FCN: a deconvolution's C_k×C_k kernels on the
    diagonal (the heads stay apart), anything else (score weights, biases) concatenated along outputs."""
    if prefix.startswith("upscore") and all(b[0].ndim == 4 for b in heads):
        kernels = [b[0] for b in heads]
        n = sum(k.shape[0] for k in kernels)
        weight = np.zeros((n, n, *kernels[0].shape[2:]), dtype=kernels[0].dtype)
        start = 0
        for k in kernels:
            weight[start:start + k.shape[0], start:start + k.shape[1]] = k
            start += k.shape[0]
        return [weight]
    return [np.concatenate([b[i] for b in heads]) for i in range(min(len(b) for b in heads))]
