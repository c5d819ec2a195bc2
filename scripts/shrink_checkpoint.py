"""Shrink a checkpoint into a small test fixture: every tensor keeps its shape and dtype but stores one element
(a stride-0 expansion of its first), except the RNG state, which must stay a valid generator state.

    python scripts/shrink_checkpoint.py RUN/last.pt tests/fixtures/NAME.pt
"""
from __future__ import annotations

import sys

import torch


def shrink(obj, path=()):
    if isinstance(obj, torch.Tensor):
        if path[:1] == ("rng",):
            return obj
        return obj.flatten()[:1].clone().view([1] * obj.ndim).expand(obj.shape) if obj.numel() else obj
    if isinstance(obj, dict):
        return {k: shrink(v, path + (k,)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(shrink(v, path + (i,)) for i, v in enumerate(obj))
    return obj


if __name__ == "__main__":
    src, dst = sys.argv[1:3]
    torch.save(shrink(torch.load(src, map_location="cpu", weights_only=True)), dst)
