"""``fcnseg predict``: segment images of any size into palette index PNGs and colour overlays with a legend."""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from ..errors import UserError
from ..imagefile import open_image, set_max_pixels
from .common import Parser, add_command, add_crf_args, add_max_pixels, predict_options

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def add_parser(subs) -> None:
    p = add_command(subs, "predict", "segment images of any size: palette index PNGs and colour overlays with a "
                    "legend", "fcnseg predict runs/camvid/best.pt photos/ 'more/*.jpg' --out predictions/")
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
    add_crf_args(p, "refine each mask with DenseCRF on the image and the class probabilities at full resolution "
                 "(--probs still saves the network's probabilities)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("--device", default="auto")
    add_max_pixels(p)
    p.add_argument("--amp", default="auto", help="auto | none | bf16 | fp16 | int8 (CPU, ONNX Runtime; "
                   "calibrates on the first 4 inputs, which run in fp32)")
    p.set_defaults(func=run)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, the images in folders (recursively), and glob matches, in order."""
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


def tag_indices(tags: str, classes: list[str]) -> list[int]:
    """``"null,skin,dress"`` → those classes' indices, sorted; an unknown name is a user error."""
    names = [t.strip() for t in tags.split(",") if t.strip()]
    unknown = [n for n in names if n not in classes]
    if not names or unknown:
        raise UserError(f"--tags: unknown class {(unknown or [tags])[0]!r}; the model's classes are "
                        f"{', '.join(classes)}")
    return sorted({classes.index(n) for n in names})


def check_headers(files: list[Path]) -> None:
    """Refuse at once, before the model loads, when no input can be read (a bomb, a typo'd file): one line."""
    errors = []
    for f in files:
        try:
            with open_image(f):
                return
        except UserError as e:
            errors.append(str(e))
    raise UserError(errors[0] if len(errors) == 1 else f"none of the {len(errors)} inputs can be read, e.g. "
                    f"{errors[0]}")


def preflight(argv: list[str]) -> None:
    """``fcnseg predict ARGV``'s inputs checked with Pillow alone, before torch loads (4–7 s): when none of them can
    be opened as an image within the pixel limit, the one-line error comes at once. Argument mistakes are left to
    the full parser, which reports them the same way."""
    parser = Parser(prog="fcnseg")
    add_parser(parser.add_subparsers(dest="command", parser_class=Parser))
    args, _ = parser.parse_known_args(["predict", *argv])
    if not Path(args.checkpoint).is_file():
        return  # the checkpoint's own one-line error comes first, from the loader
    set_max_pixels(args.max_pixels)
    check_headers(expand_inputs(args.inputs))


def run(args: argparse.Namespace) -> None:
    # the library, and torch with it, loads here: `preflight` runs without it
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..crf import dense_crf, require_crf
    from ..data import default_palette
    from ..data.io import read_image
    from ..evaluation import restrict_to_classes
    from ..files import atomic_write
    from ..inference import Predictor
    from ..train.checkpoint import model_from_checkpoint
    from ..viz import overlay_with_legend, save_image, save_index_png

    if args.crf:
        require_crf()  # one line before the model loads, not a failure on the first image
    model, ckpt = model_from_checkpoint(args.checkpoint)
    allowed = torch.tensor(tag_indices(args.tags, model.classes)) if args.tags else None
    files = expand_inputs(args.inputs)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to output folder {out}: {e.strerror or e} (choose another --out)") from None
    check_headers(files)
    palette = model.palette or default_palette(model.num_classes)
    predictor = Predictor(model, args.device, amp=args.amp)
    opts = predict_options(args, ckpt)
    failed = []
    stems: dict[str, int] = {}
    for f in tqdm(files, desc="predict", dynamic_ncols=True):
        try:
            image = read_image(f)
            probs = predictor.predict_image(image[None], **opts).cpu()
        except UserError as e:
            failed.append(str(e) if str(f) in str(e) else f"{f}: {e}")
            continue
        if allowed is not None:
            probs = restrict_to_classes(probs, allowed)
        probs = probs[0]
        pred = dense_crf(image, probs, max_side=args.crf_max_side) if args.crf else probs.argmax(0)
        stem = f.stem if f.stem not in stems else f"{f.stem}-{stems[f.stem]}"
        stems[f.stem] = stems.get(f.stem, 0) + 1
        if args.probs:
            atomic_write(out / f"{stem}.npy", lambda fh, p=probs: np.save(fh, p.numpy().astype(np.float16)))
        del probs  # the outputs below need only the argmax: C×H×W floats are GBs for a large photo
        save_index_png(pred, palette, out / f"{stem}.png")
        save_image(overlay_with_legend(image, pred, palette, model.classes, args.alpha), out / f"{stem}_overlay.png")
    refined = " (DenseCRF-refined)" if args.crf else ""
    print(f"{len(files) - len(failed)} predictions{refined} in {out} (<name>.png: class indices with a palette; "
          f"<name>_overlay.png: colour overlay with legend)")
    if failed:
        for msg in failed:
            print(f"skipped: {msg}", file=sys.stderr)
        raise UserError(f"{len(failed)} of {len(files)} inputs could not be read or segmented (listed above), "
                        f"e.g. {failed[0]}")
