"""``fcnseg train``: a recipe, a YAML config and flags (flags win). The flags are TrainConfig's fields that carry a
``flag`` in their metadata, with the fields' own help."""
from __future__ import annotations

import argparse
import dataclasses

from ..errors import UserError
from ..train import loop
from ..train.config import TrainConfig, resolve_config
from .common import add_command

FLAGGED = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("flag") is not None]


def add_parser(subs) -> None:
    p = add_command(subs, "train", "train an FCN from a recipe, a YAML config and flags (flags win)",
                    "fcnseg train --recipe camvid --root ../shared/datasets/camvid --out runs/camvid --time-budget 30m")
    p.add_argument("--recipe", help="named recipe (see `fcnseg recipes`)")
    p.add_argument("--config", help="YAML file of config keys")
    for f in FLAGGED:
        flag, kind, help_ = f"--{f.name.replace('_', '-')}", f.metadata["flag"], f.metadata["help"].replace("%", "%%")
        if kind == "switch":
            p.add_argument(flag, action="store_true", default=None, help=help_)
        elif kind == "negatable":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif kind == "list":
            p.add_argument(flag, help=help_)
        else:
            p.add_argument(flag, type=kind, help=help_)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key (YAML value)")
    p.set_defaults(func=run)


def overrides(args: argparse.Namespace) -> dict:
    """The config keys the flags set: each flag given, then each --set."""
    values = {}
    for f in FLAGGED:
        value = getattr(args, f.name)
        if value is None:
            continue
        if f.metadata["flag"] == "list":
            if not value:
                continue
            value = [s for s in value.split(",") if s]
        values[f.name] = value
    for item in args.set:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        values[k.strip().replace("-", "_")] = v
    return values


def run(args: argparse.Namespace) -> None:
    values = overrides(args)
    if args.recipe is None and args.config is None and "data" not in values:
        raise UserError("give --recipe NAME, --config FILE.yaml or --data NAME (see fcnseg recipes)")
    summary = loop.train(resolve_config(args.recipe, args.config, values))
    print(f"run: {summary['out']}\n{summary['iteration']} iterations; best validation mIoU {summary['best_miou']:.4f}\n"
          f"checkpoints: {summary['last']} {summary['best']}")
