"""``fcnseg`` — one command for the whole workflow. Each subcommand maps onto library functions."""
from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import sys
from pathlib import Path

from .errors import UserError

log = logging.getLogger("fcnseg")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (exit status 2), like every other user error here."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _sub(subs, name, help_, example):
    return subs.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)


# ------------------------------------------------------------------------------------------------------ train
TRAIN_FLAGS = {  # flag → (config key, type, help)
    "--data": ("data", str, "dataset name (see `fcnseg data --help`)"),
    "--root": ("root", str, "dataset folder"),
    "--out": ("out", str, "run folder (config.yaml, last.pt, best.pt, log.jsonl, tb/)"),
    "--arch": ("arch", str, "fcn32s | fcn16s | fcn8s | fcn8s-atonce | fcn4s"),
    "--backbone": ("backbone", str, "vgg16 | vgg19 | inception_v3 | resnet18/34/50/101 | mobilenet_v3_large"),
    "--geometry": ("geometry", str, "aligned (default) | caffe (VGG only)"),
    "--num-classes": ("num_classes", int, "number of classes (default: the dataset's)"),
    "--pretrained-backbone": ("pretrained_backbone", str, "imagenet, or a weight file"),
    "--init-from": ("init_from", str, "start from these weights (any format fcnseg reads)"),
    "--max-iters": ("max_iters", int, "iterations (optimizer steps)"),
    "--time-budget": ("time_budget", str, "stop after this long, evaluate and save (e.g. 30m, 90s, 1.5h)"),
    "--batch-size": ("batch_size", int, "images per process per step"),
    "--accum-steps": ("accum_steps", int, "gradient accumulation steps"),
    "--lr": ("lr", float, "base learning rate"),
    "--optimizer": ("optimizer", str, "sgd | adam | adamw"),
    "--scheduler": ("scheduler", str, "poly | step | cosine | constant"),
    "--warmup-iters": ("warmup_iters", int, "linear warm-up iterations"),
    "--ema-decay": ("ema_decay", float, "validate and save an exponential moving average of the weights (e.g. 0.999)"),
    "--weight-decay": ("weight_decay", float, "weight decay"),
    "--crop-size": ("crop_size", int, "random crop size (px)"),
    "--class-weights": ("class_weights", str, "JSON written by `fcnseg data stats` (median-frequency weights)"),
    "--ignore-index": ("ignore_index", int, "label ignored by loss and metrics (255)"),
    "--amp": ("amp", str, "none | bf16 | fp16 | auto (bf16 where native and measured faster) autocast (loss always fp32)"),
    "--seed": ("seed", int, "random seed"),
    "--val-every": ("val_every", int, "validate and checkpoint every N iterations"),
    "--workers": ("workers", int, "DataLoader worker processes"),
    "--device": ("device", str, "auto | cpu | cuda | cuda:N"),
    "--resume": ("resume", str, "auto (continue RUN_DIR/last.pt) or a checkpoint path"),
}


def _add_train(subs):
    p = _sub(subs, "train", "train an FCN from a recipe, a YAML config and flags (flags win)",
             "fcnseg train --recipe camvid --root ../shared/datasets/camvid --out runs/camvid --time-budget 30m")
    p.add_argument("--recipe", help="named recipe (see `fcnseg recipes`)")
    p.add_argument("--config", help="YAML file of config keys")
    for flag, (_, typ, help_) in TRAIN_FLAGS.items():
        p.add_argument(flag, type=typ, help=help_)
    p.add_argument("--trainable", help="comma-separated module scopes to train, the rest frozen (e.g. head,backbone.fc7)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default auto: the measured faster format for the device)")
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms")
    p.add_argument("--activation-checkpointing", action="store_true", default=None,
                   help="recompute backbone stages during backward: less memory, more time")
    p.add_argument("--step-in-backward", action="store_true", default=None,
                   help="update each parameter inside backward and free its gradient: less peak memory, same update")
    p.add_argument("--debug", action="store_true", default=None,
                   help="histograms of activations/gradients/weights and per-layer gradient norms")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key (YAML value)")
    p.set_defaults(func=cmd_train)


