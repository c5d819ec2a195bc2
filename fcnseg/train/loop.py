"""The training loop: ``train`` runs a recipe's stages, ``train_stage`` one stage (setup, then steps with periodic
validation and checkpoints), ``train_step`` one optimizer step. Works unchanged under torchrun (DDP)."""
from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from .. import distributed as dist
from ..errors import UserError
from ..evaluation import evaluate
from ..files import atomic_path, write_text
from ..metrics import scores
from ..runtime import autocast
from ..viz import colorize
from .checkpoint import checkpoint_to_resume, save_checkpoints
from .config import TrainConfig, stage_configs
from .schedule import follows_clock, lr_factor, size_scale
from .setup import Run, seed_rngs, setup, train_mode

log = logging.getLogger("fcnseg")
VAL_KEYS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "per_image_mean_iou", "foreground_accuracy",
            "loss")


def train(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Run a recipe (all its stages). Returns the final stage's summary (best mIoU, paths, iterations)."""
    distributed = dist.init_from_env()
    out = Path(cfg.out)
    if dist.is_main():
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write to output folder {out}: {e.strerror or e} (choose another --out)") from None
        write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), out / "config.yaml")
    dist.barrier()
    stages = stage_configs(cfg)
    summary: dict = {}
    previous: Path | None = None
    resume_at = None  # a multi-stage run resumed from a named file: that file's stage resumes from it, the others
    if len(stages) > 1 and cfg.resume not in (None, "auto"):  # from their own last.pt (finished ones are skipped)
        folder = Path(cfg.resume).resolve().parent
        resume_at = next((i for i, (name, _) in enumerate(stages) if (out / name).resolve() == folder), 0)
    for i, (name, scfg) in enumerate(stages):
        scfg.out = str(out if name is None else out / name)
        if resume_at is not None and i != resume_at:
            scfg.resume = "auto"
        if previous is not None and not scfg.init_from:
            scfg.init_from = str(previous)
        if name is not None:
            log.info("stage %s: %s/%s, trainable=%s", name, scfg.arch, scfg.backbone, scfg.trainable or "all")
        summary = train_stage(scfg, progress=progress, stage=name)
        dist.barrier()  # rank 0 writes the stage's checkpoints; the next stage's other ranks start from them
        best = Path(summary["out"]) / "best.pt"  # looked up after the barrier, so every rank sees the same file
        previous = best if best.exists() else Path(summary["last"])
    if len(stages) > 1 and dist.is_main():  # the final stage's checkpoints are the run's
        for f in ("last.pt", "best.pt"):
            src = Path(summary["out"]) / f
            if src.exists():
                with atomic_path(out / f) as tmp:
                    shutil.copyfile(src, tmp)
        summary = dict(summary, last=str(out / "last.pt"), best=str(out / "best.pt"))
    dist.barrier()
    if distributed:
        torch.distributed.destroy_process_group()
    return summary


def train_stage(cfg: TrainConfig, *, progress: bool = True, stage: str | None = None) -> dict:
    """Train one stage to ``cfg.max_iters`` (or its time budget), validating and checkpointing every
    ``val_every`` iterations and at the end."""
    out = Path(cfg.out)
    seed_rngs(cfg)
    resume = checkpoint_to_resume(cfg, main=dist.is_main())
    if resume is not None and resume.get("finished") and resume["iteration"] >= cfg.max_iters:
        log.info("%s already finished at iteration %d; nothing to resume", out, resume["iteration"])
        return {"out": str(out), "last": str(out / "last.pt"),
                "best": str(out / "best.pt") if (out / "best.pt").exists() else None,
                "iteration": resume["iteration"], "best_miou": resume.get("best_miou")}
    run = setup(cfg, resume, stage=stage, progress=progress)
    stream = run.plan.batches(run.iteration * cfg.accum_steps)
    bar = dist.progress_bar(cfg.max_iters, f"train{' ' + stage if stage else ''}", progress, initial=run.iteration)
    train_mode(run.net)
    finished_by_time = False
    try:
        while run.iteration < cfg.max_iters:
            scale = schedule_step(run, bar)
            if scale is None:
                finished_by_time = True
                break
            run.last_loss = train_step(run, stream, scale)
            run.iteration += 1
            log_step(run, bar)
            if run.iteration % cfg.val_every == 0 and run.iteration < cfg.max_iters:
                save_checkpoints(run, finished=False, metrics=validate(run, bar))
    except (RuntimeError, ValueError) as e:  # torch.OutOfMemoryError is a RuntimeError
        friendly = as_user_error(e, run)
        if friendly is None:
            raise
        raise friendly from None
    finally:
        bar.close()
        if run.debug_hooks is not None:
            run.debug_hooks.remove()
        if run.in_backward is not None:  # the returned model must not keep updating itself in later backward passes
            run.in_backward.remove()
    metrics = validate(run, bar)
    save_checkpoints(run, finished=True, metrics=metrics)
    run.logger.close()
    if run.main:
        why = "time budget reached" if finished_by_time else "max iterations reached"
        log.info("%s after %d iterations (%.0f s): last loss %.4f, val mIoU %.4f, best %.4f", why, run.iteration,
                 time.monotonic() - run.t_start, run.last_loss, metrics["mean_iou"], run.best_miou)
    return {"out": str(out), "last": str(out / "last.pt"), "best": str(out / "best.pt"), "iteration": run.iteration,
            "best_miou": run.best_miou, "metrics": metrics, "loss": run.last_loss, "model": run.model}


