"""Training and evaluation as plain functions, and atomic checkpoints.

``train(cfg)`` runs a (possibly multi-stage) recipe; ``evaluate(...)`` computes a dataset-wide confusion matrix at
the original resolution. Both work unchanged under torchrun (DistributedDataParallel, sharded evaluation).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from . import distributed as dist
from .config import TrainConfig, parse_duration, stage_configs
from .data import get_dataset
from .data.base import DecodedCache
from .data.transforms import build_transforms, pad_collate
from .errors import UserError
from .inference import Predictor, autocast, resolve_amp, resolve_channels_last, select_device
from .metrics import confusion_matrix, image_mean_iou, scores
from .models import build_model, model_spec
from .optim import StepInBackward, WeightEMA, build_optimizer
from .normalization import Normalization
from .weights import load_state_into, load_weights, safe_torch_load

log = logging.getLogger("fcnseg")


# ----------------------------------------------------------------------------------------------- checkpoints
def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a crash never leaves a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise UserError(f"cannot write {path}: {e.strerror or e} (free disk space or choose another --out)") from None


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def _remove_quietly(path: Path) -> None:
    """Best-effort cleanup while reporting another error (the folder may not even exist: a file stands there)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def load_checkpoint(path: str | Path) -> dict:
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_spec" not in ckpt:
        raise UserError(f"{path} is not an fcnseg checkpoint (no model/model_spec); use fcnseg.load_weights for "
                        f"other weight files")
    return ckpt


def model_from_checkpoint(path: str | Path, ema: bool = True) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint was saved from, with its weights and normalisation. A run trained with
    ``ema_decay`` saves the weight average as ``model`` and the last training weights as ``raw_model``; ``ema=False``
    loads the latter (the same weights for a run without EMA)."""
    ckpt = load_checkpoint(path)
    if not ema and "raw_model" in ckpt:
        ckpt = dict(ckpt, model=ckpt["raw_model"])
    spec = ckpt["model_spec"]
    try:
        model = build_model(spec["arch"], backbone=spec["backbone"], num_classes=spec["num_classes"],
                            geometry=spec["geometry"], learnable_upsampling=spec.get("learnable_upsampling", False),
                            global_context=spec.get("global_context", False),
                            grid=spec.get("grid", "cell"))  # specs from before "grid" had the cell head
    except (KeyError, ValueError) as e:
        raise UserError(f"{path}: cannot rebuild its model ({e})") from None
    load_state_into(model, ckpt["model"], path, strict_classes=True, require_all=True)
    model.normalization = Normalization.from_dict(spec["normalization"])
    model.classes = ckpt.get("classes") or [str(i) for i in range(model.num_classes)]
    model.palette = [tuple(c) for c in ckpt["palette"]] if ckpt.get("palette") else None
    return model, ckpt


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(predictor: Predictor, dataset, *, num_classes: int, ignore_index: int = 255,
             max_images: int | None = None, progress: bool = True, crf: bool = False, crf_max_side: int | None = None,
             given_tags: bool = False, **predict_options) -> dict:
    """Dataset-wide confusion matrix at each image's original resolution → scores (and per-image mean IoU).

    With ``given_tags``, each image's prediction may use only the classes present in its ground truth: the
    image-level tags are known, as in the CCP and Fashionista clothing-parsing papers (co-parsing of tagged images).

    Under torchrun each rank evaluates every world_size-th image (no duplicates) and the matrices are summed.
    With ``crf``, DenseCRF-refined predictions are scored too (``metrics["crf"]``)."""
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    indices = list(range(dist.rank(), n, dist.world_size()))
    hist = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    hist_crf = torch.zeros_like(hist)
    # per-image mIoU by index (NaN-free zeros elsewhere), so the all-reduced sum is exact and ordered as in one process
    per_image = torch.zeros(n, dtype=torch.float64)
    counted = torch.zeros(n, dtype=torch.float64)
    bar = _progress(len(indices), "evaluate", progress)
    for i in indices:
        image, mask = dataset[i]
        image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        probs = predictor.predict_image(image[None], **predict_options)
        if given_tags:
            probs = restrict_to_classes(probs, mask[mask != ignore_index].unique())
        pred = probs.argmax(1)[0].cpu()
        h = confusion_matrix(mask, pred, num_classes, ignore_index)
        hist += h
        m = image_mean_iou(h)
        if not math.isnan(m):
            per_image[i], counted[i] = m, 1.0
        if crf:
            from .crf import dense_crf
            refined = dense_crf(image, probs[0].cpu(), max_side=crf_max_side)
            hist_crf += confusion_matrix(mask, refined, num_classes, ignore_index)
        bar.update(1)
    bar.close()
    dist.all_reduce_sum(hist)
    dist.all_reduce_sum(per_image)
    dist.all_reduce_sum(counted)
    result = {"hist": hist}
    if crf:
        dist.all_reduce_sum(hist_crf)
        result["hist_crf"] = hist_crf
    valid = counted > 0
    result["per_image_mean_iou"] = float(per_image[valid].mean()) if valid.any() else float("nan")
    result["images"] = n
    return result


def restrict_to_classes(probs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Class probabilities (N, C, H, W) renormalised over ``classes`` only (the others get 0)."""
    keep = torch.zeros(probs.shape[1], dtype=torch.bool, device=probs.device)
    keep[classes.to(probs.device)] = True
    # the floor keeps a pixel whose allowed classes all underflowed to 0 on an allowed class
    kept = torch.where(keep.view(1, -1, 1, 1), probs.clamp_min(torch.finfo(probs.dtype).tiny), 0)
    return kept / kept.sum(1, keepdim=True)