def cmd_train(args):
    from .config import resolve_config
    from .engine import train
    overrides = {key: getattr(args, flag[2:].replace("-", "_")) for flag, (key, _, _) in TRAIN_FLAGS.items()
                 if getattr(args, flag[2:].replace("-", "_")) is not None}
    if args.channels_last is not None:
        overrides["channels_last"] = args.channels_last
    for key in ("deterministic", "debug", "activation_checkpointing", "step_in_backward"):
        if getattr(args, key):
            overrides[key] = True
    if args.trainable:
        overrides["trainable"] = [s for s in args.trainable.split(",") if s]
    for item in args.set:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip().replace("-", "_")] = v
    if args.recipe is None and args.config is None and "data" not in overrides:
        raise UserError("give --recipe NAME, --config FILE.yaml or --data NAME (see fcnseg recipes)")
    cfg = resolve_config(args.recipe, args.config, overrides)
    summary = train(cfg)
    print(f"run: {summary['out']}\n{summary['iteration']} iterations; best validation mIoU {summary['best_miou']:.4f}\n"
          f"checkpoints: {summary['last']} {summary['best']}")


# --------------------------------------------------------------------------------------------------- evaluate
def _data_args(p, required=False):
    p.add_argument("--data", help="dataset name (default: the one the checkpoint was trained on)")
    p.add_argument("--root", help="dataset folder (default: the checkpoint's)")
    p.add_argument("--split", help="split (default: the checkpoint's validation split)")


def _dataset_for(ckpt, args, split_default=None):
    from .data import get_dataset
    cfg = ckpt.get("config") or {}
    name = args.data or cfg.get("val_data") or cfg.get("data")
    if not name:
        raise UserError("the checkpoint records no dataset: pass --data NAME --root DIR")
    same = name == (cfg.get("val_data") or cfg.get("data"))
    root = args.root or (cfg.get("root") if same else None)
    options = {} if not same else cfg.get("val_data_options", {}) if cfg.get("val_data") else {
        **cfg.get("data_options", {}), **cfg.get("val_data_options", {})}
    split = args.split or split_default or (cfg.get("val_split") if same else "val")
    return get_dataset(name, root, split, None, **options)


def _add_evaluate(subs):
    p = _sub(subs, "evaluate", "score a checkpoint on a dataset split at the original resolution",
             "fcnseg evaluate runs/camvid/best.pt --data camvid --root ../shared/datasets/camvid --split val "
             "--out runs/camvid/eval")
    p.add_argument("checkpoint")
    _data_args(p)
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
    p.add_argument("--amp", default="auto", help="auto | none | bf16 | fp16 | int8 (CPU; VGG/ResNet backbones; "
                   "calibrates on the first 4 images, which run in fp32)")
    p.set_defaults(func=cmd_evaluate)


def _predict_options(args, ckpt):
    opts = {}
    cfg = ckpt.get("config") or {}
    if cfg.get("resize"):
        opts["input_size"] = cfg["resize"]
    flip = getattr(args, "flip", None)
    if flip if flip is not None else cfg.get("eval_flip"):
        opts["flip"] = True
    if not getattr(args, "scales", None) and cfg.get("eval_scales"):
        opts["scales"] = [float(s) for s in cfg["eval_scales"]]
    if getattr(args, "scales", None):
        try:
            opts["scales"] = [float(s) for s in args.scales.split(",")]
        except ValueError:
            raise UserError(f"--scales expects numbers like 0.75,1,1.25, got {args.scales!r}") from None
        if not all(math.isfinite(s) and s > 0 for s in opts["scales"]):
            raise UserError(f"--scales must all be positive, got {args.scales!r}")
    if getattr(args, "window", None) is not None:
        if args.window < 1:
            raise UserError(f"--window is a tile size in pixels and must be at least 1, got {args.window}")
        opts["window"] = args.window
    return opts


