"""Scoring a model on a dataset: one dataset-wide confusion matrix at each image's original resolution (as the
authors' ``score.py``), optionally with image-level tags known or DenseCRF refinement; and the evaluation protocol
(dataset, test-time scales and flips) a checkpoint's recipe records."""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import distributed as dist
from .crf import dense_crf
from .data import dataset_class, get_dataset
from .errors import UserError
from .inference import Predictor
from .metrics import confusion_matrix, image_mean_iou
from .models.fcn import head_slices


@torch.no_grad()
def evaluate(predictor: Predictor, dataset, *, num_classes: int, ignore_index: int = 255,
             max_images: int | None = None, progress: bool = True, crf: bool = False, crf_max_side: int | None = None,
             given_tags: bool = False, on_prediction: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
             **predict_options) -> dict:
    """Dataset-wide confusion matrix at each image's original resolution → scores (and per-image mean IoU).

    With ``given_tags``, each image's prediction may use only the classes present in its ground truth: the
    image-level tags are known, as in the CCP and Fashionista clothing-parsing papers (co-parsing of tagged images).

    A model with several heads is scored head by head (see :func:`scored_heads`): ``hist``, the per-image mean IoU
    and the CRF scores are the first scored head's, and ``heads`` lists ``(name, output channels, matrix)`` for each.

    Under torchrun each rank evaluates every world_size-th image (no duplicates) and the matrices are summed.
    With ``crf``, DenseCRF-refined predictions are scored too (``metrics["crf"]``). ``on_prediction(probs, mask)``
    sees each image's probabilities (before ``given_tags``) and labels: the training loop's validation loss."""
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    indices = list(range(dist.rank(), n, dist.world_size()))
    model_heads = getattr(predictor, "heads", None)
    heads = scored_heads(model_heads, getattr(getattr(predictor, "model", None), "classes", None), dataset)
    slices = [s for _, s in heads] if heads else [slice(0, num_classes)]
    hists = [torch.zeros(s.stop - s.start, s.stop - s.start, dtype=torch.int64) for s in slices]
    hist_crf = torch.zeros_like(hists[0])
    # per-image mIoU by index (NaN-free zeros elsewhere), so the all-reduced sum is exact and ordered as in one process
    per_image = torch.zeros(n, dtype=torch.float64)
    counted = torch.zeros(n, dtype=torch.float64)
    bar = dist.progress_bar(len(indices), "evaluate", progress)
    for i in indices:
        image, mask = dataset[i]
        image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        all_probs = predictor.predict_image(image[None], **({"all_heads": True} if heads else {}),
                                            **predict_options)
        if on_prediction is not None:
            on_prediction(all_probs, mask)
        rows = mask if mask.ndim == 3 else mask[None]  # one label map per scored head
        for k, (s, hist) in enumerate(zip(slices, hists)):
            probs, truth = all_probs[:, s], rows[k]
            if given_tags:
                probs = restrict_to_classes(probs, truth[truth != ignore_index].unique())
            pred = probs.argmax(1)[0].cpu()
            h = confusion_matrix(truth, pred, s.stop - s.start, ignore_index)
            hist += h
            if k:
                continue
            m = image_mean_iou(h)
            if not math.isnan(m):
                per_image[i], counted[i] = m, 1.0
            if crf:
                rgb = dataset.display_image(image) if hasattr(dataset, "display_image") else image  # NYUDv2: RGB
                refined = dense_crf(rgb, probs[0].cpu(), max_side=crf_max_side)
                hist_crf += confusion_matrix(truth, refined, s.stop - s.start, ignore_index)
        bar.update(1)
    bar.close()
    for hist in hists:
        dist.all_reduce_sum(hist)
    dist.all_reduce_sum(per_image)
    dist.all_reduce_sum(counted)
    result = {"hist": hists[0]}
    if heads:
        result["heads"] = [(name, s, hist) for (name, s), hist in zip(heads, hists)]
    if crf:
        dist.all_reduce_sum(hist_crf)
        result["hist_crf"] = hist_crf
    valid = counted > 0
    result["per_image_mean_iou"] = float(per_image[valid].mean()) if valid.any() else float("nan")
    result["images"] = n
    return result