# ----------------------------------------------------------------------------------------------- training
class _Seeded(torch.utils.data.Dataset):
    """Each sample's augmentation is seeded by (seed, epoch, position): identical whichever worker or process
    decodes it, which is what makes ``--resume`` exact."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        torch.manual_seed(seed)
        random.seed(seed)
        image, mask = self.dataset[index]
        return image, mask, index


def _next_batch(stream):
    try:
        return next(stream)
    except UserError as e:
        # a DataLoader worker re-raises our error with its traceback in the message: keep the original line
        lines = [line for line in str(e).splitlines() if line.strip()]
        if len(lines) > 1:
            raise UserError(lines[-1].split("UserError: ", 1)[-1]) from None
        raise


def _collate(ignore_index):
    def collate(batch):
        images, masks = pad_collate([(b[0], b[1]) for b in batch], ignore_index)
        return images, masks, [b[2] for b in batch]
    return collate


def _progress(total, desc, enabled, initial=0):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, disable=not (enabled and dist.is_main()), dynamic_ncols=True,
                leave=False)


def _scope_params(model: nn.Module, scopes: list[str] | None) -> None:
    """Freeze everything outside ``scopes`` (prefixes of parameter names; ``head`` = the score layers)."""
    if not scopes:
        for name, p in model.named_parameters():
            if not (name.split(".")[0] in model.upsample_layers() and not model.learnable_upsampling):
                p.requires_grad_(True)
        return
    expanded = []
    for s in scopes:
        expanded += model.score_layers() if s == "head" else [s]
    matched = {s: False for s in expanded}
    for name, p in model.named_parameters():
        hit = [s for s in expanded if name == s or name.startswith(s + ".")]
        for s in hit:
            matched[s] = True
        fixed_up = name.split(".")[0] in model.upsample_layers() and not model.learnable_upsampling
        p.requires_grad_(bool(hit) and not fixed_up)
    missing = [s for s, ok in matched.items() if not ok]
    if missing:
        tops = sorted({n.split(".")[0] for n, _ in model.named_parameters()} | {"head"})
        raise UserError(f"--trainable scope {missing[0]!r} matches no parameter; valid scopes start with: "
                        f"{', '.join(tops)}")


def _freeze_bn_of_frozen(model: nn.Module) -> None:
    """BatchNorm layers whose parameters are frozen also keep their running statistics (eval mode)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()


CLOCK_CHECK_FRACTION = 0.1  # of the time budget, run before the pace is projected


def follows_clock(iteration: int, elapsed: float, max_iters: int, budget: float | None) -> bool:
    """Must the schedule follow the clock? Only when the iterations, at the average pace so far, would not fit the
    time budget. Otherwise it counts iterations alone, and a seeded run repeats bit for bit whatever the machine's
    speed. The first tenth of the budget is not projected: its pace includes start-up costs, and a passing load on
    the machine weighs most there, while the switch is for good (session 19: another process in the first minute
    of a CamVid run cost 15 s and switched it at iteration 102, projected from 100 iterations; undisturbed, the same
    command makes its 5,000 iterations in 84% of the budget)."""
    if budget is None:
        return False
    if elapsed < CLOCK_CHECK_FRACTION * budget:
        return False
    return elapsed / max(iteration, 1) * max_iters > budget


