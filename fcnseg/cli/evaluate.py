"""``fcnseg evaluate``: score a checkpoint on a dataset split; write metrics.json, metrics.md, the confusion matrix
(confusion.npy, confusion.png) and predictions.png (input | truth | prediction of the first images)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .. import distributed as dist
from ..crf import require_crf
from ..errors import UserError
from ..evaluation import evaluate
from ..files import atomic_write, write_text
from ..inference import Predictor
from ..metrics import scores
from ..provenance import provenance
from ..report import PREVIEW_IMAGES
from ..train.checkpoint import model_from_checkpoint
from ..viz import confusion_png, metrics_markdown, prediction_grid, save_image
from .common import add_checkpoint_args, add_command, add_crf_args, add_max_pixels, dataset_for, predict_options


def add_parser(subs) -> None:
    p = add_command(subs, "evaluate", "score a checkpoint on a dataset split at the original resolution",
                    "fcnseg evaluate runs/camvid/best.pt --data camvid --root ../shared/datasets/camvid --split val "
                    "--out runs/camvid/eval")
    add_checkpoint_args(p)
    p.add_argument("--out", help="folder for metrics.json, metrics.md, confusion.npy/.png and predictions.png "
                   "(default: next to CKPT)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with horizontally flipped predictions (default: the recipe's eval_flip)")
    p.add_argument("--scales", help="multi-scale averaging, e.g. 0.75,1,1.25 (default: the recipe's eval_scales)")
    p.add_argument("--window", type=int, help="sliding-window inference with tiles of this size")
    add_crf_args(p, "also score DenseCRF-refined predictions")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--given-tags", action="store_true",
                   help="restrict each image's prediction to the classes in its ground truth (image-level tags "
                        "known: the protocol of the CCP and Fashionista clothing-parsing papers)")
    p.add_argument("--no-ema", dest="ema", action="store_false",
                   help="score the last training weights instead of their moving average (runs with ema_decay)")
    p.add_argument("--device", default="auto")
    add_max_pixels(p)
    p.add_argument("--amp", default="auto", help="auto | none | bf16 | fp16 | int8 (CPU, ONNX Runtime; "
                   "calibrates on the first 4 images, which run in fp32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    dist.init_from_env()
    if args.crf:
        require_crf()  # before the model and the dataset load
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
    heads = result.get("heads")  # several heads: the first scored one leads metrics.json, each has its section
    classes = model.classes[heads[0][1]] if heads else model.classes
    metrics = report(result, args, ckpt, ds, classes, opts)
    metrics.update({name: scores(hist, model.classes[s]) for name, s, hist in heads or []})
    metrics["provenance"] = provenance(predictor.device, command=getattr(args, "command_line", None))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{ds.name}-{ds.split}"
    write_text(json.dumps(metrics, indent=2), out / "metrics.json")
    markdown = metrics_markdown(metrics) + "".join(
        "\n" + metrics_markdown({**metrics[name], "dataset": ds.name, "split": f"{ds.split}, {name} head",
                                 "images": result["images"]}) for name, _, _ in (heads or [])[1:])
    write_text(markdown, out / "metrics.md")
    atomic_write(out / "confusion.npy", lambda f: np.save(f, result["hist"].numpy()))  # rows: truth
    confusion_png(result["hist"], classes, out / "confusion.png")
    for name, s, hist in (heads or [])[1:]:
        confusion_png(hist, model.classes[s], out / f"confusion-{name}.png")
    save_image(prediction_grid(predictor, ds, range(min(PREVIEW_IMAGES, result["images"])), opts),
               out / "predictions.png")
    print(markdown)
    print(f"written: {out / 'metrics.json'}, {out / 'metrics.md'}, {out / 'confusion.npy'}, "
          f"{out / 'confusion.png'}, "
          + "".join(f"{out / f'confusion-{name}.png'}, " for name, _, _ in (heads or [])[1:])
          + f"{out / 'predictions.png'}")


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