def scored_heads(heads, classes, dataset) -> list[tuple[str, slice]] | None:
    """Which heads of a model to score on ``dataset``, as ``(name, output channels)``; None for a one-head model.

    A dataset with the same ``heads`` (K×H×W masks) scores them all, row k against head k; a one-labelling dataset
    scores the head whose class names (``classes``, the model's, head by head) are the dataset's: SIFT Flow's
    geometric task scores a two-head model's geometric head."""
    if not heads:
        return None
    slices = head_slices(heads)
    theirs = getattr(dataset, "heads", None)
    if theirs:
        if [tuple(h) for h in theirs] != [tuple(h) for h in heads]:
            raise UserError(f"{dataset.name} has the heads {tuple(map(tuple, theirs))} but the model has "
                            f"{tuple(map(tuple, heads))}")
        return slices
    for name, s in slices:
        if classes is not None and list(classes[s]) == list(dataset.classes):
            return [(name, s)]
    raise UserError(f"{dataset.name}'s {dataset.num_classes} classes are those of none of the model's heads "
                    f"({', '.join(f'{name}: {n}' for name, n in heads)}); choose the dataset option that reads "
                    f"one of them (e.g. siftflow task=both)")


def restrict_to_classes(probs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Class probabilities (N, C, H, W) renormalised over ``classes`` only (the others get 0)."""
    keep = torch.zeros(probs.shape[1], dtype=torch.bool, device=probs.device)
    keep[classes.to(probs.device)] = True
    # the floor keeps a pixel whose allowed classes all underflowed to 0 on an allowed class
    kept = torch.where(keep.view(1, -1, 1, 1), probs.clamp_min(torch.finfo(probs.dtype).tiny), 0)
    return kept / kept.sum(1, keepdim=True)


def protocol_options(ckpt: dict, *, flip: bool | None = None, scales: list[float] | None = None,
                     window: int | None = None) -> dict:
    """``Predictor.predict_image`` options for a checkpoint's model: its recipe's fixed ``resize``, and the recipe's
    test-time flips and scales (``eval_flip``, ``eval_scales``) unless ``flip`` / ``scales`` say otherwise."""
    opts = {}
    cfg = ckpt.get("config") or {}
    if cfg.get("resize"):
        opts["input_size"] = cfg["resize"]
    if flip if flip is not None else cfg.get("eval_flip"):
        opts["flip"] = True
    if scales:
        opts["scales"] = list(scales)
    elif cfg.get("eval_scales"):
        opts["scales"] = [float(s) for s in cfg["eval_scales"]]
    if window is not None:
        opts["window"] = window
    return opts


def checkpoint_dataset(ckpt: dict, *, name: str | None = None, root: str | None = None, split: str | None = None):
    """The dataset to score a checkpoint on: ``name`` / ``root`` / ``split`` where given, else the validation data
    its run recorded (reader options included)."""
    cfg = ckpt.get("config") or {}
    name = name or cfg.get("val_data") or cfg.get("data")
    if not name:
        raise UserError("the checkpoint records no dataset: pass --data NAME --root DIR")
    same = name == (cfg.get("val_data") or cfg.get("data"))
    root = root or (cfg.get("root") if same else None)
    options = {} if not same else cfg.get("val_data_options", {}) if cfg.get("val_data") else {
        **cfg.get("data_options", {}), **cfg.get("val_data_options", {})}
    if split and split != cfg.get("val_split"):  # another split: the run's choice of frames was for its own split
        options = {k: v for k, v in options.items() if k not in dataset_class(name).selection_options}
    split = split or (cfg.get("val_split") if same else "val")
    return get_dataset(name, root, split, None, **options)