def _plain(value):
    """Tuples and lists compare alike (a checkpoint may hold either)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def lr_factor(cfg: TrainConfig, iteration: int, progress: float) -> float:
    """Multiplier of the base lr: linear warm-up, then poly / step / cosine / constant over ``progress`` ∈ [0, 1]
    (iterations done / max_iters, or once the run ``follows_clock`` the larger of that and time used / budget)."""
    progress = min(max(progress, 0.0), 1.0)
    if cfg.scheduler == "poly":
        f = (1 - progress) ** cfg.poly_power
    elif cfg.scheduler == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.scheduler == "step":
        # the steps fall where the progress is: on the clock, a budget-bound run still reaches its later decays
        done = max(iteration, math.floor(progress * cfg.max_iters + 1e-9))
        f = cfg.step_gamma ** (done // cfg.step_size)
    else:
        f = 1.0
    if cfg.warmup_iters and iteration < cfg.warmup_iters:
        f *= (iteration + 1) / cfg.warmup_iters
    return f


def size_scale(cfg: TrainConfig, progress: float) -> float:
    """The ``size_schedule`` scale in force at ``progress`` ∈ [0, 1] (1 without a schedule)."""
    scale = 1.0
    for start, s in cfg.size_schedule or ():
        if progress >= start:
            scale = float(s)
    return scale


def resize_batch(images: torch.Tensor, masks: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch at ``scale`` of its size: images bilinear (antialiased when shrinking), masks nearest."""
    if scale == 1.0:
        return images, masks
    size = [max(1, round(n * scale)) for n in images.shape[-2:]]
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
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


def _labelled_weight(masks: torch.Tensor, weight: torch.Tensor | None = None, ignore_index: int = -100,
                     **_) -> bool:
    """Whether any pixel of ``masks`` counts in a mean cross-entropy (labelled, and of a class with weight > 0)."""
    valid = masks != ignore_index
    if weight is None:
        return bool(valid.any())
    return bool((weight[masks[valid]] > 0).any())


def _class_weights(cfg: TrainConfig, num_classes: int, device) -> torch.Tensor | None:
    cw = cfg.class_weights
    if cw is None:
        return None
    if isinstance(cw, str):
        path = Path(cw)
        if not path.is_file():
            raise UserError(f"class weights file not found: {path} (write it with `fcnseg data stats`)")
        try:
            stats = json.loads(path.read_text())
            cw = stats["median_frequency_weights"] if isinstance(stats, dict) else stats
        except (ValueError, KeyError) as e:
            raise UserError(f"{path}: not a `fcnseg data stats` JSON ({e})") from None
    if len(cw) != num_classes:
        raise UserError(f"class_weights has {len(cw)} values but the model has {num_classes} classes")
    return torch.tensor([float(w) for w in cw], dtype=torch.float32, device=device)


CACHE_LIMIT = 2 * 2**30  # bytes of decoded training samples `cache_decoded: auto` holds in RAM at most


