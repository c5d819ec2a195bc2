"""A training run as one self-contained HTML page, to read in a browser or send by mail: training and validation
loss, validation mIoU and learning-rate curves, per-class IoU, the row-normalised confusion matrix, a grid of
predictions, the run's config and where its figures come from. Every picture is a PNG embedded in the page as a
``data:`` URI, and written beside it too."""
from __future__ import annotations

import base64
import datetime
import html
import json
import logging
import math
from pathlib import Path

import numpy as np

from . import __version__
from .errors import UserError
from .evaluation import checkpoint_dataset, evaluate, protocol_options
from .files import atomic_write, write_text
from .inference import Predictor
from .metrics import scores
from .provenance import summary
from .train.checkpoint import model_from_checkpoint
from .viz import _pyplot, confusion_png, log_records, prediction_grid, save_figure, save_image

log = logging.getLogger("fcnseg")
PREVIEW_IMAGES = 4  # rows of a prediction grid: evaluate's predictions.png, and the report's own


def write_report(run_dir: str | Path, eval_dir: str | Path | None = None, out: str | Path | None = None, *,
                 device: str = "auto") -> Path:
    """Write the report of the run in ``run_dir`` (default ``RUN_DIR/report.html``) and its PNGs beside it, named
    after it (``report-loss.png``, …); returns the page's path.

    ``eval_dir``: a folder written by ``fcnseg evaluate``; its scores, confusion matrix and prediction grid are
    shown. Without one, or when it holds no confusion.npy, the run's best.pt (else last.pt) is scored on its
    validation data at its recipe's protocol, on ``device``, to draw them."""
    run = Path(run_dir)
    histories = read_histories(run)
    evaluation = read_evaluation(Path(eval_dir)) if eval_dir is not None else None
    out = Path(out) if out else run / "report.html"
    png = lambda name: out.parent / f"{out.stem}-{name}.png"  # noqa: E731
    sections = [_summary(run, histories, evaluation), *_curves(histories, png)]
    sections += _scores(run, histories, evaluation, png, device)
    config = run / "config.yaml"
    sections.append(("config", "Config", f"<pre>{html.escape(config.read_text())}</pre>" if config.is_file() else
                     _note(f"{config} is missing.")))
    sections.append(("provenance", "Provenance", _provenance(histories, evaluation)))
    write_text(_page(f"fcnseg report — {run.resolve().name}", sections), out)
    return out


def read_histories(run: Path) -> list[tuple[str, list[dict]]]:
    """(label, records) of every log.jsonl under ``run``: one per stage of a multi-stage recipe."""
    if not run.is_dir():
        raise UserError(f"run folder not found: {run}")
    logs = sorted(run.rglob("log.jsonl"), key=lambda p: (p.stat().st_mtime, p))  # a recipe's stages in order
    if not logs:
        raise UserError(f"no log.jsonl under {run} (is it a run folder written by fcnseg train?)")
    histories = [(str(lg.parent.relative_to(run)) if lg.parent != run else "", log_records(lg)) for lg in logs]
    if not any("loss" in r for _, records in histories for r in records):
        raise UserError(f"{logs[0]} holds no training iteration yet: report once the run has logged some")
    return histories


