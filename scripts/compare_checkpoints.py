"""Compare two checkpoints tensor by tensor: every tensor (model, raw_model, optimizer state, RNG state, …) must be
equal in dtype, shape and value. Other differing values are listed for information (a run's ``used_time`` differs).

    python scripts/compare_checkpoints.py A/last.pt B/last.pt     # exit status 1 when any tensor differs
"""
from __future__ import annotations

import sys

import torch


def walk(a, b, path, report):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        report["tensors"] += 1
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        if not same:
            report["differ"].append(path)
    elif isinstance(a, dict) and isinstance(b, dict):
        for k in a.keys() | b.keys():
            if k not in a or k not in b:
                report["other"].append(f"{path}.{k}: only in {'first' if k in a else 'second'}")
            else:
                walk(a[k], b[k], f"{path}.{k}", report)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", report)
    elif a != b:
        report["other"].append(f"{path}: {a!r} != {b!r}"[:200])


def main(first: str, second: str) -> int:
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
    report = {"tensors": 0, "differ": [], "other": []}
    walk(load(first), load(second), "", report)
    for line in report["other"]:
        print(f"other: {line}")
    for path in report["differ"]:
        print(f"DIFFERS: {path}")
    print(f"{report['tensors']} tensors compared, {len(report['differ'])} differ")
    return 1 if report["differ"] else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
