"""What the commands share: the one-line-error parser, and reading the options of commands that use a
checkpoint (its dataset, its test-time protocol)."""
from __future__ import annotations

import argparse
import math
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from ..data import SegmentationDataset


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (exit status 2), like every other user error here."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_command(subs, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows ``help_`` and an example."""
    return subs.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_command(command: ModuleType, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by ``command``'s own parser, so that every option gets its default (the demo runs other
    commands this way: hand-built Namespaces once lacked a new option and broke it)."""
    parser = Parser(prog="fcnseg")
    command.add_parser(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    return parser.parse_args(argv)


def add_max_pixels(p: argparse.ArgumentParser, default: int | None = None) -> None:
    """``--max-pixels``: the decompression-bomb guard every image and mask read applies to its header."""
    shown = f"{default:,}" if default else "100,000,000"
    p.add_argument("--max-pixels", type=int, default=default, metavar="N",
                   help=f"refuse images with more pixels than this before decoding them (default: {shown}; 0: no "
                        "limit)")


def add_crf_args(p: argparse.ArgumentParser, help_: str) -> None:
    """``--crf`` (``help_`` says what it does for this command) and ``--crf-max-side``: DenseCRF refinement, with the
    kernel parameters of :data:`fcnseg.crf.DEFAULTS`."""
    p.add_argument("--crf", action="store_true", help=f"{help_} (needs pydensecrf2: pip install 'fcnseg[crf]')")
    p.add_argument("--crf-max-side", type=positive_int, metavar="PX",
                   help="run the CRF at most this many pixels on the longer side, then upsample (default: full size)")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """The checkpoint, and the dataset to read (by default the one its run validated on)."""
    p.add_argument("checkpoint")
    p.add_argument("--data", help="dataset name (default: the one the checkpoint was trained on)")
    p.add_argument("--root", help="dataset folder (default: the checkpoint's)")
    p.add_argument("--split", help="split (default: the checkpoint's validation split)")


def dataset_for(ckpt: dict, args: argparse.Namespace) -> SegmentationDataset:
    from ..evaluation import checkpoint_dataset  # torch: not at import, which `fcnseg predict`'s input check needs
    return checkpoint_dataset(ckpt, name=args.data, root=args.root, split=args.split)


def predict_options(args: argparse.Namespace, ckpt: dict) -> dict:
    """``--flip`` / ``--scales`` / ``--window`` (checked) over the checkpoint's recipe defaults."""
    scales = getattr(args, "scales", None)
    if scales:
        try:
            scales = [float(s) for s in scales.split(",")]
        except ValueError:
            raise UserError(f"--scales expects numbers like 0.75,1,1.25, got {args.scales!r}") from None
        if not all(math.isfinite(s) and s > 0 for s in scales):
            raise UserError(f"--scales must all be positive, got {args.scales!r}")
    window = getattr(args, "window", None)
    if window is not None and window < 1:
        raise UserError(f"--window is a tile size in pixels and must be at least 1, got {window}")
    from ..evaluation import protocol_options  # torch: not at import (see dataset_for)
    return protocol_options(ckpt, flip=getattr(args, "flip", None), scales=scales, window=window)
