"""``fcnseg data``: check a dataset, count its classes (weights for the loss), download a public one."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ..data import READERS, get_dataset
from ..data.check import check_split
from ..data.download import download
from ..data.stats import class_stats, write_stats
from ..errors import UserError
from .common import Parser, add_command, add_max_pixels


def add_parser(subs) -> None:
    p = add_command(subs, "data", "dataset tools: check, stats, download", "fcnseg data check camvid --root DIR")
    p.epilog += f"\n\ndatasets: {', '.join(READERS)} (docs/datasets.md)"
    p.set_defaults(func=run_list)
    dsubs = p.add_subparsers(dest="data_cmd", parser_class=Parser)
    c = add_command(dsubs, "check", "read every sample once and report bad data (exit 1 when anything is wrong)",
                    "fcnseg data check camvid --root ../shared/datasets/camvid --split train")
    c.add_argument("name")
    c.add_argument("--root")
    c.add_argument("--split", help="one split (default: train and val)")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a reader option (YAML value), e.g. sequences=0001TP,0006R0 for camvid; repeatable")
    add_max_pixels(c)
    c.set_defaults(func=run_check)
    s = add_command(dsubs, "stats", "per-class pixel frequencies and class weights (JSON that training reads)",
                    "fcnseg data stats camvid --root ../shared/datasets/camvid --out camvid-stats.json")
    s.add_argument("name")
    s.add_argument("--root")
    s.add_argument("--split", default="train")
    s.add_argument("--out", help="JSON path (default: NAME-SPLIT-stats.json)")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a reader option, as for check")
    s.set_defaults(func=run_stats)
    d = add_command(dsubs, "download", "download and extract a public dataset (resumable, checksummed)",
                    "fcnseg data download voc2012 --root data/")
    d.add_argument("name")
    d.add_argument("--root", required=True)
    d.set_defaults(func=run_download)


def run_list(args: argparse.Namespace) -> None:
    """``fcnseg data`` alone: every reader with the options it takes (docs/datasets.md describes them)."""
    import inspect

    from ..data import dataset_class
    for name in READERS:
        params = inspect.signature(dataset_class(name).__init__).parameters.values()
        options = [f"{p.name}={p.default!r}" for p in params if p.default is not p.empty
                   and p.name not in ("root", "split", "transforms") and p.kind != p.VAR_KEYWORD]
        print(f"{name}: " + (", ".join(options) if options else "(no options)"))
    print("subcommands: check, stats, download (fcnseg data --help); reader options: --option KEY=VALUE")


def run_check(args: argparse.Namespace) -> None:
    splits = [args.split] if args.split else (["all"] if args.name == "folder" else ["train", "val"])
    options = reader_options(args.option)
    total = 0
    for split in splits:
        problems = check_split(args.name, args.root, split, **options)
        total += len(problems)
        print(f"{args.name} {split}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  {p}")
    if total:
        print(f"fcnseg: data check found {total} problem(s)", file=sys.stderr)
        sys.exit(1)


def reader_options(items: list[str]) -> dict:
    """``["sequences=0001TP,0006R0", "length=8"]`` → ``{"sequences": "0001TP,0006R0", "length": 8}`` (YAML values,
    as ``fcnseg train --set`` reads them)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            options[key.strip()] = value
    return options


def run_stats(args: argparse.Namespace) -> None:
    stats = class_stats(get_dataset(args.name, args.root, args.split, **reader_options(args.option)))
    out = Path(args.out or f"{args.name}-{args.split}-stats.json")
    write_stats(stats, out)
    for c, f, w in zip(stats["classes"], stats["frequencies"], stats["median_frequency_weights"]):
        print(f"{c:>20s}  freq {f:.4f}  median-freq weight {w:.4f}")
    print(f"written: {out} (train with --class-weights {out})")


def run_download(args: argparse.Namespace) -> None:
    path = download(args.name, args.root)
    print(f"{args.name} is ready in {path}")
