"""``fcnseg benchmark``: latency, images/s and peak memory of one model configuration on this machine."""
from __future__ import annotations

import argparse

import torch

from ..benchmark import run_benchmark
from ..errors import UserError
from ..provenance import summary
from .common import add_command


def add_parser(subs) -> None:
    p = add_command(subs, "benchmark", "measure latency, images/s and peak memory of a model on this machine",
                    "fcnseg benchmark --arch fcn8s --backbone vgg16 --size 500x500 --dtype bf16 --mode infer")
    p.add_argument("--arch", default="fcn8s", help="fcn32s | fcn16s | fcn8s | fcn8s-atonce | fcn4s")
    p.add_argument("--backbone", default="vgg16", help="see `fcnseg models`")
    p.add_argument("--geometry", default="aligned", help="aligned | caffe (VGG only)")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--size", default="500x500", help="input HxW (default 500x500)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16 (autocast; the loss stays fp32) | int8 (CPU "
                   "inference on ONNX Runtime, calibrated on the benchmark input)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--mode", default="infer", help="infer (fcnseg's Predictor) | train (one SGD step)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (default 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory format (default: the measured faster one for the device and mode; "
                        "on CPUs without AVX-512 training runs NCHW)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (infer mode)")
    p.add_argument("--checkpointing", action="store_true",
                   help="activation checkpointing of the backbone stages (train mode: less memory, more time)")
    p.add_argument("--step-in-backward", action="store_true",
                   help="train mode: update each parameter inside backward and free its gradient (less memory)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """``500x500`` or ``500`` → (H, W)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise UserError(f"--size expects HxW like 500x500, got {text!r}") from None
    if len(parts) > 2 or h < 1 or w < 1:
        raise UserError(f"--size expects HxW with positive sides like 500x500, got {text!r}")
    return h, w


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    r = run_benchmark(arch=args.arch, backbone=args.backbone, geometry=args.geometry, num_classes=args.num_classes,
                      size=parse_size(args.size), batch=args.batch, dtype=args.dtype, device=args.device,
                      mode=args.mode, repeats=args.repeats, warmup=args.warmup, channels_last=args.channels_last,
                      compile=args.compile, checkpointing=args.checkpointing,
                      step_in_backward=args.step_in_backward, command=getattr(args, "command_line", None))
    print(format_result(r))


def format_result(r: dict) -> str:
    n, c, h, w = r["input"]
    opts = [o for o, on in (("channels_last", r["channels_last"]), ("checkpointing", r["checkpointing"]),
                            ("step in backward", r.get("step_in_backward")), ("compile", r["compile"])) if on]
    return "\n".join([
        f"model       {r['model']}, {r['params'] / 1e6:.1f} M parameters",
        f"setting     {r['mode']}, {n}×{c}×{h}×{w}, {r['dtype']}, {r['device']} ({r['threads']} threads)"
        + (f", {', '.join(opts)}" if opts else ""),
        f"latency     min {r['min_s'] * 1e3:.1f} ms, median {r['median_s'] * 1e3:.1f} ms per batch "
        f"({r['repeats']} repeats after warm-up)",
        f"throughput  {r['images_per_s']:.2f} images/s",
        f"peak memory {r['peak_mib']:.0f} MiB ({r['peak_kind']})",
        f"provenance  {summary(r['provenance'])}",
        f"command     {r['provenance']['command']}",
    ])
