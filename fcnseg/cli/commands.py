"""Every ``fcnseg`` command: the argument parser and the dispatch to the command's module (one module per command,
its arguments and what it prints, each calling the library). Importing this loads torch."""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..imagefile import set_max_pixels
from ..errors import UserError
from . import benchmark, data, demo, evaluate, export, models, plot, predict, report, serve, train, visualize
from .common import Parser

# every command, in the order `fcnseg --help` lists them. export (ONNX), serve and the CRF options need optional
# packages; their commands are always listed and say what to pip install when they run without them.
COMMANDS = (demo, train, evaluate, predict, visualize, plot, report, data, models, export, serve, benchmark)


def build_parser() -> Parser:
    parser = Parser(prog="fcnseg", description="Fully Convolutional Networks for semantic segmentation.",
                    epilog="example:\n  fcnseg demo\n  fcnseg train --recipe demo --out runs/demo",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    subs = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(subs)
    return parser


def run(argv: list[str]) -> int:
    """Parse ``argv`` (without the program name) and run the command; its exit status."""
    args = build_parser().parse_args(argv)
    args.command_line = ["fcnseg", *argv]  # recorded in metrics.json
    try:
        set_max_pixels(getattr(args, "max_pixels", None))
        args.func(args)
    except UserError as e:
        print(f"fcnseg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fcnseg: interrupted", file=sys.stderr)
        return 130
    finally:
        set_max_pixels(None)  # a process-wide setting: the next command (or library call) starts from the default
    return 0


__all__ = ["COMMANDS", "build_parser", "run"]
