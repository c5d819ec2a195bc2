"""Pictures and reports: colour maps, overlays, legends and image grids (so predictions are never mistaken for black
images), the metrics report and confusion matrix of an evaluation, training curves, and a checkpoint's predictions
on random validation samples."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .crf import dense_crf
from .errors import UserError
from .evaluation import checkpoint_dataset, protocol_options
from .files import atomic_write
from .inference import Predictor
from .provenance import summary
from .train.checkpoint import model_from_checkpoint

IGNORE_COLOR = (0, 0, 0)


def colorize(mask: torch.Tensor, palette: Sequence[Sequence[int]]) -> torch.Tensor:
    """int H×W class map → uint8 3×H×W colour image; values the palette has no colour for (an ignore label such as
    255 or −1, a label out of range) are black."""
    colours = [list(c) for c in palette]
    lut = torch.tensor(colours + [list(IGNORE_COLOR)], dtype=torch.uint8)  # the last row for everything else
    m = mask.to(torch.int64)
    m = torch.where((m >= 0) & (m < len(colours)), m, len(colours))
    return lut[m].permute(2, 0, 1).contiguous()


def overlay(image: torch.Tensor, mask: torch.Tensor, palette, alpha: float = 0.5) -> torch.Tensor:
    """Blend the colour-mapped ``mask`` over the uint8 3×H×W ``image``."""
    # in place: a few bytes per pixel beside the result, for photos of tens of megapixels (the same arithmetic)
    out = image.float().mul_(1 - alpha)
    out.add_(colorize(mask, palette).float().mul_(alpha))
    return out.round_().clamp_(0, 255).to(torch.uint8)


def save_index_png(mask: torch.Tensor | np.ndarray, palette, path: str | Path) -> None:
    """A palette PNG: pixel values are class indices (what tools read), and viewers show the class colours; indices
    above 255 are saved as a 16-bit grayscale PNG instead."""
    arr = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
        raise ValueError(f"class indices {int(arr.min())}..{int(arr.max())} do not fit a PNG")
    if arr.size and int(arr.max()) > 255:  # more than 256 classes: a 16-bit grayscale PNG (no palette) holds them
        save_image(Image.fromarray(arr.astype(np.uint16)), path)
        return
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    flat = [v for c in palette for v in c][:768]
    im.putpalette(flat + [0] * (768 - len(flat)))
    save_image(im, path)


def legend(classes: Sequence[str], palette, present: Sequence[int] | None = None, width: int = 200) -> Image.Image:
    """A vertical legend of class colour swatches and names (only ``present`` classes when given)."""
    ids = list(present) if present is not None else list(range(len(classes)))
    row = 16
    im = Image.new("RGB", (width, max(row, row * len(ids)) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    for k, c in enumerate(ids):
        y = 2 + k * row
        draw.rectangle([4, y + 2, 16, y + 13], fill=tuple(palette[c]) if c < len(palette) else (0, 0, 0),
                       outline=(0, 0, 0))
        draw.text((22, y + 1), f"{c}: {classes[c] if c < len(classes) else c}", fill=(0, 0, 0), font=font)
    return im


def to_pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(t.permute(1, 2, 0).cpu().numpy())


def grid(rows: list[list[torch.Tensor]], *, titles: Sequence[str] | None = None, classes=None, palette=None,
         max_width: int = 320) -> Image.Image:
    """Rows of uint8 3×H×W panels (e.g. input | truth | prediction) → one image, with column titles and a legend."""
    scale = min(1.0, max_width / max(p.shape[-1] for r in rows for p in r))
    ph = max(int(p.shape[-2] * scale) for r in rows for p in r)
    pw = max(int(p.shape[-1] * scale) for r in rows for p in r)
    cols = max(len(r) for r in rows)
    top = 18 if titles else 0
    leg = legend(classes, palette) if classes else None
    lw = leg.width if leg else 0
    canvas = Image.new("RGB", (cols * (pw + 4) + lw, max(top + len(rows) * (ph + 4), leg.height if leg else 0)),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if titles:
        for j, t in enumerate(titles):
            draw.text((j * (pw + 4) + 4, 3), t, fill=(0, 0, 0), font=ImageFont.load_default())
    for i, r in enumerate(rows):
        for j, p in enumerate(r):
            canvas.paste(to_pil(p).resize((pw, ph), Image.NEAREST), (j * (pw + 4), top + i * (ph + 4)))
    if leg:
        canvas.paste(leg, (cols * (pw + 4), 0))
    return canvas


def save_image(im: Image.Image, path: str | Path) -> None:
    """Save ``im`` atomically, in the format its extension names."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown file extension: {Path(path).suffix}")
    atomic_write(path, lambda f: im.save(f, format=fmt))