def cmd_evaluate(args):
    from . import distributed as dist
    from .engine import atomic_write_text, evaluate, model_from_checkpoint
    from .inference import Predictor
    from .metrics import scores
    dist.init_from_env()
    model, ckpt = model_from_checkpoint(args.checkpoint, ema=getattr(args, "ema", True))
    ds = _dataset_for(ckpt, args)
    if ds.num_classes > model.num_classes:
        raise UserError(f"{args.data or ds.name} has {ds.num_classes} classes but {args.checkpoint} predicts "
                        f"{model.num_classes}")
    classes = model.classes
    predictor = Predictor(model, args.device, amp=args.amp)
    opts = _predict_options(args, ckpt)
    result = evaluate(predictor, ds, num_classes=model.num_classes, ignore_index=ds.ignore_index,
                      max_images=args.max_images, crf=args.crf, crf_max_side=args.crf_max_side,
                      given_tags=args.given_tags, **opts)
    if not dist.is_main():
        return
    metrics = scores(result["hist"], classes, ds.background_index)
    metrics.update(per_image_mean_iou=result["per_image_mean_iou"], images=result["images"],
                   checkpoint=str(args.checkpoint), dataset=ds.name, split=ds.split,
                   protocol={"flip": False, "scales": [1.0], "amp": args.amp, **opts})
    if args.given_tags:
        metrics["protocol"]["given_tags"] = True
    if "raw_model" in ckpt:  # a run with ema_decay: which of its weights were scored
        metrics["protocol"]["weights"] = "ema" if getattr(args, "ema", True) else "raw"
    if args.crf:
        crf_scores = scores(result["hist_crf"], classes, ds.background_index)
        metrics["crf"] = crf_scores
        metrics["protocol"]["crf_max_side"] = args.crf_max_side
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{ds.name}-{ds.split}"
    atomic_write_text(json.dumps(metrics, indent=2), out / "metrics.json")
    atomic_write_text(metrics_markdown(metrics), out / "metrics.md")
    confusion_png(result["hist"], classes, out / "confusion.png")
    print(metrics_markdown(metrics))
    print(f"written: {out / 'metrics.json'}, {out / 'metrics.md'}, {out / 'confusion.png'}")


def metrics_markdown(m: dict) -> str:
    proto = m.get("protocol")
    size = proto.get("input_size") if proto else None
    size = (f"shorter side {size}" if isinstance(size, int) else "×".join(map(str, size))) if size else "as is"
    how = (f"input {size}, scales "
           f"{','.join(f'{s:g}' for s in proto['scales'])}, flip {'on' if proto['flip'] else 'off'}"
           + (f", sliding window {proto['window']}" if proto.get("window") else "")
           + (", classes restricted to each image's ground-truth tags" if proto.get("given_tags") else "")
           ) if proto else None
    lines = [f"# {m.get('dataset', '')} {m.get('split', '')} — {m.get('images', '?')} images", "",
             *([f"Protocol: {how}; metrics at the original resolution.", ""] if how else []),
             "| metric | value | with CRF |" if "crf" in m else "| metric | value |",
             "|---|---|---|" if "crf" in m else "|---|---|"]
    for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "foreground_accuracy"):
        if k not in m:
            continue
        extra = f" {m['crf'][k]:.4f} |" if "crf" in m else ""
        lines.append(f"| {k} | {m[k]:.4f} |{extra}")
    if "per_image_mean_iou" in m:
        lines.append(f"| per_image_mean_iou (mean over images; not the paper's mIoU) | "
                     f"{m['per_image_mean_iou']:.4f} |{' |' if 'crf' in m else ''}")
    lines += ["", "| class | IoU | accuracy | pixels |", "|---|---|---|---|"]
    fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    for c, v in m["per_class"].items():
        lines.append(f"| {c} | {fmt(v['iou'])} | {fmt(v['accuracy'])} | {v['pixels']} |")
    return "\n".join(lines) + "\n"


