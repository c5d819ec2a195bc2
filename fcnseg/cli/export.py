"""``fcnseg export``: a checkpoint → ONNX (needs ``pip install 'fcnseg[export]'``) or TorchScript, verified."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..export import FORMATS, INT8_HELD_OUT, OPSET, export_checkpoint
from .common import add_command, positive_int


def add_parser(subs) -> None:
    p = add_command(subs, "export", "export a checkpoint to ONNX or TorchScript (input: float RGB 0..255 N×3×H×W, "
                    "normalisation folded in; dynamic batch/height/width), verified against PyTorch",
                    "fcnseg export runs/camvid/best.pt --format onnx --out camvid.onnx")
    p.add_argument("checkpoint")
    p.add_argument("--format", default="onnx", choices=FORMATS,
                   help="onnx (default) | torchscript (traced; torch.jit.load it)")
    p.add_argument("--out", help="output file (default: CKPT with .onnx / .torchscript.pt)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.add_argument("--int8", action="store_true", help="write the int8 graph (ONNX Runtime static quantization), "
                   "calibrated on real images and verified on held-out ones")
    p.add_argument("--calibration", type=positive_int, default=32, metavar="N",
                   help="--int8: calibration images, spread over the source (default 32; 4 more are held out)")
    p.add_argument("--calibration-data", nargs="+", metavar="PATH",
                   help="--int8: image files, folders or globs (default: the checkpoint's training split)")
    p.set_defaults(func=run)


def calibration_images(ckpt_path: Path, n: int, sources: list[str] | None) -> list[torch.Tensor]:
    """``n`` images spread evenly over ``sources`` (or the run's training split), as 1×3×H×W float 0..255, sized
    as the recipe's ``resize`` sizes them."""
    from ..data import get_dataset
    from ..data.io import read_image
    from ..inference import resized_size
    from ..train.checkpoint import read_checkpoint
    from .predict import expand_inputs
    cfg = read_checkpoint(ckpt_path).get("config") or {}
    if sources:
        files = expand_inputs(sources)
        pick = [files[round(i * len(files) / n)] for i in range(min(n, len(files)))]
        images = [read_image(f) for f in pick]
    else:
        if not cfg.get("data"):
            raise UserError("the checkpoint records no training data: pass --calibration-data IMAGES")
        try:
            data = get_dataset(cfg["data"], cfg.get("root"), cfg.get("train_split", "train"),
                               **cfg.get("data_options", {}))
        except UserError as e:
            raise UserError(f"{e} (the run's training data, for int8 calibration; or pass --calibration-data "
                            "IMAGES)") from None
        images = [data[round(i * len(data) / n)][0].as_subclass(torch.Tensor) for i in range(min(n, len(data)))]
    out = []
    for im in images:
        x = im[None].float()
        if cfg.get("resize"):
            x = F.interpolate(x, size=resized_size(*x.shape[-2:], cfg["resize"]), mode="bilinear",
                              align_corners=False, antialias=True).clamp_(0, 255)
        out.append(x)
    if len(out) < INT8_HELD_OUT + 1:
        raise UserError(f"--int8 needs at least {INT8_HELD_OUT + 1} calibration images ({INT8_HELD_OUT} are held out "
                        f"to verify the int8 graph); found {len(out)}")
    return out


def run(args: argparse.Namespace) -> None:
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.with_suffix(".onnx" if args.format == "onnx" else ".torchscript.pt")
    t0 = time.monotonic()
    kwargs = {"opset": args.opset} if args.format == "onnx" else {}
    if args.int8:
        if args.format != "onnx":
            raise UserError("--int8 writes an ONNX graph: use --format onnx")
        kwargs["calibration"] = calibration_images(ckpt, args.calibration + INT8_HELD_OUT, args.calibration_data)
    results = export_checkpoint(ckpt, out, format=args.format, **kwargs)
    for r in results:
        what = "verified int8 on a held-out image" if args.int8 else "verified"
        print(f"{what} {'×'.join(map(str, r['shape']))}: max |Δ| {r['max_abs_diff']:.3g} (relative "
              f"{r['rel_diff']:.3g}), argmax agreement {r['argmax_agreement']:.4%}")
    print(f"written: {out} ({out.stat().st_size / 2**20:.1f} MiB, {time.monotonic() - t0:.1f} s)")
