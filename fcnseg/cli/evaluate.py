"""``fcnseg evaluate``: score a checkpoint on a dataset split; write metrics.json, metrics.md and confusion.png."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import distributed as dist
from ..errors import UserError
from ..evaluation import evaluate
from ..files import write_text
from ..inference import Predictor
from ..metrics import scores
from ..provenance import provenance
from ..train.checkpoint import model_from_checkpoint
from ..viz import confusion_png, metrics_markdown
from .common import add_command, add_checkpoint_args, add_max_pixels, dataset_for, predict_options


def add_parser(subs) -> None:
    p = add_command(subs, "evaluate", "score a checkpoint on a dataset split at the original resolution",
                    "fcnseg evaluate runs/camvid/best.pt --data camvid --root ../shared/datasets/camvid --split val "
                    "--out runs/camvid/eval")
    add_checkpoint_args(p)
    p.add_argument("--out", help="folder for metrics.json, metrics.md and confusion.png (default: next to CKPT)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with horizontally flipped predictions (default: the recipe's eval_flip)")
    p.add_argument("--scales", help="multi-scale averaging, e.g. 0.75,1,1.25 (default: the recipe's eval_scales)")
    p.add_argument("--window", type=int, help="sliding-window inference with tiles of this size")
    p.add_argument("--crf", action="store_true", help="also score DenseCRF-refined predictions (needs pydensecrf2)")
    p.add_argument("--crf-max-side", type=int, metavar="PX",
                   help="run the CRF at most this many pixels on the longer side, then upsample (default: full size)")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--given-tags", action="store_true",
                   help="restrict each image's prediction to the classes in its ground truth (image-level tags "
                        "known: the protocol of the CCP and Fashionista clothing-parsing papers)")
    p.add_argument("--no-ema", dest="ema", action="store_false",
                   help="score the last training weights instead of their moving average (runs with ema_decay)")
    p.add_argument("--device", default="auto")
    add_max_pixels(p)
    p.add_argument("--amp", default="auto", help="auto | none | bf16 | fp16 | int8 (CPU; VGG/ResNet backbones; "
                   "calibrates on the first 4 images, which run in fp32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    dist.init_from_env()
    model, ckpt = model_from_checkpoint(args.checkpoint, ema=args.ema)
    ds = dataset_for(ckpt, args)
    if ds.num_classes > model.num_classes:
        raise UserError(f"{args.data or ds.name} has {ds.num_classes} classes but {args.checkpoint} predicts "
                        f"{model.num_classes}")
    predictor = Predictor(model, args.device, amp=args.amp)
    opts = predict_options(args, ckpt)
    result = evaluate(predictor, ds, num_classes=model.num_classes, ignore_index=ds.ignore_index,
                      max_images=args.max_images, crf=args.crf, crf_max_side=args.crf_max_side,
                      given_tags=args.given_tags, **opts)
    if not dist.is_main():
        return
    metrics = report(result, args, ckpt, ds, model.classes, opts)
    metrics["provenance"] = provenance(predictor.device, command=getattr(args, "command_line", None))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{ds.name}-{ds.split}"
    write_text(json.dumps(metrics, indent=2), out / "metrics.json")
    write_text(metrics_markdown(metrics), out / "metrics.md")
    confusion_png(result["hist"], model.classes, out / "confusion.png")
    print(metrics_markdown(metrics))
    print(f"written: {out / 'metrics.json'}, {out / 'metrics.md'}, {out / 'confusion.png'}")


def report(result: dict, args: argparse.Namespace, ckpt: dict, ds, classes: list[str], opts: dict) -> dict:
    """metrics.json: the scores, and what was scored how."""
    metrics = scores(result["hist"], classes, ds.background_index)
    metrics.update(per_image_mean_iou=result["per_image_mean_iou"], images=result["images"],
                   checkpoint=str(args.checkpoint), dataset=ds.name, split=ds.split,
                   protocol={"flip": False, "scales": [1.0], "amp": args.amp, **opts})
    if args.given_tags:
        metrics["protocol"]["given_tags"] = True
    if "raw_model" in ckpt:  # a run with ema_decay: which of its weights were scored
        metrics["protocol"]["weights"] = "ema" if args.ema else "raw"
    if args.crf:
        metrics["crf"] = scores(result["hist_crf"], classes, ds.background_index)
        metrics["protocol"]["crf_max_side"] = args.crf_max_side
    return metrics