def _cache_decoded(cfg: TrainConfig, n: int, log_reason: bool = False) -> bool:
    """Decode the training set once (``DecodedCache``)? "auto" does when a fixed ``resize`` bounds it to
    ``CACHE_LIMIT``; true always (the user's call), false never."""
    choice = str(cfg.cache_decoded).lower()
    if choice not in ("auto", "true", "false"):
        raise UserError(f"cache_decoded must be auto, true or false, not {cfg.cache_decoded!r}")
    if choice != "auto":
        return choice == "true"
    if not cfg.resize:
        return False
    # 3 image bytes + 1 mask byte per pixel; an int resize sets the short side (allow a 2:1 long side)
    size = [cfg.resize] if isinstance(cfg.resize, int) else list(cfg.resize)
    h, w = (size[0], 2 * size[0]) if len(size) == 1 else size[:2]
    if n * h * w * 4 > CACHE_LIMIT:
        if log_reason:
            log.info("not caching decoded samples: %d × %s would exceed %.0f GiB", n, cfg.resize, CACHE_LIMIT / 2**30)
        return False
    return True


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Logger:
    """JSONL + TensorBoard, rank 0 only."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.file = open(out / "log.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tb"))
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")

    def write(self, record: dict) -> None:
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self):
        if self.enabled:
            self.file.close()
            if self.tb:
                self.tb.close()


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
        atomic_write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), out / "config.yaml")
    dist.barrier()
    stages = stage_configs(cfg)
    summary: dict = {}
    previous: Path | None = None
    resume_at = None  # a multi-stage run resumed from a named file: that file's stage resumes from it, the others
    if len(stages) > 1 and cfg.resume not in (None, "auto"):  # from their own last.pt (finished ones are skipped)
        folder = Path(cfg.resume).resolve().parent
        resume_at = next((i for i, (name, _) in enumerate(stages) if (out / name).resolve() == folder), 0)
    for i, (name, scfg) in enumerate(stages):
        stage_out = out if name is None else out / name
        scfg.out = str(stage_out)
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
                tmp = out / f".{f}.tmp"
                shutil.copyfile(src, tmp)
                os.replace(tmp, out / f)
        summary = dict(summary, last=str(out / "last.pt"), best=str(out / "best.pt"))
    dist.barrier()
    if distributed:
        torch.distributed.destroy_process_group()
    return summary


def train_stage(cfg: TrainConfig, *, progress: bool = True, stage: str | None = None) -> dict:
    out = Path(cfg.out)
    main = dist.is_main()
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    last_path, best_path = out / "last.pt", out / "best.pt"
    if main:  # temporary files of a process killed while checkpointing (atomic_save): never read, only wasted space
        for stale in [*out.glob(".last.pt.tmp*"), *out.glob(".best.pt.tmp*")]:
            _remove_quietly(stale)
    resume_ckpt = None
    if cfg.resume == "auto" and last_path.is_file():
        resume_ckpt = load_checkpoint(last_path)
    elif cfg.resume not in (None, "auto"):
        resume_ckpt = load_checkpoint(cfg.resume)
    if resume_ckpt is not None and resume_ckpt.get("optimizer") is None:
        raise UserError(f"{cfg.resume} holds weights only (best.pt keeps no optimizer state): resume from last.pt in "
                        f"the same folder, or start a new run from these weights with --init-from")
    if resume_ckpt is not None and resume_ckpt.get("finished") and resume_ckpt["iteration"] >= cfg.max_iters:
        log.info("%s already finished at iteration %d; nothing to resume", out, resume_ckpt["iteration"])
        return {"out": str(out), "last": str(last_path), "best": str(best_path) if best_path.exists() else None,
                "iteration": resume_ckpt["iteration"], "best_miou": resume_ckpt.get("best_miou")}

    # data
    def train_tf(resize):
        return build_transforms(True, crop_size=cfg.crop_size, scale_range=cfg.scale_range, hflip=cfg.hflip,
                                color_jitter=cfg.color_jitter, resize=resize, ignore_index=cfg.ignore_index)

    train_ds = get_dataset(cfg.data, cfg.root, cfg.train_split, None, **cfg.data_options)
    if _cache_decoded(cfg, len(train_ds), log_reason=main):
        train_ds = DecodedCache(train_ds, prepare=build_transforms(False, resize=cfg.resize), transforms=train_tf(None),
                                ignore_index=cfg.ignore_index)
        with _progress(len(train_ds), "decode", progress) as bar:
            train_ds.fill(bar)
        if main:
            log.info("decoded %d training samples once: %.0f MiB in RAM", len(train_ds), train_ds.nbytes() / 2**20)
    else:
        train_ds.transforms = train_tf(cfg.resize)
    if cfg.val_data and cfg.val_data != cfg.data:
        val_ds = get_dataset(cfg.val_data, cfg.root, cfg.val_split, None, **cfg.val_data_options)
    else:
        val_ds = get_dataset(cfg.data, cfg.root, cfg.val_split, None, **{**cfg.data_options, **cfg.val_data_options})
    if len(train_ds) == 0:
        raise UserError(f"{cfg.data} split {cfg.train_split!r} is empty")
    num_classes = cfg.num_classes or train_ds.num_classes
    if cfg.num_classes and cfg.num_classes < train_ds.num_classes:
        raise UserError(f"num_classes={cfg.num_classes} but {cfg.data} has {train_ds.num_classes} classes")
    classes = list(train_ds.classes) + [f"class_{i}" for i in range(len(train_ds.classes), num_classes)]

    # model
    model = build_model(cfg.arch, backbone=cfg.backbone, num_classes=num_classes, geometry=cfg.geometry,
                        pretrained_backbone=cfg.pretrained_backbone if resume_ckpt is None else None,
                        learnable_upsampling=cfg.learnable_upsampling, global_context=cfg.global_context)
    if cfg.init_from and resume_ckpt is None:
        report = load_weights(model, cfg.init_from)
        log.info("initialised from %s: %d tensors loaded, %d new", cfg.init_from, report["loaded"],
                 len(report["missing"]))
    if resume_ckpt is not None:
        # the training weights (``model`` is their average when the run keeps an EMA)
        load_state_into(model, resume_ckpt.get("raw_model", resume_ckpt["model"]), "resume checkpoint",
                        strict_classes=True, require_all=True)
        model.normalization = Normalization.from_dict(resume_ckpt["model_spec"]["normalization"])
    _scope_params(model, cfg.trainable)
    if cfg.activation_checkpointing:  # recompute backbone stages in backward: less memory, ~25 % more time
        from .checkpointing import enable_activation_checkpointing
        enable_activation_checkpointing(model)
    model.to(device)
    channels_last = resolve_channels_last(cfg.channels_last, device, training=True)
    amp = resolve_amp(device, cfg.amp)  # the config keeps "auto": a resumed run decides again on its machine
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    world = dist.world_size()
    if world > 1:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            if device.type == "cuda":
                net = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                if dist.is_main():
                    log.info("SyncBatchNorm: %d processes share batch statistics", world)
            elif dist.is_main():  # torch's SyncBatchNorm runs on GPUs only
                log.info("BatchNorm stays per process on CPU (SyncBatchNorm needs GPUs)")
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=False)
    base = net.module if world > 1 else net

    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                betas=cfg.betas, bias_lr_mult=cfg.bias_lr_mult, bias_decay=cfg.bias_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    weight = _class_weights(cfg, num_classes, device)
    iteration, best_miou, used_time, clock = 0, -1.0, 0.0, False
    # the weight average validation and checkpoints use (``ema_decay``); made before StepInBackward hooks the model
    ema = WeightEMA(base, cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None and resume_ckpt is not None and "raw_model" in resume_ckpt:
        load_state_into(ema.module, resume_ckpt["model"], "resume checkpoint", strict_classes=True, require_all=True)
        ema.updates = resume_ckpt.get("ema_updates", 0)
    if resume_ckpt is not None:
        # the optimizer's state (moments, momentum buffers) resumes; its settings are this run's config, so a changed
        # --lr / --weight-decay applies instead of being overwritten by the saved param groups
        settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        changed = sorted({k.replace("initial_lr", "lr") for g, new in zip(optimizer.param_groups, settings)
                          for k in ("initial_lr", "weight_decay", "momentum", "betas", "eps")
                          if k in new and _plain(g.get(k)) != _plain(new[k])})
        for g, new in zip(optimizer.param_groups, settings):
            g.update(new)
        if changed and main:
            log.info("resume: %s from this run's config, not the checkpoint's", ", ".join(changed))
        if resume_ckpt["scaler"]:  # empty when the run was saved without fp16 loss scaling (fp32 or bf16)
            scaler.load_state_dict(resume_ckpt["scaler"])
        iteration, best_miou = resume_ckpt["iteration"], resume_ckpt.get("best_miou", -1.0)
        used_time = resume_ckpt.get("used_time", 0.0)
        clock = resume_ckpt.get("follows_clock", True)  # older checkpoints: their schedule followed the clock
        _set_rng_state(resume_ckpt["rng"])
        if main:
            log.info("resuming %s at iteration %d", out, iteration)

    in_backward = None
    if cfg.step_in_backward:  # update each parameter inside backward and free its gradient (less peak memory)
        clash = [why for why, bad in (("accum_steps > 1", cfg.accum_steps > 1), ("--amp fp16 (loss scaling)",
                                      amp == "fp16"), ("several processes", world > 1),
                                      ("--debug (gradient summaries)", cfg.debug)) if bad]
        if clash:
            raise UserError(f"step_in_backward needs each gradient only once, right after backward; it does not "
                            f"combine with {', '.join(clash)}")
        in_backward = StepInBackward(optimizer)

    budget = parse_duration(cfg.time_budget)
    batch, accum = cfg.batch_size, cfg.accum_steps
    sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=world, rank=dist.rank(), shuffle=True,
                                                  seed=cfg.seed, drop_last=True)
    per_epoch = len(sampler) // batch
    if per_epoch == 0:
        raise UserError(f"{cfg.data} split {cfg.train_split!r} has {len(train_ds)} samples, fewer than "
                        f"batch_size × processes = {batch * world}; lower --batch-size")
    if main:
        log.info("batch: %d per process × %d processes × %d accumulation = %d global; %d classes; %s, %s, %s", batch,
                 world, accum, batch * world * accum, num_classes, device,
                 "channels_last" if channels_last else "NCHW", "fp32" if amp == "none" else amp)
    seeded = _Seeded(train_ds)
    collate = _collate(cfg.ignore_index)

    def batches(start_batch: int):
        """Infinite stream of (images, masks, indices) from global batch number ``start_batch`` on."""
        epoch, offset = divmod(start_batch, per_epoch)
        while True:
            sampler.set_epoch(epoch)
            order = list(sampler)
            plan = [[(idx, hash((cfg.seed, epoch, b * batch + j)) & 0x7FFFFFFF)
                     for j, idx in enumerate(order[b * batch:(b + 1) * batch])] for b in range(offset, per_epoch)]
            loader = torch.utils.data.DataLoader(seeded, batch_sampler=plan, num_workers=cfg.workers,
                                                 collate_fn=collate, pin_memory=device.type == "cuda",
                                                 persistent_workers=False)
            yield from loader
            epoch, offset = epoch + 1, 0

    logger = _Logger(out, main)
    logger.write({"iter": iteration, "world_size": world, "batch_per_process": batch, "accum_steps": accum,
                  "global_batch": batch * world * accum, "device": str(device)})
    stream = batches(iteration * accum)
    bar = _progress(cfg.max_iters, f"train{' ' + stage if stage else ''}", progress, initial=iteration)
    predictor = Predictor(base if ema is None else ema.module, device, amp=amp, channels_last=channels_last)
    val_opts = {"input_size": cfg.resize} if cfg.resize else {}
    debug_hooks = _DebugHooks(base, logger) if cfg.debug and main else None
    t_start = time.monotonic() - used_time
    last_loss = float("nan")
    cfg_dict = cfg.to_dict()

    def checkpoint(finished: bool, metrics: dict | None) -> None:
        nonlocal best_miou
        is_best = metrics is not None and metrics["mean_iou"] > best_miou
        if is_best:
            best_miou = metrics["mean_iou"]
        if not main:
            return
        weights = {"model": base.state_dict()} if ema is None else {
            "model": ema.module.state_dict(), "raw_model": base.state_dict(), "ema_updates": ema.updates}
        state = {**weights, "model_spec": model_spec(base), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "iteration": iteration, "best_miou": best_miou,
                 # the schedule is a pure function of (iteration, progress): this records where it stands
                 "scheduler": {"name": cfg.scheduler, "lr_factor": optimizer.param_groups[0]["lr"] / cfg.lr,
                               "warmup_iters": cfg.warmup_iters, "max_iters": cfg.max_iters},
                 "used_time": time.monotonic() - t_start, "follows_clock": clock, "rng": _rng_state(),
                 "config": cfg_dict,
                 "classes": classes, "palette": [list(c) for c in train_ds.get_palette()] + [
                     [0, 0, 0]] * (num_classes - len(train_ds.get_palette())),
                 "normalization": base.normalization.to_dict(), "finished": finished, "stage": stage,
                 "metrics": {k: v for k, v in (metrics or {}).items() if k != "per_class"}}
        atomic_save(state, last_path)
        if is_best:
            best = dict(state, optimizer=None, scaler=None)
            atomic_save(best, best_path)

    def validate() -> dict:
        result = evaluate(predictor, val_ds, num_classes=num_classes, ignore_index=cfg.ignore_index,
                          max_images=cfg.val_max_images, progress=False, **val_opts)
        metrics = scores(result["hist"], classes, val_ds.background_index)
        metrics["per_image_mean_iou"] = result["per_image_mean_iou"]
        if main:
            logger.write({"iter": iteration, "val": {k: metrics[k] for k in (
                "pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "per_image_mean_iou",
                "foreground_accuracy") if k in metrics},
                "per_class_iou": {c: v["iou"] for c, v in metrics["per_class"].items()}})
            if logger.tb:
                tb = logger.tb
                tb.add_scalar("val/pixel_accuracy", metrics["pixel_accuracy"], iteration)
                tb.add_scalar("val/mean_iou", metrics["mean_iou"], iteration)
                for c, v in metrics["per_class"].items():
                    if v["iou"] is not None:
                        tb.add_scalar(f"val_iou/{c}", v["iou"], iteration)
                tb.add_image("val/input_truth_prediction", _tb_panel(predictor, val_ds, val_opts), iteration)
            bar.write(f"iter {iteration}: val mIoU {metrics['mean_iou']:.4f}  pixel acc "
                      f"{metrics['pixel_accuracy']:.4f}")
        net.train()
        _freeze_bn_of_frozen(net)
        return metrics

    net.train()
    _freeze_bn_of_frozen(net)
    finished_by_time = False
    metrics = None
    current_scale = 1.0
    try:
        while iteration < cfg.max_iters:
            # rank 0's clock on every rank: all stop at the same iteration and agree on the schedule
            elapsed = dist.broadcast_float(time.monotonic() - t_start) if budget is not None else 0.0
            if budget is not None and elapsed >= budget:
                finished_by_time = True
                break
            if not clock and follows_clock(iteration, elapsed, cfg.max_iters, budget):
                clock = True  # for the rest of the run (and its resumptions)
                if main:
                    note = (f"iter {iteration}: {cfg.max_iters} iterations would take "
                            f"{elapsed / max(iteration, 1) * cfg.max_iters / 60:.0f} min at this pace, over the "
                            f"{budget / 60:g}-min budget: the lr schedule follows the clock from here")
                    bar.write(note)
                    logger.write({"iter": iteration, "schedule": "clock"})
            progress_frac = max(iteration / cfg.max_iters, elapsed / budget if clock else 0.0)
            factor = lr_factor(cfg, iteration, progress_frac)
            scale = size_scale(cfg, progress_frac)
            if scale != current_scale:
                current_scale = scale
                if main and cfg.size_schedule:
                    bar.write(f"iter {iteration}: training batches at {scale:g}× the crop size")
                    logger.write({"iter": iteration, "size_scale": scale})
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for micro in range(accum):
                images, masks, indices = _next_batch(stream)
                images = base.normalization(images.to(device, non_blocking=True))
                masks = masks.to(device, non_blocking=True)
                images, masks = resize_batch(images, masks, scale)
                bad = ((masks >= num_classes) | (masks < 0)) & (masks != cfg.ignore_index)
                if bad.any():
                    v = int(masks[bad][0])
                    files = "; ".join(train_ds.describe(i) for i in indices)
                    raise UserError(f"label {v} is outside [0, {num_classes}) and not the ignore index "
                                    f"{cfg.ignore_index} in batch {files}; run `fcnseg data check`")
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                sync = nullcontext() if (world == 1 or micro == accum - 1) else net.no_sync()
                with sync:
                    with autocast(device, amp):
                        logits = net(images)
                    loss = pixel_loss(logits, masks, weight=weight, ignore_index=cfg.ignore_index,
                                      reduction=cfg.loss_reduction)
                    if not torch.isfinite(loss):
                        files = "; ".join(train_ds.describe(i) for i in indices)
                        raise UserError(f"loss is {loss.item()} at iteration {iteration + 1} on batch {files}; "
                                        f"lower --lr, try --amp none, or check the data with `fcnseg data check`")
                    scaler.scale(loss / accum).backward()
                loss_sum += loss.item() / accum
            if debug_hooks is not None and (iteration + 1) % cfg.log_every == 0:
                debug_hooks.log_gradients(iteration + 1)
            if in_backward is None:  # (otherwise every parameter was updated during backward)
                scaler.step(optimizer)
                scaler.update()
            if ema is not None:
                ema.update()
            iteration += 1
            last_loss = loss_sum
            bar.update(1)
            postfix = {"loss": f"{loss_sum:.4f}", "lr": f"{optimizer.param_groups[0]['lr']:.2e}"}
            if budget is not None:  # the bar's ETA counts iterations; with a time budget this is the real end
                postfix["budget_left"] = f"{max(0.0, budget - (time.monotonic() - t_start)) / 60:.1f}m"
            bar.set_postfix(postfix)
            if main and (iteration % cfg.log_every == 0 or iteration == 1):
                logger.write({"iter": iteration, "loss": loss_sum, "lr": optimizer.param_groups[0]["lr"],
                              "time": round(time.monotonic() - t_start, 3)})
                if logger.tb:
                    logger.tb.add_scalar("train/loss", loss_sum, iteration)
                    logger.tb.add_scalar("train/lr", optimizer.param_groups[0]["lr"], iteration)
            if iteration % cfg.val_every == 0 and iteration < cfg.max_iters:
                metrics = validate()
                checkpoint(False, metrics)
    except torch.OutOfMemoryError:
        raise UserError(f"out of memory at iteration {iteration + 1} (batch {batch}, crop {cfg.crop_size}): lower "
                        f"--batch-size or the crop size, or use --amp bf16/fp16") from None
    except RuntimeError as e:
        if "can't allocate memory" in str(e) or "out of memory" in str(e).lower():
            raise UserError(f"out of memory at iteration {iteration + 1} (batch {batch}, crop {cfg.crop_size}): "
                            f"lower --batch-size or the crop size, or use --amp bf16/fp16") from None
        raise
    except ValueError as e:
        if "Expected more than 1 value per channel" in str(e):  # BatchNorm over a 1×1 map of a single sample
            raise UserError(f"batch {batch} with crop {cfg.crop_size} leaves BatchNorm one value per channel at the "
                            f"network's coarsest stride: use --batch-size 2 or more, or a larger --crop-size") from None
        raise
    finally:
        bar.close()
        if debug_hooks is not None:
            debug_hooks.remove()
        if in_backward is not None:  # the returned model must not keep updating itself in later backward passes
            in_backward.remove()
    metrics = validate()
    checkpoint(True, metrics)
    logger.close()
    if main:
        why = "time budget reached" if finished_by_time else "max iterations reached"
        log.info("%s after %d iterations (%.0f s): last loss %.4f, val mIoU %.4f, best %.4f", why, iteration,
                 time.monotonic() - t_start, last_loss, metrics["mean_iou"], best_miou)
    return {"out": str(out), "last": str(last_path), "best": str(best_path), "iteration": iteration,
            "best_miou": best_miou, "metrics": metrics, "loss": last_loss, "model": base}


def _tb_panel(predictor: Predictor, dataset, val_opts: dict) -> torch.Tensor:
    """input | truth | prediction of the first validation image, colour-mapped, as a CHW uint8 tensor."""
    from .viz import colorize
    image, mask = dataset[0]
    image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
    pred = predictor.predict_image(image[None], **val_opts).argmax(1)[0].cpu()
    palette = dataset.get_palette()
    return torch.cat([image, colorize(mask, palette), colorize(pred, palette)], dim=2)


class _DebugHooks:
    """``--debug``: histograms of activations, gradients and weights, and per-layer gradient norms (JSONL)."""

    def __init__(self, model: nn.Module, logger: _Logger):
        self.model, self.logger = model, logger
        self.activations: dict[str, torch.Tensor] = {}
        modules = [(f"backbone.{n}", m) for n, m in model.backbone.named_children()] + [
            (n, m) for n, m in model.named_children() if n != "backbone"]
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in modules]

    def _hook(self, name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                self.activations[name] = output.detach().float().flatten()[:100_000].cpu()
        return hook

    def log_gradients(self, iteration: int) -> None:
        norms = {}
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                norms[name] = float(p.grad.detach().float().norm())
                if self.logger.tb:
                    self.logger.tb.add_histogram(f"grad/{name}", p.grad.detach().float().cpu(), iteration)
            if self.logger.tb and p.ndim > 1:
                self.logger.tb.add_histogram(f"weight/{name}", p.detach().float().cpu(), iteration)
        if self.logger.tb:
            for name, a in self.activations.items():
                self.logger.tb.add_histogram(f"activation/{name}", a, iteration)
        self.logger.write({"iter": iteration, "grad_norms": norms})

    def remove(self):
        for h in self.handles:
            h.remove()
