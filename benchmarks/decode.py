"""Image decode throughput: fcnseg's decoder (Pillow, header checked, EXIF applied) against torchvision.io's
libpng / libjpeg-turbo decoders (deprecated in torchvision 0.29; the path fcnseg used before), same files, same run.

    python benchmarks/decode.py --camvid ../shared/datasets/camvid --ccp ../shared/datasets/ccp

Prints images/s for each decoder and the ratio, interleaving the two decoders file by file (best of --repeat
passes), so that a busy machine slows both alike.
"""
from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

import torch

from fcnseg.data.io import read_image
from fcnseg.runtime import cpu_model


def torchvision_decoder():
    """torchvision.io's decoder, or None where it is gone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchvision.io import ImageReadMode, decode_image, read_file
    except ImportError:
        return None

    def decode(path: Path) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    return decode


def measure(files: list[Path], decoders: dict, repeat: int) -> dict[str, float]:
    """Seconds per image for each decoder: the best of ``repeat`` passes, decoders interleaved per file."""
    best = {k: float("inf") for k in decoders}
    for _ in range(repeat):
        total = dict.fromkeys(decoders, 0.0)
        for f in files:
            for name, fn in decoders.items():
                t0 = time.perf_counter()
                fn(f)
                total[name] += time.perf_counter() - t0
        for name in decoders:
            best[name] = min(best[name], total[name] / len(files))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camvid", type=Path, help="CamVid root (480×360 PNGs in train/)")
    ap.add_argument("--ccp", type=Path, help="CCP root (550×836 JPEGs in photos/)")
    ap.add_argument("--n", type=int, default=100, help="files per dataset")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    decoders = {"fcnseg (Pillow)": read_image}
    peer = torchvision_decoder()
    if peer is not None:
        decoders["torchvision.io"] = peer
    print(f"CPU: {cpu_model() or platform.processor()}; torch {torch.__version__}; one thread")
    print("| files | decoder | ms / image | images / s | vs torchvision.io |")
    print("|---|---|---:|---:|---:|")
    sets = [("CamVid PNG 480×360", args.camvid and sorted((args.camvid / "train").glob("*.png"))),
            ("CCP JPEG 550×836", args.ccp and sorted((args.ccp / "photos").glob("*.jpg")))]
    for label, files in sets:
        if not files:
            continue
        files = files[:args.n]
        for f in files:  # warm the page cache
            f.read_bytes()
        sec = measure(files, decoders, args.repeat)
        ref = sec.get("torchvision.io")
        for name, s in sec.items():
            ratio = f"{ref / s:.2f}×" if ref else "–"
            print(f"| {label} ({len(files)}) | {name} | {s * 1e3:.2f} | {1 / s:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
