"""``fcnseg serve``: a web page and HTTP API for one model (needs ``pip install 'fcnseg[serve]'``)."""
from __future__ import annotations

import argparse
import ipaddress

from ..errors import UserError
from ..serve import MAX_PIXELS, create_app
from .common import add_command, add_crf_args, add_max_pixels


def add_parser(subs) -> None:
    p = add_command(subs, "serve", "a web page and HTTP API (POST /segment, GET /healthz) for a checkpoint or an "
                    ".onnx export", "fcnseg serve runs/camvid/best.pt --port 8000")
    p.add_argument("model", help="checkpoint (.pt) or ONNX file written by fcnseg export")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (MB)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (checkpoints only)")
    add_max_pixels(p, MAX_PIXELS)
    add_crf_args(p, "refine every mask with DenseCRF unless a request says crf=0 (a request's crf=1 asks for it "
                 "without this flag; --crf-max-side is the default of its crf_max_side)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    try:  # lazy: an optional extra
        import uvicorn
    except ImportError:
        raise UserError("fcnseg serve needs uvicorn: pip install 'fcnseg[serve]'") from None
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1-65535, got {args.port}")
    if args.max_pixels < 0:
        raise UserError(f"--max-pixels must be 0 (no limit) or a pixel count, got {args.max_pixels}")
    app = create_app(args.model, max_upload_mb=args.max_upload_mb, device=args.device, max_pixels=args.max_pixels,
                     crf=args.crf, crf_max_side=args.crf_max_side)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fcnseg serve: {args.model} at http://{host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can upload images", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
