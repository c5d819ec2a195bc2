"""Largest training batch of FCN-8s VGG16 (aligned) at 512×512 that fits a memory limit (default 12 GiB).

Each trial is one SGD training step in a fresh process; its peak is ``torch.cuda.max_memory_allocated`` on a GPU and
the process's RSS high-water mark on the CPU (where the process's data allocations are also capped at the limit, so a
batch that cannot fit fails at once). The batch doubles from 4 until a step does not fit, then bisection finds the
boundary:

    python benchmarks/max_batch.py                    # CPU RSS, with and without activation checkpointing
    python benchmarks/max_batch.py --device cuda      # on a GPU
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(spec: dict) -> dict:
    if spec.get("limit_mib") and spec["device"] == "cpu":  # allocations past the limit fail at once (Linux)
        import resource
        limit = int(spec["limit_mib"] * 2**20)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    from fcnseg import build_model
    from fcnseg.benchmark import peak_rss_mib, train_step
    dev = torch.device(spec["device"])
    torch.manual_seed(0)
    model = build_model("fcn8s", backbone="vgg16", num_classes=21)
    if spec["checkpointing"]:
        from fcnseg.models.activation_checkpointing import enable_activation_checkpointing
        enable_activation_checkpointing(model)
    n, s = spec["batch"], spec["size"]
    x, y = torch.randn(n, 3, s, s), torch.randint(0, 21, (n, s, s))
    step = train_step(model, x, y, amp=spec["amp"], channels_last=True, device=dev,
                      step_in_backward=spec.get("step_in_backward", False))
    step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        return {"peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20}
    return {"peak_mib": peak_rss_mib()}


def trial(spec: dict) -> float | None:
    """Peak MiB of one step, or None when the step ran out of memory."""
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        err = out.stderr.lower()
        if any(m in err for m in ("out of memory", "can't allocate memory", "memoryerror")) or out.returncode in (-9, 137):
            return None
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def largest(base: dict, limit_mib: float, log) -> tuple[int, dict]:
    """Doubling from batch 4 until a step does not fit (fails, or peaks above the limit), then bisection."""
    peaks: dict[int, float | None] = {}

    def fits(b: int) -> bool:
        peaks[b] = trial(dict(base, batch=b, limit_mib=limit_mib))
        ok = peaks[b] is not None and peaks[b] <= limit_mib
        log(f"  batch {b}: {'out of memory' if peaks[b] is None else f'{peaks[b]:.0f} MiB'}"
            f"{'' if ok else ' — does not fit'}")
        return ok

    lo, hi, b = 0, None, 4
    while hi is None:
        if fits(b):
            lo, b = b, 2 * b
        else:
            hi = b
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--limit-gib", type=float, default=12.0)
    ap.add_argument("--amp", default="none", help="none | bf16 | fp16")
    ap.add_argument("--configs", default="plain,ckpt,ckpt+sib",
                    help="comma-separated: plain | ckpt (activation checkpointing) | sib (step in backward) | ckpt+sib")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from fcnseg.provenance import provenance, summary
    record = provenance(args.device)
    print(f"provenance: {summary(record)}; command: {record['command']}")
    kind = "max_memory_allocated" if args.device.startswith("cuda") else "process RSS high-water mark"
    print(f"FCN-8s VGG16 aligned, {args.size}×{args.size}, one SGD step, {args.amp}, channels_last, {args.device} "
          f"({kind}); limit {args.limit_gib:g} GiB")
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        parts = set(config.split("+"))
        if not parts <= {"plain", "ckpt", "sib"}:
            raise SystemExit(f"unknown configuration {config!r}; use plain, ckpt, sib or ckpt+sib")
        print(f"{config} (activation checkpointing {'on' if 'ckpt' in parts else 'off'}, step in backward "
              f"{'on' if 'sib' in parts else 'off'}):")
        b, _ = largest({"device": args.device, "size": args.size, "amp": args.amp, "checkpointing": "ckpt" in parts,
                        "step_in_backward": "sib" in parts}, args.limit_gib * 1024, lambda m: print(m, flush=True))
        print(f"  → largest batch within {args.limit_gib:g} GiB: {b}")


if __name__ == "__main__":
    main()