def overlay_with_legend(image: torch.Tensor, pred: torch.Tensor, palette, classes: Sequence[str],
                        alpha: float = 0.5) -> Image.Image:
    """The prediction over the image, with a legend of the classes present on its right."""
    ov = to_pil(overlay(image, pred, palette, alpha))
    leg = legend(classes, palette, sorted(int(c) for c in pred.unique()))
    canvas = Image.new("RGB", (ov.width + leg.width, max(ov.height, leg.height)), (255, 255, 255))
    canvas.paste(ov, (0, 0))
    canvas.paste(leg, (ov.width, 0))
    return canvas


def visualize(checkpoint: str | Path, *, data: str | None = None, root: str | None = None, split: str | None = None,
              n: int = 8, seed: int = 0, crf: bool = False, crf_max_side: int | None = None,
              out: str | Path | None = None, device: str = "auto") -> Path:
    """A PNG grid of ``n`` random samples of the checkpoint's validation data (or ``data`` / ``root`` /
    ``split``): input | truth | prediction (| CRF), at the recipe's test-time protocol; returns its path
    (default: ``visualize.png`` next to the checkpoint)."""
    model, ckpt = model_from_checkpoint(checkpoint)
    ds = checkpoint_dataset(ckpt, name=data, root=root, split=split)
    predictor = Predictor(model, device)
    options = protocol_options(ckpt)
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(ds), generator=g)[:n].tolist()
    out = Path(out) if out else Path(checkpoint).parent / "visualize.png"
    save_image(prediction_grid(predictor, ds, picks, options, crf=crf, crf_max_side=crf_max_side), out)
    return out


def prediction_grid(predictor: Predictor, ds, indices: Sequence[int], options: dict, *, crf: bool = False,
                    crf_max_side: int | None = None) -> Image.Image:
    """input | truth | prediction (| CRF) of the samples ``ds[indices]``, predicted with ``options`` (those of
    ``Predictor.predict_image``), as one grid with column titles and the dataset's legend."""
    palette = ds.get_palette()
    rows = []
    for i in indices:
        image, mask = ds[i]
        image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        mask = mask[0] if mask.ndim == 3 else mask  # a several-head dataset: the first head's, as predicted
        probs = predictor.predict_image(image[None], **options)[0].cpu()
        shown = ds.display_image(image)  # RGB (NYUDv2's inputs may add depth or HHA channels)
        row = [shown, colorize(mask, palette), colorize(probs.argmax(0), palette)]
        if crf:
            row.append(colorize(dense_crf(shown, probs, max_side=crf_max_side), palette))
        rows.append(row)
    titles = ["input", "truth", "prediction"] + (["CRF"] if crf else [])
    return grid(rows, titles=titles, classes=list(ds.classes), palette=palette)


