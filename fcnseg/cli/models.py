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


def run_models(args: argparse.Namespace) -> None:
    print("\n".join(list_models()))


def run_recipes(args: argparse.Namespace) -> None:
    for name, values in RECIPES.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items() if k != "class_weights"))
