"""``fcnseg export``: a checkpoint → ONNX (needs ``pip install 'fcnseg[export]'``) or TorchScript, verified."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..export import FORMATS, OPSET, export_checkpoint
from .common import add_command


def add_parser(subs) -> None:
    p = add_command(subs, "export", "export a checkpoint to ONNX or TorchScript (input: float RGB 0..255 N×3×H×W, "
                    "normalisation folded in; dynamic batch/height/width), verified against PyTorch",
                    "fcnseg export runs/camvid/best.pt --format onnx --out camvid.onnx")
    p.add_argument("checkpoint")
    p.add_argument("--format", default="onnx", choices=FORMATS,
                   help="onnx (default) | torchscript (traced; torch.jit.load it)")
    p.add_argument("--out", help="output file (default: CKPT with .onnx / .torchscript.pt)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.with_suffix(".onnx" if args.format == "onnx" else ".torchscript.pt")
    t0 = time.monotonic()
    kwargs = {"opset": args.opset} if args.format == "onnx" else {}
    results = export_checkpoint(ckpt, out, format=args.format, **kwargs)
    for r in results:
        print(f"verified {'×'.join(map(str, r['shape']))}: max |Δ| {r['max_abs_diff']:.3g} (relative "
              f"{r['rel_diff']:.3g}), argmax agreement {r['argmax_agreement']:.4%}")
    print(f"written: {out} ({out.stat().st_size / 2**20:.1f} MiB, {time.monotonic() - t0:.1f} s)")