def schedule_step(run: Run, bar) -> float | None:
    """Set this iteration's learning rates; returns its batch-size scale, or None once the time budget is spent."""
    cfg, budget = run.cfg, run.budget
    # rank 0's clock on every rank: all stop at the same iteration and agree on the schedule
    elapsed = dist.broadcast_float(time.monotonic() - run.t_start) if budget is not None else 0.0
    if budget is not None and elapsed >= budget:
        return None
    if not run.follows_clock and follows_clock(run.iteration, elapsed, cfg.max_iters, budget):
        run.follows_clock = True  # for the rest of the run (and its resumptions)
        if run.main:
            bar.write(f"iter {run.iteration}: {cfg.max_iters} iterations would take "
                      f"{elapsed / max(run.iteration, 1) * cfg.max_iters / 60:.0f} min at this pace, over the "
                      f"{budget / 60:g}-min budget: the lr schedule follows the clock from here")
            run.logger.write({"iter": run.iteration, "schedule": "clock"})
    progress = max(run.iteration / cfg.max_iters, elapsed / budget if run.follows_clock else 0.0)
    factor = lr_factor(cfg, run.iteration, progress)
    scale = size_scale(cfg, progress)
    if scale != run.size_scale:
        run.size_scale = scale
        if run.main and cfg.size_schedule:
            bar.write(f"iter {run.iteration}: training batches at {scale:g}× the crop size")
            run.logger.write({"iter": run.iteration, "size_scale": scale})
    for g in run.optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    return scale


def train_step(run: Run, stream, scale: float = 1.0) -> float:
    """One optimizer step over ``accum_steps`` batches of ``stream``, resized by ``scale``; returns the loss."""
    cfg, accum = run.cfg, run.cfg.accum_steps
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for micro in range(accum):
        images, masks, indices = next_batch(stream)
        images, masks = prepare_batch(run, images, masks, indices, scale)
        sync = nullcontext() if (run.world == 1 or micro == accum - 1) else run.net.no_sync()
        with sync:
            with autocast(run.device, run.amp):
                logits = run.net(images)
            loss = heads_loss(logits, masks, getattr(run.model, "heads", None), weight=run.loss_weight,
                              ignore_index=cfg.ignore_index, reduction=cfg.loss_reduction)
            if not torch.isfinite(loss):
                files = "; ".join(run.train_ds.describe(i) for i in indices)
                raise UserError(f"loss is {loss.item()} at iteration {run.iteration + 1} on batch {files}; "
                                f"lower --lr, try --amp none, or check the data with `fcnseg data check`")
            run.scaler.scale(loss / accum).backward()
        loss_sum += loss.item() / accum
    if run.debug_hooks is not None and (run.iteration + 1) % cfg.log_every == 0:
        run.debug_hooks.log_gradients(run.iteration + 1)
    if run.in_backward is None:  # (otherwise every parameter was updated during backward)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    if run.ema is not None:
        run.ema.update()
    return loss_sum


def next_batch(stream):
    try:
        return next(stream)
    except UserError as e:
        # a DataLoader worker re-raises our error with its traceback in the message: keep the original line
        lines = [line for line in str(e).splitlines() if line.strip()]
        if len(lines) > 1:
            raise UserError(_strip_error_class(lines[-1])) from None
        raise


