"""Leave-one-sequence-out folds on CamVid train+val: a recipe scored only on streets it never trained on.

    python benchmarks/camvid_folds.py --root ../shared/datasets/camvid --out runs/folds [--folds 0001TP,0006R0,0016E5]
        [--seeds 0,1] [--time-budget 30m] [--recipe camvid] [--set KEY=VALUE ...]

Each fold holds one sequence of ``trainval`` out, trains ``fcnseg train`` on the other two (in-training validation
watches the held-out one, but ``last.pt`` is scored, so nothing is selected on it) and scores
``fcnseg evaluate RUN/last.pt --split trainval``, which reads the run's held-out selection from the checkpoint and
applies the recipe's test-time protocol. Writes OUT/folds.json and prints a markdown table. A fold whose scores are
already in OUT is reused; an interrupted run resumes. See docs/camvid-protocol.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fcnseg.cli import train as train_command  # noqa: E402
from fcnseg.cli.common import parse_command  # noqa: E402
from fcnseg.data.camvid import sequence_of  # noqa: E402
from fcnseg.errors import UserError  # noqa: E402
from fcnseg.evaluation import checkpoint_dataset  # noqa: E402
from fcnseg.files import write_text  # noqa: E402
from fcnseg.provenance import provenance  # noqa: E402
from fcnseg.runtime import select_device  # noqa: E402
from fcnseg.train.checkpoint import read_checkpoint  # noqa: E402
from fcnseg.train.config import TrainConfig, resolve_config  # noqa: E402
from fcnseg.train.setup import build_datasets  # noqa: E402

FOLDS = ("0001TP", "0006R0", "0016E5")  # the sequences of train + val; test adds Seq05VD, seen by no fold
SET_BY_FOLD = ("data", "root", "out", "seed", "recipe", "train_split", "val_split", "data_options",
               "val_data_options", "val_data", "resume")


def fold_argv(args: argparse.Namespace, held_out: str, seed: int, run: Path) -> list[str]:
    """The ``fcnseg train`` arguments of one fold and seed."""
    train = [s for s in FOLDS if s != held_out]
    argv = ["train", "--recipe", args.recipe, "--root", str(args.root), "--out", str(run), "--seed", str(seed),
            "--resume", "auto", "--set", "train_split=trainval", "--set", "val_split=trainval",
            "--set", "data_options=" + json.dumps({"sequences": train}),
            "--set", "val_data_options=" + json.dumps({"sequences": [held_out]})]
    if args.time_budget:
        argv += ["--time-budget", args.time_budget]
    for item in args.set:
        argv += ["--set", item]
    return argv


def fold_config(argv: list[str]) -> TrainConfig:
    """The config ``fcnseg train argv`` resolves (checked before a long run starts)."""
    parsed = parse_command(train_command, argv)
    return resolve_config(parsed.recipe, parsed.config, train_command.overrides(parsed))


def check_training_data(argv: list[str], held_out: str) -> tuple[int, int]:
    """Build the datasets ``fcnseg train argv`` trains and validates on and refuse a fold that trains on a frame of
    the held-out sequence; returns (training frames, held-out frames)."""
    cfg = fold_config(argv)
    train_ds, val_ds = build_datasets(dataclasses.replace(cfg, cache_decoded=False), main=False, progress=False)
    leaked = [img for img, _ in train_ds.pairs if sequence_of(img) == held_out]
    if leaked:
        raise SystemExit(f"fold {held_out}: {len(leaked)} training frames are from the held-out sequence "
                         f"(e.g. {leaked[0]}); refusing to run it")
    others = {sequence_of(img) for img, _ in val_ds.pairs} - {held_out}
    if others:
        raise SystemExit(f"fold {held_out}: its held-out set holds frames of {', '.join(sorted(others))}")
    return len(train_ds), len(val_ds)


def fcnseg(argv: list[str]) -> None:
    """``python -m fcnseg ARGV`` in its own process (a fresh interpreter per run, as the documented command)."""
    print("$ fcnseg " + shlex.join(argv), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "fcnseg", *argv], env=env)
    if done.returncode:
        raise SystemExit(f"fcnseg {argv[0]} failed (exit {done.returncode}): fcnseg {shlex.join(argv)}")


def run_fold(args: argparse.Namespace, held_out: str, seed: int) -> dict:
    run = args.out / f"fold-{held_out}-seed{seed}"
    argv = fold_argv(args, held_out, seed, run)
    train_frames, held_frames = check_training_data(argv, held_out)
    last, scored = run / "last.pt", run / "eval-heldout" / "metrics.json"
    if last.is_file():
        check_same_run(read_checkpoint(last), fold_config(argv), last)
    if not (last.is_file() and read_checkpoint(last).get("finished")):
        fcnseg(argv)
    ckpt = read_checkpoint(last)
    evaluated = checkpoint_dataset(ckpt, split="trainval")  # what `evaluate --split trainval` reads by default
    if {sequence_of(img) for img, _ in evaluated.pairs} != {held_out} or len(evaluated) != held_frames:
        raise SystemExit(f"{last}: its recorded validation data is not the {held_frames} frames of {held_out}")
    eval_argv = ["evaluate", str(last), "--split", "trainval", "--out", str(scored.parent)]
    metrics = score(last, eval_argv)
    result = {"fold": held_out, "seed": seed, "train_sequences": [s for s in FOLDS if s != held_out],
              "train_frames": train_frames, "heldout_frames": held_frames, "iterations": ckpt["iteration"],
              "train_seconds": round(ckpt.get("used_time", 0.0), 1), **scores(metrics),
              "protocol": metrics.get("protocol"), "run": str(run),
              "commands": ["fcnseg " + shlex.join(argv), "fcnseg " + shlex.join(eval_argv)]}
    if "raw_model" in ckpt:  # a run with ema_decay: its last training weights are the recipe without the average
        raw_argv = ["evaluate", str(last), "--split", "trainval", "--no-ema", "--out", str(run / "eval-heldout-last")]
        result["last_weights"] = scores(score(last, raw_argv))
        result["commands"].append("fcnseg " + shlex.join(raw_argv))
    return result


def score(last: Path, eval_argv: list[str]) -> dict:
    """The metrics of ``fcnseg evaluate`` EVAL_ARGV, run unless its metrics.json is newer than the checkpoint."""
    scored = Path(eval_argv[eval_argv.index("--out") + 1]) / "metrics.json"
    if not scored.is_file() or scored.stat().st_mtime < last.stat().st_mtime:
        fcnseg(eval_argv)
    return json.loads(scored.read_text())


def scores(metrics: dict) -> dict:
    return {"mean_iou": metrics["mean_iou"], "pixel_accuracy": metrics["pixel_accuracy"],
            "per_class_iou": {c: v["iou"] for c, v in metrics["per_class"].items()}}


def check_same_run(ckpt: dict, cfg: TrainConfig, path: Path) -> None:
    """A fold found in OUT is resumed or reused only when it was started with the same config."""
    if cfg.stages:  # a staged recipe's checkpoint records its last stage's config
        return
    saved, wanted = ckpt.get("config") or {}, cfg.to_dict()
    differ = sorted(k for k in wanted if k != "resume" and saved.get(k) != wanted[k])
    if differ:
        raise SystemExit(f"{path} was trained with other {', '.join(differ)} than these options; choose another "
                         f"--out (or delete that run)")


def spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(runs: list[dict]) -> dict:
    """mean ± sample std over every (fold, seed) run; per fold, the spread between seeds."""
    classes = list(runs[0]["per_class_iou"])
    folds = dict.fromkeys(r["fold"] for r in runs)
    per_fold = {f: spread([r["mean_iou"] for r in runs if r["fold"] == f]) for f in folds}
    seed_std = [s["std"] for s in per_fold.values() if s["n"] > 1]
    summary = {"mean_iou": spread([r["mean_iou"] for r in runs]), "per_fold": per_fold,
               "seed_std": statistics.fmean(seed_std) if seed_std else None,
               "per_class_iou": {c: spread([r["per_class_iou"][c] for r in runs]) for c in classes}}
    if all(r.get("last_weights") for r in runs):  # runs with ema_decay: the same runs scored without the average
        summary["last_weights"] = summarize([{**r, **r["last_weights"], "last_weights": None} for r in runs])
    return summary


def table(runs: list[dict], summary: dict) -> str:
    classes = list(runs[0]["per_class_iou"])
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    pm = lambda s: "–" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"  # noqa: E731
    lines = ["| held out | seed | iterations | held-out mIoU | " + " | ".join(classes) + " |",
             "|---|---|---|---|" + "---|" * len(classes)]
    for r in runs:
        lines.append(f"| {r['fold']} | {r['seed']} | {r['iterations']} | {r['mean_iou']:.4f} | "
                     + " | ".join(fmt(r["per_class_iou"][c]) for c in classes) + " |")
    lines.append(f"| **mean ± std** | {len(runs)} runs | | **{pm(summary['mean_iou'])}** | "
                 + " | ".join(pm(summary["per_class_iou"][c]) for c in classes) + " |")
    if summary["seed_std"] is not None:
        lines.append(f"\nseed spread (std between seeds, mean over folds): {summary['seed_std']:.4f}")
    if "last_weights" in summary:
        last = summary["last_weights"]["mean_iou"]
        lines.append(f"\nthe same runs' last training weights instead of their average (`evaluate --no-ema`): "
                     f"held-out mIoU {pm(last)}, per run "
                     + ", ".join(f"{r['fold']}/{r['seed']} {r['last_weights']['mean_iou']:.4f}" for r in runs))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, type=Path, help="the SegNet-layout CamVid folder")
    p.add_argument("--out", required=True, type=Path, help="folder for the runs and folds.json")
    p.add_argument("--folds", default=",".join(FOLDS), help="sequences to hold out in turn (default: all three)")
    p.add_argument("--seeds", default="0,1", help="seeds per fold (default: 0,1)")
    p.add_argument("--time-budget", help="training time per run, e.g. 30m (default: the recipe's)")
    p.add_argument("--recipe", default="camvid")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides passed to every `fcnseg train`")
    args = p.parse_args(argv)
    args.folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    if not args.folds or any(f not in FOLDS for f in args.folds):
        p.error(f"--folds takes sequences among {','.join(FOLDS)}, got {','.join(args.folds) or 'none'}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds takes whole numbers like 0,1, got {args.seeds!r}")
    taken = [s.split("=", 1)[0].strip().replace("-", "_") for s in args.set]
    if any(k in SET_BY_FOLD for k in taken):
        p.error(f"--set {', '.join(k for k in taken if k in SET_BY_FOLD)}: each fold sets it (see --help)")
    args.root, args.out = args.root.resolve(), args.out.resolve()
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    runs = [run_fold(args, fold, seed) for fold in args.folds for seed in args.seeds]
    summary = summarize(runs)
    command = None if argv is None else ["python", "benchmarks/camvid_folds.py", *argv]  # None: this process's
    report = {**provenance(select_device("auto"), command=command), "recipe": args.recipe, "root": str(args.root),
              "time_budget": args.time_budget, "sets": args.set, "folds": args.folds, "seeds": args.seeds,
              "runs": runs, "summary": summary}
    write_text(json.dumps(report, indent=2), args.out / "folds.json")
    print(table(runs, summary))
    print(f"written: {args.out / 'folds.json'}")
    return report


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"camvid_folds: error: {e}")
