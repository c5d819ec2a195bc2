"""``fcnseg report``: a training run as one self-contained HTML page (curves, per-class IoU, confusion matrix,
predictions, config, provenance)."""
from __future__ import annotations

import argparse

from .common import add_command


def add_parser(subs) -> None:
    p = add_command(subs, "report", "one self-contained HTML page of a run: training and validation loss, mIoU and "
                    "lr curves, per-class IoU, confusion matrix, predictions, config, provenance",
                    "fcnseg report runs/camvid --eval runs/camvid/eval")
    p.add_argument("run_dir", help="the folder `fcnseg train --out` wrote")
    p.add_argument("--eval", dest="eval_dir", metavar="DIR",
                   help="a folder `fcnseg evaluate --out` wrote (default: score the run's best.pt on its validation "
                        "data for the confusion matrix and the predictions)")
    p.add_argument("--out", help="the HTML file (default: RUN_DIR/report.html); its PNGs are written beside it")
    p.add_argument("--device", default="auto", help="where to score the checkpoint when no --eval is given")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..report import write_report  # matplotlib and the scoring code load only for this command
    out = write_report(args.run_dir, args.eval_dir, args.out, device=args.device)
    print(f"written: {out} (and its PNGs beside it)")