def confusion_png(hist, classes, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    h = np.asarray(hist, dtype=np.float64)
    norm = h / np.maximum(h.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * n + 2), max(4, 0.35 * n + 1.5)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title("confusion (row-normalised)")
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _save_fig(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- predict
def _add_predict(subs):
    p = _sub(subs, "predict", "segment images of any size: palette index PNGs and colour overlays with a legend",
             "fcnseg predict runs/camvid/best.pt photos/ 'more/*.jpg' --out predictions/")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True)
    p.add_argument("--probs", action="store_true", help="also save class probabilities as .npy (C×H×W float16)")
    p.add_argument("--tags", help="known classes, comma-separated (e.g. null,skin,hair,dress,shoes): each pixel "
                   "takes the likeliest of these only; list the background class too (the protocol of "
                   "`fcnseg evaluate --given-tags`, for photos whose garments are known)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with horizontally flipped predictions (default: the recipe's eval_flip)")
    p.add_argument("--scales", help="multi-scale averaging, e.g. 0.75,1,1.25 (default: the recipe's eval_scales)")
    p.add_argument("--window", type=int)
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", help="auto | none | bf16 | fp16 | int8 (CPU; VGG/ResNet backbones; "
                   "calibrates on the first 4 inputs, which run in fp32)")
    p.set_defaults(func=cmd_predict)


def expand_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            hits = sorted(Path(h) for h in glob.glob(item, recursive=True) if Path(h).is_file())
            if not hits:
                raise UserError(f"no such file, folder or matching glob: {item}")
            files += hits
    if not files:
        raise UserError(f"no images found in {' '.join(inputs)} (extensions: {' '.join(sorted(IMAGE_EXTS))})")
    return files


def _tag_indices(tags: str, classes: list[str]):
    """``"null,skin,dress"`` → a tensor of those classes' indices; an unknown name is a user error."""
    import torch
    names = [t.strip() for t in tags.split(",") if t.strip()]
    unknown = [n for n in names if n not in classes]
    if not names or unknown:
        raise UserError(f"--tags: unknown class {(unknown or [tags])[0]!r}; the model's classes are "
                        f"{', '.join(classes)}")
    return torch.tensor(sorted({classes.index(n) for n in names}))


def cmd_predict(args):
    import numpy as np
    from tqdm import tqdm
    from .data.io import read_image
    from .engine import model_from_checkpoint, restrict_to_classes
    from .inference import Predictor
    from .viz import legend, overlay, save_image, save_index_png, to_pil
    model, ckpt = model_from_checkpoint(args.checkpoint)
    allowed = _tag_indices(args.tags, model.classes) if args.tags else None
    files = expand_inputs(args.inputs)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to output folder {out}: {e.strerror or e} (choose another --out)") from None
    palette = model.palette or __import__("fcnseg.data", fromlist=["default_palette"]).default_palette(
        model.num_classes)
    predictor = Predictor(model, args.device, amp=args.amp)
    opts = _predict_options(args, ckpt)
    failed = []
    stems: dict[str, int] = {}
    for f in tqdm(files, desc="predict", dynamic_ncols=True):
        try:
            image = read_image(f)
        except UserError as e:
            failed.append(str(e))
            continue
        probs = predictor.predict_image(image[None], **opts).cpu()
        if allowed is not None:
            probs = restrict_to_classes(probs, allowed)
        probs = probs[0]
        pred = probs.argmax(0)
        stem = f.stem if f.stem not in stems else f"{f.stem}-{stems[f.stem]}"
        stems[f.stem] = stems.get(f.stem, 0) + 1
        save_index_png(pred, palette, out / f"{stem}.png")
        present = sorted(int(c) for c in pred.unique())
        ov = to_pil(overlay(image, pred, palette, args.alpha))
        leg = legend(model.classes, palette, present)
        from PIL import Image
        canvas = Image.new("RGB", (ov.width + leg.width, max(ov.height, leg.height)), (255, 255, 255))
        canvas.paste(ov, (0, 0))
        canvas.paste(leg, (ov.width, 0))
        save_image(canvas, out / f"{stem}_overlay.png")
        if args.probs:
            tmp = out / f".{stem}.npy.tmp"
            with open(tmp, "wb") as fh:
                np.save(fh, probs.numpy().astype(np.float16))
            os.replace(tmp, out / f"{stem}.npy")
    print(f"{len(files) - len(failed)} predictions in {out} (<name>.png: class indices with a palette; "
          f"<name>_overlay.png: colour overlay with legend)")
    if failed:
        for msg in failed:
            print(f"skipped: {msg}", file=sys.stderr)
        raise UserError(f"{len(failed)} of {len(files)} inputs could not be read (listed above), e.g. {failed[0]}")


# -------------------------------------------------------------------------------------------------- visualize
def _add_visualize(subs):
    p = _sub(subs, "visualize", "a PNG grid of random validation samples: input | truth | prediction (| CRF)",
             "fcnseg visualize runs/camvid/best.pt --data camvid --root ../shared/datasets/camvid --n 8 "
             "--out grid.png")
    p.add_argument("checkpoint")
    _data_args(p)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crf", action="store_true")
    p.add_argument("--crf-max-side", type=int, metavar="PX", help="CRF at most this many pixels on the longer side")
    p.add_argument("--out", help="PNG path (default: next to the checkpoint)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_visualize)


def cmd_visualize(args):
    out = visualize(args.checkpoint, args, n=args.n, seed=args.seed, crf=args.crf, out=args.out, device=args.device)
    print(f"written: {out}")


def visualize(checkpoint, args, *, n=8, seed=0, crf=False, out=None, device="auto") -> Path:
    import torch
    from .engine import model_from_checkpoint
    from .inference import Predictor
    from .viz import colorize, grid, save_image
    model, ckpt = model_from_checkpoint(checkpoint)
    ds = _dataset_for(ckpt, args)
    palette = ds.get_palette()
    predictor = Predictor(model, device)
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(ds), generator=g)[:n].tolist()
    rows = []
    for i in picks:
        image, mask = ds[i]
        image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        probs = predictor.predict_image(image[None], **_predict_options(args, ckpt))[0].cpu()
        row = [image, colorize(mask, palette), colorize(probs.argmax(0), palette)]
        if crf:
            from .crf import dense_crf
            row.append(colorize(dense_crf(image, probs, max_side=getattr(args, "crf_max_side", None)), palette))
        rows.append(row)
    titles = ["input", "truth", "prediction"] + (["CRF"] if crf else [])
    out = Path(out) if out else Path(checkpoint).parent / "visualize.png"
    save_image(grid(rows, titles=titles, classes=list(ds.classes), palette=palette), out)
    return out


# ------------------------------------------------------------------------------------------------------- plot
def _add_plot(subs):
    p = _sub(subs, "plot", "loss / mIoU curves and (with --debug runs) a per-layer gradient-flow figure, as PNG",
             "fcnseg plot runs/camvid")
    p.add_argument("run_dir")
    p.add_argument("--out", help="folder for curves.png and gradient_flow.png (default: RUN_DIR)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args):
    for path in plot_run(args.run_dir, args.out):
        print(f"written: {path}")


def plot_run(run_dir, out=None) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    run = Path(run_dir)
    logs = sorted(run.rglob("log.jsonl"))
    if not logs:
        raise UserError(f"no log.jsonl under {run} (is it a run folder written by fcnseg train?)")
    out = Path(out) if out else run
    written = []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    grads = []
    for lg in logs:
        recs = []
        for line in lg.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash
        label = lg.parent.name
        tr = [(r["iter"], r["loss"]) for r in recs if "loss" in r]
        va = [(r["iter"], r["val"]["mean_iou"]) for r in recs if "val" in r]
        if tr:
            a1.plot(*zip(*tr), label=label)
        if va:
            a2.plot(*zip(*va), marker="o", label=label)
        grads += [r for r in recs if "grad_norms" in r]
    a1.set_xlabel("iteration"); a1.set_ylabel("training loss"); a1.set_yscale("log"); a1.legend(fontsize=7)  # noqa: E702
    a2.set_xlabel("iteration"); a2.set_ylabel("validation mean IoU"); a2.legend(fontsize=7)  # noqa: E702
    fig.tight_layout()
    _save_fig(fig, out / "curves.png")
    plt.close(fig)
    written.append(out / "curves.png")
    if grads:
        last = grads[-1]["grad_norms"]
        names = [n for n in last if n.endswith("weight")]
        fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 4))
        for r in grads[:: max(1, len(grads) // 5)] + [grads[-1]]:
            ax.plot([r["grad_norms"].get(n, float("nan")) for n in names], alpha=0.7, label=f"iter {r['iter']}")
        ax.set_xticks(range(len(names)), [n.replace(".weight", "") for n in names], rotation=90, fontsize=5)
        ax.set_yscale("log"); ax.set_ylabel("gradient L2 norm"); ax.set_title("gradient flow"); ax.legend(fontsize=7)  # noqa: E702
        fig.tight_layout()
        _save_fig(fig, out / "gradient_flow.png")
        plt.close(fig)
        written.append(out / "gradient_flow.png")
    return written


# ------------------------------------------------------------------------------------------------------- demo
def _add_demo(subs):
    p = _sub(subs, "demo", "the whole workflow on generated scenes: train (a few minutes on CPU), evaluate, "
             "predict, visualize, plot", "fcnseg demo --out fcnseg-demo")
    p.add_argument("--out", default="fcnseg-demo")
    p.add_argument("--max-iters", type=int, help="override the demo recipe's iterations")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args):
    import time
    from .config import resolve_config
    from .data import get_dataset
    from .engine import train
    from .viz import save_image, to_pil
    t0 = time.monotonic()
    out = Path(args.out)
    overrides = {"out": str(out / "run"), "device": args.device}
    if args.max_iters:
        overrides["max_iters"] = args.max_iters
    cfg = resolve_config("demo", None, overrides)
    print(f"[1/5] training {cfg.arch}/{cfg.backbone} on generated scenes ({cfg.max_iters} iterations)…")
    summary = train(cfg)
    best = Path(summary["best"])
    print("[2/5] evaluating on the synthetic val split…")
    # the real parser builds the commands' arguments, so every option gets its default (hand-built Namespaces once
    # lacked a new option and broke the demo)
    parser = build_parser()
    cmd_evaluate(parser.parse_args(["evaluate", str(best), "--out", str(out / "eval"), "--no-flip",
                                    "--device", args.device]))
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    print("[3/5] predicting on new generated images (another seed, a larger size)…")
    ds = get_dataset("synthetic", None, "test", length=4, size=(192, 256), seed=123)
    for i in range(len(ds)):
        img, _ = ds[i]
        save_image(to_pil(img.as_subclass(__import__("torch").Tensor)), out / "inputs" / f"scene{i}.png")
    cmd_predict(parser.parse_args(["predict", str(best), str(out / "inputs"), "--out", str(out / "predictions"),
                                   "--no-flip", "--device", args.device]))
    print("[4/5] visualization grid…")
    grid = visualize(best, argparse.Namespace(data=None, root=None, split=None), n=6, out=out / "grid.png",
                     device=args.device)
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


# ------------------------------------------------------------------------------------------------------- data
def _add_data(subs):
    p = _sub(subs, "data", "dataset tools: check, stats, download", "fcnseg data check camvid --root DIR")
    dsubs = p.add_subparsers(dest="data_cmd", required=True, parser_class=Parser)
    c = _sub(dsubs, "check", "read every sample once and report bad data (exit 1 when anything is wrong)",
             "fcnseg data check camvid --root ../shared/datasets/camvid --split train")
    c.add_argument("name")
    c.add_argument("--root")
    c.add_argument("--split", help="one split (default: train and val)")
    c.set_defaults(func=cmd_data_check)
    s = _sub(dsubs, "stats", "per-class pixel frequencies and class weights (JSON that training reads)",
             "fcnseg data stats camvid --root ../shared/datasets/camvid --out camvid-stats.json")
    s.add_argument("name")
    s.add_argument("--root")
    s.add_argument("--split", default="train")
    s.add_argument("--out", help="JSON path (default: NAME-SPLIT-stats.json)")
    s.set_defaults(func=cmd_data_stats)
    d = _sub(dsubs, "download", "download and extract a public dataset (resumable, checksummed)",
             "fcnseg data download voc2012 --root data/")
    d.add_argument("name")
    d.add_argument("--root", required=True)
    d.set_defaults(func=cmd_data_download)


def cmd_data_check(args):
    from .data.check import check_split
    splits = [args.split] if args.split else (["all"] if args.name == "folder" else ["train", "val"])
    total = 0
    for split in splits:
        problems = check_split(args.name, args.root, split)
        total += len(problems)
        print(f"{args.name} {split}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  {p}")
    if total:
        print(f"fcnseg: data check found {total} problem(s)", file=sys.stderr)
        sys.exit(1)


def cmd_data_stats(args):
    from .data import get_dataset
    from .data.stats import class_stats, write_stats
    ds = get_dataset(args.name, args.root, args.split)
    stats = class_stats(ds)
    out = Path(args.out or f"{args.name}-{args.split}-stats.json")
    write_stats(stats, out)
    for c, f, w in zip(stats["classes"], stats["frequencies"], stats["median_frequency_weights"]):
        print(f"{c:>20s}  freq {f:.4f}  median-freq weight {w:.4f}")
    print(f"written: {out} (train with --class-weights {out})")


def cmd_data_download(args):
    from .data.download import download
    path = download(args.name, args.root)
    print(f"{args.name} is ready in {path}")


# ------------------------------------------------------------------------------------------------- small ones
def _add_models(subs):
    p = _sub(subs, "models", "list the valid arch/backbone[/geometry] names", "fcnseg models")
    p.set_defaults(func=lambda a: print("\n".join(__import__("fcnseg").list_models())))
    r = _sub(subs, "recipes", "list the training recipes and their settings", "fcnseg recipes")
    r.set_defaults(func=cmd_recipes)


def cmd_recipes(args):
    from .config import RECIPES
    for name, values in RECIPES.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items() if k != "class_weights"))


def build_parser() -> Parser:
    from . import __version__
    parser = Parser(prog="fcnseg", description="Fully Convolutional Networks for semantic segmentation.",
                    epilog="example:\n  fcnseg demo\n  fcnseg train --recipe demo --out runs/demo",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    subs = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_add_demo, _add_train, _add_evaluate, _add_predict, _add_visualize, _add_plot, _add_data,
                _add_models):
        add(subs)
    for extra in ("export", "serve", "benchmark"):
        try:
            mod = __import__(f"fcnseg.{extra}", fromlist=["add_parser"])
        except ImportError:
            continue
        mod.add_parser(subs, _sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"fcnseg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fcnseg: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
