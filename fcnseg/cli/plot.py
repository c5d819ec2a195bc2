"""``fcnseg plot``: training curves and (for --debug runs) a per-layer gradient-flow figure."""
from __future__ import annotations

import argparse

from ..viz import plot_run
from .common import add_command


def add_parser(subs) -> None:
    p = add_command(subs, "plot", "loss / mIoU curves and (with --debug runs) a per-layer gradient-flow figure, "
                    "as PNG", "fcnseg plot runs/camvid")
    p.add_argument("run_dir")
    p.add_argument("--out", help="folder for curves.png and gradient_flow.png (default: RUN_DIR)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    for path in plot_run(args.run_dir, args.out):
        print(f"written: {path}")
