"""Checkpoint files: what a run saves (``last.pt``, ``best.pt``), reading them back safely, rebuilding the model
they hold, and resuming a run from them.

A checkpoint is a dict of tensors and plain values, read with ``torch.load(weights_only=True)``: ``model`` (the
weights; their moving average when the run keeps one), ``raw_model`` and ``ema_updates`` (with an EMA),
``model_spec``, ``optimizer``, ``scaler``, ``iteration``, ``best_miou``, ``scheduler``, ``used_time``,
``follows_clock``, ``rng``, ``config``, ``classes``, ``palette``, ``normalization``, ``finished``, ``stage``,
``metrics`` and ``format_version``. Checkpoints from before ``format_version`` (version 0) load the same way.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..evaluation import protocol_options
from ..files import remove_stale_temporaries, safe_torch_load, save_torch
from ..models import build_model, model_spec
from ..normalization import Normalization
from ..weights import load_state_into
from .config import TrainConfig
from .optim import WeightEMA

log = logging.getLogger("fcnseg")
FORMAT_VERSION = 1  # bump when a key changes meaning; readers accept every version up to this one
WRITE_HINT = " (free disk space or choose another --out)"


# ---------------------------------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at ``path`` (safely loaded); a one-line error for anything else."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_spec" not in ckpt:
        raise UserError(f"{path} is not an fcnseg checkpoint (no model/model_spec); use fcnseg.load_weights for "
                        f"other weight files")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {ckpt['format_version']}, newer than this fcnseg reads "
                        f"({FORMAT_VERSION}): upgrade fcnseg")
    return ckpt


def model_from_checkpoint(path: str | Path, *, ema: bool = True) -> tuple[nn.Module, dict]:
    """The model a checkpoint was saved from, with its weights, normalisation, ``classes`` and ``palette``, and the
    checkpoint dict itself. A run trained with ``ema_decay`` saves the weight average as ``model`` and the last
    training weights as ``raw_model``; ``ema=False`` loads the latter (the same weights for a run without EMA)."""
    ckpt = read_checkpoint(path)
    if not ema and "raw_model" in ckpt:
        ckpt = dict(ckpt, model=ckpt["raw_model"])
    spec = ckpt["model_spec"]
    try:
        model = build_model(spec["arch"], backbone=spec["backbone"], num_classes=spec["num_classes"],
                            geometry=spec["geometry"], learnable_upsampling=spec.get("learnable_upsampling", False),
                            global_context=spec.get("global_context", False), heads=spec.get("heads"),
                            in_channels=spec.get("in_channels", 3), streams=spec.get("streams", 1),
                            grid=spec.get("grid", "cell"))  # specs from before "grid" had the cell head
    except (KeyError, ValueError) as e:
        raise UserError(f"{path}: cannot rebuild its model ({e})") from None
    load_state_into(model, ckpt["model"], path, strict_classes=True, require_all=True)
    model.normalization = Normalization.from_dict(spec["normalization"])
    model.classes = ckpt.get("classes") or [str(i) for i in range(model.num_classes)]
    model.palette = [tuple(c) for c in ckpt["palette"]] if ckpt.get("palette") else None
    return model, ckpt


def load_checkpoint(path: str | Path, *, ema: bool = True) -> nn.Module:
    """The model saved in an fcnseg checkpoint (``last.pt`` / ``best.pt``), ready for :class:`fcnseg.Predictor`:
    its weights (the moving average when the run kept one; ``ema=False`` for the last training weights),
    ``normalization``, ``classes``, ``palette`` and ``predict_options`` — the recipe's test-time protocol as
    ``Predictor.predict_image`` keywords (the training ``resize`` as ``input_size``, ``flip``, ``scales``), which
    ``fcnseg evaluate`` applies by default.

    >>> model = fcnseg.load_checkpoint("runs/camvid/best.pt")
    >>> probs = fcnseg.Predictor(model).predict_image(images, **model.predict_options)  # uint8 N×3×H×W
    """
    model, ckpt = model_from_checkpoint(path, ema=ema)
    model.predict_options = protocol_options(ckpt)
    return model


# ---------------------------------------------------------------------------------------------------- writing
def training_state(run, *, finished: bool, metrics: dict | None) -> dict:
    """The checkpoint of ``run`` (a :class:`fcnseg.train.setup.Run`) as it stands."""
    model, ema, cfg = run.model, run.ema, run.cfg
    weights = {"model": model.state_dict()} if ema is None else {
        "model": ema.module.state_dict(), "raw_model": model.state_dict(), "ema_updates": ema.updates}
    palette = [list(c) for c in run.train_ds.get_palette()]
    return {"format_version": FORMAT_VERSION, **weights, "model_spec": model_spec(model),
            "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(), "iteration": run.iteration,
            "best_miou": run.best_miou,
            # the schedule is a pure function of (iteration, progress): this records where it stands
            "scheduler": {"name": cfg.scheduler, "lr_factor": run.optimizer.param_groups[0]["lr"] / cfg.lr,
                          "warmup_iters": cfg.warmup_iters, "max_iters": cfg.max_iters},
            "used_time": time.monotonic() - run.t_start, "follows_clock": run.follows_clock, "rng": rng_state(),
            "config": cfg.to_dict(), "classes": run.classes,
            "palette": palette + [[0, 0, 0]] * (run.num_classes - len(palette)),
            "normalization": model.normalization.to_dict(), "finished": finished, "stage": run.stage,
            "metrics": {k: v for k, v in (metrics or {}).items() if k != "per_class"}}


def save_checkpoints(run, *, finished: bool, metrics: dict | None) -> None:
    """Write ``last.pt`` and, when ``metrics`` beat the best validation mIoU so far, ``best.pt`` (weights only, no
    optimizer state). Every process tracks the best; rank 0 writes."""
    is_best = metrics is not None and metrics["mean_iou"] > run.best_miou
    if is_best:
        run.best_miou = metrics["mean_iou"]
    if not run.main:
        return
    state = training_state(run, finished=finished, metrics=metrics)
    save_torch(state, run.out / "last.pt", hint=WRITE_HINT)
    if is_best:
        save_torch(dict(state, optimizer=None, scaler=None), run.out / "best.pt", hint=WRITE_HINT)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------- resuming
def checkpoint_to_resume(cfg: TrainConfig, *, main: bool) -> dict | None:
    """The checkpoint ``cfg.resume`` names (``auto``: the run folder's ``last.pt``, when there is one), or None.
    Rank 0 first removes temporary files of a process killed while checkpointing."""
    out = Path(cfg.out)
    if main:
        remove_stale_temporaries(out, "last.pt", "best.pt")
    if cfg.resume == "auto" and (out / "last.pt").is_file():
        ckpt = read_checkpoint(out / "last.pt")
    elif cfg.resume not in (None, "auto"):
        ckpt = read_checkpoint(cfg.resume)
    else:
        return None
    if ckpt.get("optimizer") is None:
        raise UserError(f"{cfg.resume} holds weights only (best.pt keeps no optimizer state): resume from last.pt in "
                        f"the same folder, or start a new run from these weights with --init-from")
    return ckpt


def restore_weights(model: nn.Module, ckpt: dict) -> None:
    """The training weights of a run (``model`` is their average when the run keeps an EMA) and normalisation."""
    load_state_into(model, ckpt.get("raw_model", ckpt["model"]), "resume checkpoint", strict_classes=True,
                    require_all=True)
    model.normalization = Normalization.from_dict(ckpt["model_spec"]["normalization"])


def _plain(value):
    """Tuples and lists compare alike (a checkpoint may hold either)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def restore_training_state(ckpt: dict, *, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                           ema: WeightEMA | None, main: bool) -> dict:
    """Load a checkpoint's EMA, optimizer state, loss scaler and RNG state; returns where the run stood
    (``iteration``, ``best_miou``, ``used_time``, ``follows_clock``).

    The optimizer's state (moments, momentum buffers) resumes; its settings are this run's config, so a changed
    --lr / --weight-decay applies instead of being overwritten by the saved param groups."""
    if ema is not None and "raw_model" in ckpt:
        load_state_into(ema.module, ckpt["model"], "resume checkpoint", strict_classes=True, require_all=True)
        ema.updates = ckpt.get("ema_updates", 0)
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    changed = sorted({k.replace("initial_lr", "lr") for g, new in zip(optimizer.param_groups, settings)
                      for k in ("initial_lr", "weight_decay", "momentum", "betas", "eps")
                      if k in new and _plain(g.get(k)) != _plain(new[k])})
    for g, new in zip(optimizer.param_groups, settings):
        g.update(new)
    if changed and main:
        log.info("resume: %s from this run's config, not the checkpoint's", ", ".join(changed))
    if ckpt["scaler"]:  # empty when the run was saved without fp16 loss scaling (fp32 or bf16)
        scaler.load_state_dict(ckpt["scaler"])
    # (checkpoints from before follows_clock: their schedule followed the clock)
    position = {"iteration": ckpt["iteration"], "best_miou": ckpt.get("best_miou", -1.0),
                "used_time": ckpt.get("used_time", 0.0), "follows_clock": ckpt.get("follows_clock", True)}
    set_rng_state(ckpt["rng"])
    return position