def read_evaluation(folder: Path) -> dict:
    """What ``fcnseg evaluate --out FOLDER`` wrote: ``metrics`` (metrics.json), ``hist`` (confusion.npy, or None)
    and ``grid`` (predictions.png, or None)."""
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        raise UserError(f"{folder} has no metrics.json (write it with `fcnseg evaluate CKPT --out {folder}`)")
    try:
        metrics = json.loads(metrics_file.read_text())
        classes = list(metrics["per_class"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{metrics_file}: not the metrics of `fcnseg evaluate` ({e})") from None
    hist = None
    if (folder / "confusion.npy").is_file():
        hist = np.load(folder / "confusion.npy", allow_pickle=False)
        if hist.shape != (len(classes), len(classes)):
            raise UserError(f"{folder / 'confusion.npy'} is {hist.shape}, not the {len(classes)}×{len(classes)} "
                            f"matrix of the {len(classes)} classes in its metrics.json")
    grid = folder / "predictions.png"
    return {"folder": folder, "metrics": metrics, "hist": hist, "grid": grid if grid.is_file() else None}


def series(records: list[dict], value) -> list[tuple[int, float]]:
    """(iteration, ``value(record)``) of the records where it is not None. A resumed run logs again the iterations
    after its checkpoint: the later records replace the earlier ones."""
    points: dict[int, float] = {}
    for r in records:
        y = value(r)
        if y is None or "iter" not in r:
            continue
        if points and r["iter"] <= max(points):
            points = {i: v for i, v in points.items() if i < r["iter"]}
        points[r["iter"]] = y
    return sorted(points.items())


def _val(key: str):
    return lambda r: r["val"].get(key) if isinstance(r.get("val"), dict) else None


def _curves(histories, png) -> list[tuple[str, str, str]]:
    """The loss, validation mIoU and learning-rate sections."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter
    many = len(histories) > 1
    name = lambda label, what: f"{label} {what}" if many else what  # noqa: E731
    sections = []
    fig, ax = plt.subplots(figsize=(5, 3.3))
    val_losses = 0
    for label, recs in histories:
        train = series(recs, lambda r: r.get("loss"))
        val = series(recs, _val("loss"))
        val_losses += len(val)
        if train:
            ax.plot(*zip(*train), label=name(label, "training"))
        if val:
            ax.plot(*zip(*val), marker="o", linestyle="--", label=name(label, "validation"))
    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    if ys and min(ys) > 0 and max(ys) > 10 * min(ys):  # a log scale where the loss spans a decade or more
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))  # 0.3, not 3×10⁻¹
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if f"{y:.0e}"[0] in "25" else ""))
    _finish(ax, "loss", fig, png("loss"))
    note = "" if val_losses else _note("This run's log records no validation loss yet (none before its first "
                                       "validation, and none in logs written before fcnseg recorded it).")
    sections.append(("loss", "Loss: training and validation", _figure(png("loss"), "training and validation loss")
                     + note))
    for key, title, ylabel, value in (("miou", "Validation mean IoU", "validation mean IoU", _val("mean_iou")),
                                      ("lr", "Learning rate", "learning rate", lambda r: r.get("lr"))):
        fig, ax = plt.subplots(figsize=(5, 3.3))
        for label, recs in histories:
            points = series(recs, value)
            if points:
                ax.plot(*zip(*points), marker="o" if key == "miou" else None, label=name(label, ylabel))
        _finish(ax, ylabel, fig, png(key))
        sections.append((key, title, _figure(png(key), title)))
    return sections


def _finish(ax, ylabel: str, fig, path: Path) -> None:
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _scores(run: Path, histories, evaluation: dict | None, png, device: str) -> list[tuple[str, str, str]]:
    """The per-class IoU, confusion matrix and prediction sections: from ``evaluation`` where it has them, else from
    scoring the run's checkpoint, else (per-class IoU only) from the last validation in the log."""
    hist, classes, grid, source, problem = None, None, None, None, None
    if evaluation is not None and evaluation["hist"] is not None:
        m = evaluation["metrics"]
        hist, classes = evaluation["hist"], list(m["per_class"])
        source = f"{evaluation['folder']}: {_scored(m)}"
    else:
        try:
            hist, classes, grid, source = _score_checkpoint(run, evaluation, device)
        except UserError as e:
            problem = str(e)
    if evaluation is not None:
        per_class = {c: v["iou"] for c, v in evaluation["metrics"]["per_class"].items()}
        per_class_source = f"{evaluation['folder']}: {_scored(evaluation['metrics'])}"
    elif hist is not None:
        per_class = {c: v["iou"] for c, v in scores(hist, classes)["per_class"].items()}
        per_class_source = source
    else:
        last = [(label, r) for label, recs in histories for r in recs if "per_class_iou" in r][-1:]
        per_class = last[0][1]["per_class_iou"] if last else None
        per_class_source = f"the validation at iteration {last[0][1]['iter']}" if last else None
    sections = []
    if per_class:
        _per_class_png(per_class, png("per-class-iou"))
        body = _figure(png("per-class-iou"), "per-class IoU") + _note(f"From {per_class_source}.")
    else:
        body = _note("No per-class IoU: the run has not validated yet and no evaluation was given.")
    sections.append(("per-class-iou", "Per-class IoU", body))
    if hist is not None:
        confusion_png(hist, classes, png("confusion"))
        body = _figure(png("confusion"), "confusion matrix") + _note(
            f"Rows: truth, normalised to sum to 1; columns: prediction. From {source}.")
    else:
        body = _note(f"No confusion matrix: {problem}")
    sections.append(("confusion", "Confusion matrix", body))
    if evaluation is not None and evaluation["grid"] is not None:
        atomic_write(png("predictions"), lambda f: f.write(evaluation["grid"].read_bytes()))
        body = _figure(png("predictions"), "input, truth, prediction") + _note(f"From {evaluation['grid']}.")
    elif grid is not None:
        save_image(grid, png("predictions"))
        body = _figure(png("predictions"), "input, truth, prediction") + _note(f"From {source}.")
    elif evaluation is not None and evaluation["hist"] is not None:
        body = _note(f"No prediction grid: {evaluation['folder']} has no predictions.png (`fcnseg evaluate CKPT "
                     f"--out DIR` writes one).")
    else:
        body = _note(f"No prediction grid: {problem}")
    sections.append(("predictions", "Predictions: input | truth | prediction", body))
    return sections


def _scored(m: dict) -> str:
    return f"{m.get('checkpoint', '?')} on {m.get('dataset', '?')} {m.get('split', '')} ({m.get('images', '?')} images)"


def _score_checkpoint(run: Path, evaluation: dict | None, device: str):
    """(confusion matrix, classes, prediction grid, what was scored) of the evaluation's checkpoint on its dataset,
    or of the run's best.pt (else last.pt) on its validation data, at the recipe's protocol."""
    m = evaluation["metrics"] if evaluation else {}
    given = Path(m["checkpoint"]) if m.get("checkpoint") else None
    candidates = [given] if given else [run / "best.pt", run / "last.pt"]
    checkpoint = next((c for c in candidates if c.is_file()), None)
    if checkpoint is None:
        raise UserError(f"no checkpoint to score ({', '.join(map(str, candidates))} not found); pass --eval DIR "
                        f"written by `fcnseg evaluate`")
    model, ckpt = model_from_checkpoint(checkpoint)
    ds = checkpoint_dataset(ckpt, name=m.get("dataset"), split=m.get("split"))
    log.info("scoring %s on %s %s for the confusion matrix (an evaluation folder with confusion.npy saves this)",
             checkpoint, ds.name, ds.split)
    predictor = Predictor(model, device)
    options = protocol_options(ckpt)
    result = evaluate(predictor, ds, num_classes=model.num_classes, ignore_index=ds.ignore_index, **options)
    grid = prediction_grid(predictor, ds, range(min(PREVIEW_IMAGES, len(ds))), options)
    return (result["hist"].numpy(), list(model.classes), grid,
            f"{checkpoint} on {ds.name} {ds.split} ({result['images']} images), scored for this report")


def _per_class_png(per_class: dict, path: Path) -> None:
    plt = _pyplot()
    names = list(per_class)
    values = [v if v is not None else math.nan for v in per_class.values()]
    fig, ax = plt.subplots(figsize=(5, max(2.0, 0.28 * len(names) + 0.9)))
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(values), color="#4c72b0")
    for i, v in enumerate(values):
        ax.text((0 if math.isnan(v) else v) + 0.01, i, "n/a" if math.isnan(v) else f"{v:.3f}", va="center",
                fontsize=7)
    ax.set_yticks(y, names, fontsize=7 if len(names) <= 40 else 5)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("IoU")
    known = [v for v in values if not math.isnan(v)]
    if known:
        ax.axvline(sum(known) / len(known), color="grey", linestyle=":", label=f"mean {sum(known) / len(known):.3f}")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def _summary(run: Path, histories, evaluation: dict | None) -> tuple[str, str, str]:
    records = [r for _, recs in histories for r in recs]
    train = [r for r in records if "loss" in r]
    vals = [r for r in records if isinstance(r.get("val"), dict)]
    rows = [("run", html.escape(str(run.resolve()))), ("iterations logged", str(train[-1]["iter"])),
            ("last training loss", f"{train[-1]['loss']:.4f} (iteration {train[-1]['iter']})")]
    if vals:
        best = max(vals, key=lambda r: r["val"].get("mean_iou") or -1)
        rows.append(("best validation mIoU", f"{best['val']['mean_iou']:.4f} (iteration {best['iter']})"))
        losses = [r for r in vals if r["val"].get("loss") is not None]
        if losses:
            rows.append(("last validation loss", f"{losses[-1]['val']['loss']:.4f} (iteration {losses[-1]['iter']})"))
    if evaluation is not None:
        m = evaluation["metrics"]
        rows.append(("evaluation", html.escape(f"mean IoU {m.get('mean_iou', math.nan):.4f}, pixel accuracy "
                                               f"{m.get('pixel_accuracy', math.nan):.4f}: {_scored(m)}")))
    return "summary", "Summary", _table(rows)


def _provenance(histories, evaluation: dict | None) -> str:
    rows = []
    for label, recs in histories:
        for r in recs:
            if isinstance(r.get("provenance"), dict):
                p = r["provenance"]
                what = f"training{' ' + label if label else ''}, from iteration {r.get('iter', 0)}"
                rows.append((what, f"{html.escape(summary(p))}<br><code>{html.escape(str(p['command']))}</code>"))
    if not rows:
        rows.append(("training", "not recorded (the run's log predates provenance records)"))
    if evaluation is not None and isinstance(evaluation["metrics"].get("provenance"), dict):
        p = evaluation["metrics"]["provenance"]
        rows.append(("evaluation", f"{html.escape(summary(p))}<br><code>{html.escape(str(p['command']))}</code>"))
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    rows.append(("this report", f"fcnseg {__version__}, {now}"))
    return _table(rows)


def _figure(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _table(rows: list[tuple[str, str]]) -> str:
    """A two-column table; the values are HTML already (escape them before)."""
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; max-width: 1400px; }
h1 { font-size: 20px; margin: 0 0 8px; } h2 { font-size: 16px; margin: 4px 0 6px; }
.row { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 12px; }
section { border: 1px solid #ddd; border-radius: 6px; padding: 8px 10px; flex: 1 1 340px; min-width: 0; }
img { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; } th, td { text-align: left; vertical-align: top; padding: 2px 10px 2px 0; }
th { font-weight: 600; white-space: nowrap; } pre { font-size: 11px; max-height: 520px; overflow: auto; margin: 0; }
code { font-size: 12px; } .note { color: #666; font-size: 12px; margin: 4px 0 0; }
"""
# sections side by side in one row, by id; the others take a row each
ROWS = (("summary",), ("loss", "miou", "lr"), ("per-class-iou", "confusion"), ("predictions",),
        ("config", "provenance"))


def _page(title: str, sections: list[tuple[str, str, str]]) -> str:
    by_id = {s[0]: s for s in sections}
    body = []
    for row in ROWS:
        parts = [f'<section id="{k}"><h2>{html.escape(t)}</h2>{b}</section>' for k, t, b in
                 (by_id[i] for i in row if i in by_id)]
        body.append(f'<div class="row">{"".join(parts)}</div>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n" + "\n".join(body)
            + "\n</body></html>\n")