# ------------------------------------------------------------------------------------------------- reports
def metrics_markdown(m: dict) -> str:
    """The metrics of ``fcnseg evaluate`` as a Markdown report (protocol, scores, per-class table)."""
    proto = m.get("protocol")
    size = proto.get("input_size") if proto else None
    size = (f"shorter side {size}" if isinstance(size, int) else "×".join(map(str, size))) if size else "as is"
    how = (f"input {size}, scales "
           f"{','.join(f'{s:g}' for s in proto['scales'])}, flip {'on' if proto['flip'] else 'off'}"
           + (f", sliding window {proto['window']}" if proto.get("window") else "")
           + (", classes restricted to each image's ground-truth tags" if proto.get("given_tags") else "")
           ) if proto else None
    lines = [f"# {m.get('dataset', '')} {m.get('split', '')} — {m.get('images', '?')} images", "",
             *([f"Protocol: {how}; metrics at the original resolution.", ""] if how else []),
             *([f"Provenance: {summary(m['provenance'])}; command `{m['provenance']['command']}`.", ""]
               if m.get("provenance") else []),
             "| metric | value | with CRF |" if "crf" in m else "| metric | value |",
             "|---|---|---|" if "crf" in m else "|---|---|"]
    for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "foreground_accuracy"):
        if k not in m:
            continue
        extra = f" {m['crf'][k]:.4f} |" if "crf" in m else ""
        lines.append(f"| {k} | {m[k]:.4f} |{extra}")
    if "per_image_mean_iou" in m:
        lines.append(f"| per_image_mean_iou (mean over images; not the paper's mIoU) | "
                     f"{m['per_image_mean_iou']:.4f} |{' |' if 'crf' in m else ''}")
    lines += ["", "| class | IoU | accuracy | pixels |", "|---|---|---|---|"]
    fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    for c, v in m["per_class"].items():
        lines.append(f"| {c} | {fmt(v['iou'])} | {fmt(v['accuracy'])} | {v['pixels']} |")
    return "\n".join(lines) + "\n"


def _pyplot():
    """matplotlib's pyplot, headless. Imported on use: it takes about a second, and only the figures need it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path) -> None:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    _pyplot().close(fig)


def confusion_png(hist, classes: Sequence[str], path: str | Path) -> None:
    """The row-normalised confusion matrix as a PNG (class names on the axes up to 60 classes)."""
    plt = _pyplot()
    h = np.asarray(hist, dtype=np.float64)
    norm = h / np.maximum(h.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * n + 2), max(4, 0.35 * n + 1.5)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 15:  # few enough cells to print each share
        for i, j in np.ndindex(n, n):
            if h[i].sum():
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    if n <= 60:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title("confusion (row-normalised)")
    fig.tight_layout()
    save_figure(fig, path)


def log_records(log: Path) -> list[dict]:
    """The records of a run's log.jsonl (a line cut by a crash is skipped)."""
    records = []
    for line in log.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash
    return records


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Training curves (training and validation loss, validation mIoU) of every ``log.jsonl`` under ``run_dir`` as
    ``curves.png``, and for ``--debug`` runs the per-layer gradient norms as ``gradient_flow.png``; returns the files
    written."""
    plt = _pyplot()
    run = Path(run_dir)
    logs = sorted(run.rglob("log.jsonl"))
    if not logs:
        raise UserError(f"no log.jsonl under {run} (is it a run folder written by fcnseg train?)")
    out = Path(out) if out else run
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    grads = []
    for lg in logs:
        recs = log_records(lg)
        tr = [(r["iter"], r["loss"]) for r in recs if "loss" in r]
        va = [(r["iter"], r["val"]["mean_iou"]) for r in recs if "val" in r]
        vl = [(r["iter"], r["val"]["loss"]) for r in recs if "val" in r and r["val"].get("loss") is not None]
        if tr:
            a1.plot(*zip(*tr), label=lg.parent.name)
        if vl:
            a1.plot(*zip(*vl), linestyle="--", marker="o", label=f"{lg.parent.name} (validation)")
        if va:
            a2.plot(*zip(*va), marker="o", label=lg.parent.name)
        grads += [r for r in recs if "grad_norms" in r]
    a1.set_xlabel("iteration"); a1.set_ylabel("loss (dashed: validation)"); a1.set_yscale("log")  # noqa: E702
    a2.set_xlabel("iteration"); a2.set_ylabel("validation mean IoU")  # noqa: E702
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "curves.png")
    written = [out / "curves.png"]
    if grads:
        names = [n for n in grads[-1]["grad_norms"] if n.endswith("weight")]
        fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 4))
        for r in grads[:: max(1, len(grads) // 5)] + [grads[-1]]:
            ax.plot([r["grad_norms"].get(n, float("nan")) for n in names], alpha=0.7, label=f"iter {r['iter']}")
        ax.set_xticks(range(len(names)), [n.replace(".weight", "") for n in names], rotation=90, fontsize=5)
        ax.set_yscale("log"); ax.set_ylabel("gradient L2 norm"); ax.set_title("gradient flow")  # noqa: E702
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, out / "gradient_flow.png")
        written.append(out / "gradient_flow.png")
    return written
