"""``.safetensors`` files: an 8-byte header length, a JSON header (names, dtypes, shapes, offsets and string
metadata), then the raw tensor bytes. Nothing in them can run code when read.

fcnseg writes its own tensor names and, as metadata, the model spec, class names and palette (JSON strings under
``fcnseg.*`` keys), so a file it wrote restores the normalisation the weights expect.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import UserError
from ..files import atomic_path


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """The first bytes of a file: a little-endian header length that fits in the file, then a JSON object."""
    return len(head) > 8 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a ``.safetensors`` file; a one-line error for anything else."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise UserError(f"cannot read {path} as safetensors: {first[:200]} (truncated, or not a safetensors file? "
                        f"re-download or re-export it)") from None


def write_safetensors(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> Path:
    """Write ``state`` (CPU copies, contiguous) and ``metadata`` to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        if v.untyped_storage().data_ptr() in seen:  # the format forbids tensors sharing memory: store a copy
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        tensors[k] = v
    with atomic_path(path, hint=" (free disk space or choose another path)") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def fcnseg_metadata(spec: dict, classes: Sequence[str] | None,
                    palette: Sequence[Sequence[int]] | None) -> dict[str, str]:
    """The ``fcnseg.*`` metadata strings :func:`write_safetensors` stores next to a model's tensors."""
    meta = {"fcnseg.model_spec": json.dumps(spec)}
    if classes:
        meta["fcnseg.classes"] = json.dumps(list(classes))
    if palette:
        meta["fcnseg.palette"] = json.dumps([list(map(int, c)) for c in palette])
    return meta


def parse_metadata(metadata: dict[str, str], path: str | Path) -> tuple[dict | None, list | None, list | None]:
    """(model spec, classes, palette) recorded by :func:`fcnseg_metadata`; ``None`` for what is absent."""
    try:
        out = [json.loads(metadata[k]) if k in metadata else None
               for k in ("fcnseg.model_spec", "fcnseg.classes", "fcnseg.palette")]
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: its fcnseg metadata is not valid JSON ({e.msg}); re-export the file") from None
    spec, classes, palette = out
    return spec, classes, [tuple(c) for c in palette] if palette else None