def _strip_error_class(line: str) -> str:
    """``fcnseg.imagefile.UnreadableImage: cannot read …`` → ``cannot read …`` (UserError and its subclasses)."""
    names, todo = set(), [UserError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    head, sep, rest = line.partition(": ")
    return rest if sep and head.rsplit(".", 1)[-1] in names else line


def prepare_batch(run: Run, images: torch.Tensor, masks: torch.Tensor, indices: list[int],
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A loaded batch on the device: normalised, resized by ``scale``, labels checked, in the run's memory format."""
    cfg = run.cfg
    images = run.model.normalization(images.to(run.device, non_blocking=True))
    masks = masks.to(run.device, non_blocking=True)
    images, masks = resize_batch(images, masks, scale)
    heads = getattr(run.model, "heads", None)
    # a K×H×W mask per image (one row per head): each row's labels index its own head's classes
    limit = torch.tensor([n for _, n in heads], device=masks.device).view(1, -1, 1, 1) if heads else run.num_classes
    bad = ((masks >= limit) | (masks < 0)) & (masks != cfg.ignore_index)
    if bad.any():
        where = bad.nonzero()[0]
        v, top = int(masks[tuple(where)]), heads[int(where[1])][1] if heads else run.num_classes
        files = "; ".join(run.train_ds.describe(i) for i in indices)
        raise UserError(f"label {v} is outside [0, {top}) and not the ignore index "
                        f"{cfg.ignore_index} in batch {files}; run `fcnseg data check`")
    if run.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks


def resize_batch(images: torch.Tensor, masks: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch at ``scale`` of its size: images bilinear (antialiased when shrinking), masks nearest."""
    if scale == 1.0:
        return images, masks
    size = [max(1, round(n * scale)) for n in images.shape[-2:]]
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    if masks.ndim == 4:  # one row per head
        return images, F.interpolate(masks.float(), size=size, mode="nearest-exact").to(masks.dtype)
    masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(masks.dtype)
    return images, masks


def pixel_loss(logits: torch.Tensor, masks: torch.Tensor, **kwargs) -> torch.Tensor:
    """Per-pixel cross-entropy in float32 whatever the autocast. Logits are made NCHW-contiguous first: measured,
    cross-entropy on channels_last 8×59×320×208 logits takes 270 ms (forward + backward) against 165 ms in NCHW."""
    loss = F.cross_entropy(logits.float().contiguous(), masks, **kwargs)
    if kwargs.get("reduction", "mean") == "mean" and torch.isnan(loss) and not _labelled_weight(masks, **kwargs):
        # a batch without a labelled pixel (an all-void crop): the mean is 0/0; it carries no gradient, not a NaN
        return logits.float().sum() * 0.0
    return loss


def heads_loss(logits: torch.Tensor, masks: torch.Tensor, heads, weight: torch.Tensor | None = None,
               **kwargs) -> torch.Tensor:
    """:func:`pixel_loss`; for a model with several ``heads``, the sum of each head's loss on its channels and its
    row of the N×K×H×W masks (the paper's SIFT Flow net: one loss per head, summed by the solver)."""
    if not heads:
        return pixel_loss(logits, masks, weight=weight, **kwargs)
    total, start = None, 0
    for k, (_, n) in enumerate(heads):
        w = None if weight is None else weight[start:start + n]  # class weights, head by head
        loss = pixel_loss(logits[:, start:start + n], masks[:, k], weight=w, **kwargs)
        total, start = loss if total is None else total + loss, start + n
    return total


def _labelled_weight(masks: torch.Tensor, weight: torch.Tensor | None = None, ignore_index: int = -100,
                     **_) -> bool:
    """Whether any pixel of ``masks`` counts in a mean cross-entropy (labelled, and of a class with weight > 0)."""
    valid = masks != ignore_index
    if weight is None:
        return bool(valid.any())
    return bool((weight[masks[valid]] > 0).any())


def log_step(run: Run, bar) -> None:
    """The progress bar, and every ``log_every`` iterations the loss and lr in log.jsonl and TensorBoard."""
    lr = run.optimizer.param_groups[0]["lr"]
    bar.update(1)
    postfix = {"loss": f"{run.last_loss:.4f}", "lr": f"{lr:.2e}"}
    if run.budget is not None:  # the bar's ETA counts iterations; with a time budget this is the real end
        postfix["budget_left"] = f"{max(0.0, run.budget - (time.monotonic() - run.t_start)) / 60:.1f}m"
    bar.set_postfix(postfix)
    if run.main and (run.iteration % run.cfg.log_every == 0 or run.iteration == 1):
        run.logger.write({"iter": run.iteration, "loss": run.last_loss, "lr": lr,
                          "time": round(time.monotonic() - run.t_start, 3)})
        if run.logger.tb:
            run.logger.tb.add_scalar("train/loss", run.last_loss, run.iteration)
            run.logger.tb.add_scalar("train/lr", lr, run.iteration)


def validate(run: Run, bar) -> dict:
    """Score the validation set (single scale, unflipped), log it, and put the model back in training mode."""
    cfg, val_ds = run.cfg, run.val_ds
    val_options = {"input_size": cfg.resize} if cfg.resize else {}
    loss = ValidationLoss(run) if not getattr(run.model, "heads", None) else None  # (one-head models)
    result = evaluate(run.predictor, val_ds, num_classes=run.num_classes, ignore_index=cfg.ignore_index,
                      max_images=cfg.val_max_images, progress=False, on_prediction=loss, **val_options)
    heads = result.get("heads", [])  # several heads: the first one's scores lead, the others' go by name
    metrics = scores(result["hist"], run.classes[heads[0][1]] if heads else run.classes, val_ds.background_index)
    metrics["per_image_mean_iou"] = result["per_image_mean_iou"]
    metrics.update({name: scores(hist, run.classes[s]) for name, s, hist in heads[1:]})
    if loss is not None:
        metrics["loss"] = loss.value()
    if run.main:
        run.logger.write({"iter": run.iteration, "val": {k: metrics[k] for k in VAL_KEYS if k in metrics},
                          "per_class_iou": {c: v["iou"] for c, v in metrics["per_class"].items()},
                          **{f"val_{name}": {k: metrics[name][k] for k in VAL_KEYS if k in metrics[name]}
                             for name, _, _ in heads[1:]}})
        tb = run.logger.tb
        if tb:
            tb.add_scalar("val/pixel_accuracy", metrics["pixel_accuracy"], run.iteration)
            tb.add_scalar("val/mean_iou", metrics["mean_iou"], run.iteration)
            if "loss" in metrics:
                tb.add_scalar("val/loss", metrics["loss"], run.iteration)
            for c, v in metrics["per_class"].items():
                if v["iou"] is not None:
                    tb.add_scalar(f"val_iou/{c}", v["iou"], run.iteration)
            tb.add_image("val/input_truth_prediction", _panel(run, val_options), run.iteration)
        bar.write(f"iter {run.iteration}: val mIoU {metrics['mean_iou']:.4f}  pixel acc "
                  f"{metrics['pixel_accuracy']:.4f}"
                  + "".join(f"  {name} mIoU {metrics[name]['mean_iou']:.4f}" for name, _, _ in heads[1:]))
    train_mode(run.net)
    return metrics


class ValidationLoss:
    """The training loss (class weights, ignore index, reduction) over the validation set, from the probabilities
    that validation computes anyway: ``−log p`` of each labelled pixel's class at the image's original resolution
    (a probability that underflowed to 0 counts as float32's smallest normal number, −log = 87.3).

    ``mean``: Σ w·(−log p) / Σ w over every labelled pixel of the set, as one batch of all of them would give;
    ``sum`` (the authors' unnormalised loss): the mean over images of each image's sum, a one-image batch's loss.
    Labels outside the classes are left out, as the confusion matrix leaves them."""

    def __init__(self, run: Run):
        self.weight, self.ignore_index, self.reduction = run.loss_weight, run.cfg.ignore_index, run.cfg.loss_reduction
        self.sums = torch.zeros(3, dtype=torch.float64)  # Σ w·(−log p), Σ w, images

    def __call__(self, probs: torch.Tensor, mask: torch.Tensor) -> None:
        target = mask.to(probs.device, torch.int64)[None]
        labelled = (target >= 0) & (target < probs.shape[1]) & (target != self.ignore_index)
        target = torch.where(labelled, target, self.ignore_index)
        log_p = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        total = F.nll_loss(log_p, target, weight=self.weight, ignore_index=self.ignore_index, reduction="sum")
        weight = labelled.sum() if self.weight is None else self.weight[target[labelled]].sum()
        self.sums += torch.tensor([float(total), float(weight), 1.0], dtype=torch.float64)

    def value(self) -> float:
        """The loss over every image seen (on every process: the sums are all-reduced first)."""
        dist.all_reduce_sum(self.sums)
        total, weight, images = self.sums.tolist()
        denominator = weight if self.reduction == "mean" else images
        return total / denominator if denominator else float("nan")


def _panel(run: Run, val_options: dict) -> torch.Tensor:
    """input | truth | prediction of the first validation image, colour-mapped, as a CHW uint8 tensor."""
    image, mask = run.val_ds[0]
    image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
    mask = mask[0] if mask.ndim == 3 else mask  # the first head's labels, which predict_image gives
    pred = run.predictor.predict_image(image[None], **val_options).argmax(1)[0].cpu()
    palette = run.val_ds.get_palette()
    return torch.cat([run.val_ds.display_image(image), colorize(mask, palette), colorize(pred, palette)], dim=2)


def as_user_error(e: Exception, run: Run) -> UserError | None:
    """Out of memory, or BatchNorm over one value per channel, as a one-line error saying what to change."""
    cfg = run.cfg
    if isinstance(e, torch.OutOfMemoryError) or (
            isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e).lower())):
        return UserError(f"out of memory at iteration {run.iteration + 1} (batch {cfg.batch_size}, crop "
                         f"{cfg.crop_size}): lower --batch-size or the crop size, or use --amp bf16/fp16")
    if isinstance(e, ValueError) and "Expected more than 1 value per channel" in str(e):
        # BatchNorm over a 1×1 map of a single sample
        return UserError(f"batch {cfg.batch_size} with crop {cfg.crop_size} leaves BatchNorm one value per channel "
                         f"at the network's coarsest stride: use --batch-size 2 or more, or a larger --crop-size")
    return None
