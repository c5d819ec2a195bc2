"""``fcnseg`` — one command for the whole workflow.

Loading the commands loads torch and torchvision (4–7 s on a 2-core CPU), so ``main`` first checks what needs no
torch: the images ``fcnseg predict`` is given (a decompression bomb or a file that is no image is refused in one line
before the model is touched), then hands over to :mod:`fcnseg.cli.commands`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import UserError
from ..imagefile import set_max_pixels
from . import predict


def main(argv: list[str] | None = None) -> int:
    """Run ``fcnseg ARGV``; its exit status (2: a user error, reported in one line)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if argv == ["--version"]:
        print(f"fcnseg {__version__}")
        return 0
    if argv[:1] == ["predict"]:
        try:
            predict.preflight(argv[1:])
        except UserError as e:
            print(f"fcnseg: error: {e}", file=sys.stderr)
            return 2
        finally:
            set_max_pixels(None)  # the command sets it again from its own arguments
    from .commands import run  # every command and, through them, torch
    return run(argv)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (loads them, and torch)."""
    from .commands import build_parser as build
    return build()


__all__ = ["build_parser", "main"]
