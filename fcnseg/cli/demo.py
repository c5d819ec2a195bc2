"""``fcnseg demo``: the whole workflow on generated scenes — train, evaluate, predict, visualize, plot."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..data import get_dataset
from ..train import loop
from ..train.config import resolve_config
from ..viz import plot_run, save_image, to_pil, visualize
from . import evaluate, predict
from .common import add_command, parse_command


def add_parser(subs) -> None:
    p = add_command(subs, "demo", "the whole workflow on generated scenes: train (a few minutes on CPU), evaluate, "
                    "predict, visualize, plot", "fcnseg demo --out fcnseg-demo")
    p.add_argument("--out", default="fcnseg-demo")
    p.add_argument("--max-iters", type=int, help="override the demo recipe's iterations")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    out = Path(args.out)
    overrides = {"out": str(out / "run"), "device": args.device}
    if args.max_iters:
        overrides["max_iters"] = args.max_iters
    cfg = resolve_config("demo", None, overrides)
    print(f"[1/5] training {cfg.arch}/{cfg.backbone} on generated scenes ({cfg.max_iters} iterations)…")
    best = Path(loop.train(cfg)["best"])
    print("[2/5] evaluating on the synthetic val split…")
    evaluate.run(parse_command(evaluate, ["evaluate", str(best), "--out", str(out / "eval"), "--no-flip",
                                          "--device", args.device]))
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    print("[3/5] predicting on new generated images (another seed, a larger size)…")
    ds = get_dataset("synthetic", None, "test", length=4, size=(192, 256), seed=123)
    for i in range(len(ds)):
        img, _ = ds[i]
        save_image(to_pil(img.as_subclass(torch.Tensor)), out / "inputs" / f"scene{i}.png")
    predict.run(parse_command(predict, ["predict", str(best), str(out / "inputs"), "--out", str(out / "predictions"),
                                        "--no-flip", "--device", args.device]))
    print("[4/5] visualization grid…")
    grid = visualize(best, n=6, out=out / "grid.png", device=args.device)
    print("[5/5] curves…")
    plots = plot_run(out / "run", out)
    chance = 1 / len(metrics["per_class"])
    print(f"\ndone in {time.monotonic() - t0:.0f} s. synthetic val: mean IoU {metrics['mean_iou']:.3f} (chance "
          f"≈ {chance:.3f}), pixel accuracy {metrics['pixel_accuracy']:.3f}\n"
          f"  checkpoints   {out / 'run'}/best.pt, last.pt (config.yaml, log.jsonl, tb/ for TensorBoard)\n"
          f"  metrics       {out / 'eval'}/metrics.json, metrics.md, confusion.png\n"
          f"  predictions   {out / 'predictions'}/ (index PNGs + *_overlay.png)\n"
          f"  grid          {grid}\n"
          f"  curves        {', '.join(str(p) for p in plots)}")
