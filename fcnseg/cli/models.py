"""``fcnseg models`` and ``fcnseg recipes``: the valid model names, the training recipes."""
from __future__ import annotations

import argparse

from ..models import list_models
from ..train.recipes import RECIPES
from .common import add_command


def add_parser(subs) -> None:
    p = add_command(subs, "models", "list the valid arch/backbone[/geometry] names", "fcnseg models")
    p.set_defaults(func=run_models)
    r = add_command(subs, "recipes", "list the training recipes and their settings", "fcnseg recipes")
    r.set_defaults(func=run_recipes)


# variants any arch/backbone above takes, built from what the dataset gives (docs/models.md, docs/datasets.md)
VARIANTS = (
    "two score heads (semantic + geometric, trained jointly): --data siftflow, reader option task=both",
    "early fusion, 4-channel first convolution (RGB + depth): --data nyudv2, modality=color+depth (or depth)",
    "late fusion, two FCN streams with their scores averaged (RGB + HHA): --data nyudv2, modality=color+hha",
)


def run_models(args: argparse.Namespace) -> None:
    print("\n".join(list_models()))
    print("\nvariants of each:\n" + "\n".join(f"  {v}" for v in VARIANTS))


def run_recipes(args: argparse.Namespace) -> None:
    for name, values in RECIPES.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items() if k != "class_weights"))
