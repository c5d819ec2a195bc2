"""``fcnseg visualize``: a PNG grid of random validation samples, input | truth | prediction (| CRF)."""
from __future__ import annotations

import argparse

from ..viz import visualize
from .common import add_checkpoint_args, add_command, add_crf_args, add_max_pixels


def add_parser(subs) -> None:
    p = add_command(subs, "visualize", "a PNG grid of random validation samples: input | truth | prediction (| CRF)",
                    "fcnseg visualize runs/camvid/best.pt --data camvid --root ../shared/datasets/camvid --n 8 "
                    "--out grid.png")
    add_checkpoint_args(p)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    add_crf_args(p, "add a column of DenseCRF-refined predictions")
    p.add_argument("--out", help="PNG path (default: next to the checkpoint)")
    p.add_argument("--device", default="auto")
    add_max_pixels(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    out = visualize(args.checkpoint, data=args.data, root=args.root, split=args.split, n=args.n, seed=args.seed,
                    crf=args.crf, crf_max_side=args.crf_max_side, out=args.out, device=args.device)
    print(f"written: {out}")
