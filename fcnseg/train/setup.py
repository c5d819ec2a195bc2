"""Config → run: everything one training stage works with (data, model, optimizer, loss scaler, EMA, batch plan,
log), gathered in a :class:`Run` that the loop reads and advances."""
from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from .. import distributed as dist
from ..data import SegmentationDataset, get_dataset
from ..data.base import IGNORE_INDEX, DecodedCache
from ..data.transforms import build_transforms, pad_collate
from ..errors import UserError
from ..inference import Predictor
from ..models import ARCHS, build_model
from ..models.activation_checkpointing import enable_activation_checkpointing
from ..provenance import provenance
from ..runtime import resolve_amp, resolve_channels_last, select_device
from ..weights import load_weights
from .checkpoint import restore_training_state, restore_weights
from .config import TrainConfig, parse_duration
from .optim import StepInBackward, WeightEMA, build_optimizer

log = logging.getLogger("fcnseg")
CACHE_LIMIT = 2 * 2**30  # bytes of decoded training samples `cache_decoded: auto` holds in RAM at most


@dataclass
class Run:
    """One training stage: what :func:`setup` built from the config, and where the run stands."""
    cfg: TrainConfig
    out: Path
    stage: str | None
    main: bool  # rank 0: writes checkpoints and logs
    world: int  # processes
    device: torch.device
    amp: str  # resolved: none | bf16 | fp16
    channels_last: bool
    train_ds: SegmentationDataset
    val_ds: SegmentationDataset
    num_classes: int
    classes: list[str]
    model: nn.Module  # the model trained and checkpointed
    net: nn.Module  # what the forward pass runs: the model, or its DistributedDataParallel wrapper under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_weight: torch.Tensor | None  # per-class loss weights
    ema: WeightEMA | None  # the weight average that validation and checkpoints use (ema_decay)
    in_backward: StepInBackward | None  # updates inside backward (step_in_backward)
    plan: BatchPlan
    budget: float | None  # seconds (time_budget)
    logger: Logger
    predictor: Predictor  # validation
    debug_hooks: DebugHooks | None
    iteration: int = 0
    best_miou: float = -1.0
    follows_clock: bool = False  # the schedule counts time, not iterations (see schedule.follows_clock)
    size_scale: float = 1.0
    t_start: float = 0.0  # monotonic time the run would have started at, had it never been interrupted
    last_loss: float = float("nan")


def seed_rngs(cfg: TrainConfig) -> None:
    """Seed torch and Python; with ``deterministic``, deterministic algorithms too."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def setup(cfg: TrainConfig, resume: dict | None, *, stage: str | None = None, progress: bool = True) -> Run:
    """Build the run ``cfg`` describes, continuing ``resume`` (a checkpoint dict) when given."""
    main, world, device = dist.is_main(), dist.world_size(), select_device(cfg.device)
    train_ds, val_ds = build_datasets(cfg, main=main, progress=progress)
    num_classes = cfg.num_classes or train_ds.num_classes
    if cfg.num_classes and cfg.num_classes < train_ds.num_classes:
        raise UserError(f"num_classes={cfg.num_classes} but {cfg.data} has {train_ds.num_classes} classes")
    check_labels(cfg, train_ds)
    classes = list(train_ds.classes) + [f"class_{i}" for i in range(len(train_ds.classes), num_classes)]

    model = build_training_model(cfg, num_classes, resume, heads=train_ds.heads, data=train_ds)
    model.to(device)
    channels_last = resolve_channels_last(cfg.channels_last, device, training=True)
    amp = resolve_amp(device, cfg.amp)  # the config keeps "auto": a resumed run decides again on its machine
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = distribute(model, device, world, main)
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                betas=cfg.betas, bias_lr_mult=cfg.bias_lr_mult, bias_decay=cfg.bias_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    loss_weight = class_weights(cfg, num_classes, device)
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay else None  # before StepInBackward hooks the model
    position = {}
    if resume is not None:
        position = restore_training_state(resume, optimizer=optimizer, scaler=scaler, ema=ema, main=main)
        if main:
            log.info("resuming %s at iteration %d", cfg.out, position["iteration"])
    in_backward = step_in_backward(cfg, optimizer, amp, world)

    plan = BatchPlan(train_ds, cfg, world, device)
    if main:
        log.info("batch: %d per process × %d processes × %d accumulation = %d global; %d classes; %s, %s, %s",
                 cfg.batch_size, world, cfg.accum_steps, cfg.batch_size * world * cfg.accum_steps, num_classes,
                 device, "channels_last" if channels_last else "NCHW", "fp32" if amp == "none" else amp)
    logger = Logger(Path(cfg.out), main)
    logger.write({"iter": position.get("iteration", 0), "world_size": world, "batch_per_process": cfg.batch_size,
                  "accum_steps": cfg.accum_steps, "global_batch": cfg.batch_size * world * cfg.accum_steps,
                  "device": str(device), **({"provenance": provenance(device)} if main else {})})
    predictor = Predictor(model if ema is None else ema.module, device, amp=amp, channels_last=channels_last)
    debug_hooks = DebugHooks(model, logger) if cfg.debug and main else None
    run = Run(cfg=cfg, out=Path(cfg.out), stage=stage, main=main, world=world, device=device, amp=amp,
              channels_last=channels_last, train_ds=train_ds, val_ds=val_ds, num_classes=num_classes, classes=classes,
              model=model, net=net, optimizer=optimizer, scaler=scaler, loss_weight=loss_weight, ema=ema,
              in_backward=in_backward, plan=plan, budget=parse_duration(cfg.time_budget), logger=logger,
              predictor=predictor, debug_hooks=debug_hooks, iteration=position.get("iteration", 0),
              best_miou=position.get("best_miou", -1.0), follows_clock=position.get("follows_clock", False))
    run.t_start = time.monotonic() - position.get("used_time", 0.0)
    return run


# ------------------------------------------------------------------------------------------------------- data
def build_datasets(cfg: TrainConfig, *, main: bool, progress: bool) -> tuple[SegmentationDataset,
                                                                               SegmentationDataset]:
    """The training set (augmented; decoded once into RAM when ``cache_decoded`` says so) and the validation set."""
    def train_tf(resize):
        return build_transforms(True, crop_size=cfg.crop_size, scale_range=cfg.scale_range, hflip=cfg.hflip,
                                color_jitter=cfg.color_jitter, resize=resize, ignore_index=cfg.ignore_index,
                                color_channels=train_ds.color_channels)

    train_ds = get_dataset(cfg.data, cfg.root, cfg.train_split, None, **cfg.data_options)
    if cache_decoded(cfg, len(train_ds), log_reason=main):
        train_ds = DecodedCache(train_ds, prepare=build_transforms(False, resize=cfg.resize), transforms=train_tf(None),
                                ignore_index=cfg.ignore_index)
        with dist.progress_bar(len(train_ds), "decode", progress) as bar:
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
    return train_ds, val_ds


def cache_decoded(cfg: TrainConfig, n: int, log_reason: bool = False) -> bool:
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


class SeededSamples(torch.utils.data.Dataset):
    """Each sample's augmentation is seeded by (seed, epoch, position): identical whichever worker or process
    decodes it, which is what makes ``--resume`` exact."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, sample_seed = item
        torch.manual_seed(sample_seed)
        random.seed(sample_seed)
        image, mask = self.dataset[index]
        return image, mask, index


class BatchPlan:
    """Which samples each global batch holds, and the seed of each sample's augmentation: a pure function of
    (seed, epoch, position), so a resumed run draws exactly the batches the uninterrupted run would have."""

    def __init__(self, train_ds: SegmentationDataset, cfg: TrainConfig, world: int, device: torch.device):
        self.samples = SeededSamples(train_ds)
        self.sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=world, rank=dist.rank(),
                                                           shuffle=True, seed=cfg.seed, drop_last=True)
        self.batch, self.seed, self.workers, self.ignore_index = cfg.batch_size, cfg.seed, cfg.workers, cfg.ignore_index
        self.pin_memory = device.type == "cuda"
        self.per_epoch = len(self.sampler) // self.batch
        if self.per_epoch == 0:
            raise UserError(f"{cfg.data} split {cfg.train_split!r} has {len(train_ds)} samples, fewer than "
                            f"batch_size × processes = {self.batch * world}; lower --batch-size")

    def collate(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        images, masks = pad_collate([(b[0], b[1]) for b in batch], self.ignore_index)
        return images, masks, [b[2] for b in batch]

    def batches(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
        """Infinite stream of (images, masks, indices) from global batch number ``start_batch`` on."""
        epoch, offset = divmod(start_batch, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            plan = [[(idx, hash((self.seed, epoch, b * self.batch + j)) & 0x7FFFFFFF)
                     for j, idx in enumerate(order[b * self.batch:(b + 1) * self.batch])]
                    for b in range(offset, self.per_epoch)]
            loader = torch.utils.data.DataLoader(self.samples, batch_sampler=plan, num_workers=self.workers,
                                                 collate_fn=self.collate, pin_memory=self.pin_memory,
                                                 persistent_workers=False)
            yield from loader
            epoch, offset = epoch + 1, 0


# ------------------------------------------------------------------------------------------------------ model
def check_labels(cfg: TrainConfig, train_ds: SegmentationDataset) -> None:
    """The config fits the dataset's labels: its ignore value, and a model that can have its heads."""
    if cfg.ignore_index == IGNORE_INDEX and train_ds.ignore_index != IGNORE_INDEX:
        # PASCAL-Context's 459 classes include a class 255: its unlabelled pixels are 65535
        raise UserError(f"{cfg.data} marks unlabelled pixels {train_ds.ignore_index} (its classes include "
                        f"{IGNORE_INDEX}): pass --ignore-index {train_ds.ignore_index}")
    heads = train_ds.heads
    if heads and (cfg.arch not in ARCHS or cfg.learnable_upsampling or cfg.num_classes not in (None, len(
            train_ds.classes))):
        raise UserError(f"{cfg.data} has {len(heads)} heads ({', '.join(f'{n}: {c}' for n, c in heads)} classes): "
                        f"train an FCN ({', '.join(ARCHS)}) with fixed upsampling and num_classes left out")


def build_training_model(cfg: TrainConfig, num_classes: int, resume: dict | None,
                         heads: tuple[tuple[str, int], ...] | None = None,
                         data: SegmentationDataset | None = None) -> nn.Module:
    """The model to train: built, initialised (``pretrained_backbone``, ``init_from``, or the resumed weights), its
    parameters outside ``trainable`` frozen, its backbone checkpointed when asked. ``heads``: the dataset's, for a
    model with several score heads; ``data``: the training set, whose input (channels, streams, normalisation: NYUDv2's
    depth and HHA) the model takes."""
    inputs = {} if data is None else {"in_channels": data.in_channels, "streams": data.streams}
    model = build_model(cfg.arch, backbone=cfg.backbone, num_classes=num_classes, geometry=cfg.geometry,
                        pretrained_backbone=cfg.pretrained_backbone if resume is None else None,
                        learnable_upsampling=cfg.learnable_upsampling, global_context=cfg.global_context,
                        heads=heads, **inputs)
    if cfg.init_from and resume is None:
        report = load_weights(model, cfg.init_from)
        log.info("initialised from %s: %d tensors loaded, %d new", cfg.init_from, report["loaded"],
                 len(report["missing"]))
    if data is not None and resume is None:
        model.normalization = data.input_normalization(model.normalization)
    if resume is not None:
        restore_weights(model, resume)
    scope_parameters(model, cfg.trainable)
    if cfg.activation_checkpointing:  # recompute backbone stages in backward: less memory, ~25 % more time
        enable_activation_checkpointing(model)
    return model


def scope_parameters(model: nn.Module, scopes: list[str] | None) -> None:
    """Freeze everything outside ``scopes`` (prefixes of parameter names; ``head`` = the score layers)."""
    if not scopes:
        for name, p in model.named_parameters():
            if not (name.rpartition(".")[0] in model.upsample_layers() and not model.learnable_upsampling):
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
        fixed_up = name.rpartition(".")[0] in model.upsample_layers() and not model.learnable_upsampling
        p.requires_grad_(bool(hit) and not fixed_up)
    missing = [s for s, ok in matched.items() if not ok]
    if missing:
        tops = sorted({n.split(".")[0] for n, _ in model.named_parameters()} | {"head"})
        raise UserError(f"--trainable scope {missing[0]!r} matches no parameter; valid scopes start with: "
                        f"{', '.join(tops)}")


def train_mode(model: nn.Module) -> None:
    """Training mode, except BatchNorm layers whose parameters are frozen: they keep their running statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()


def distribute(model: nn.Module, device: torch.device, world: int, main: bool) -> nn.Module:
    """Under torchrun: the DistributedDataParallel wrapper (batch statistics shared on GPUs); else ``model``."""
    if world == 1:
        return model
    net = model
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            if main:
                log.info("SyncBatchNorm: %d processes share batch statistics", world)
        elif main:  # torch's SyncBatchNorm runs on GPUs only
            log.info("BatchNorm stays per process on CPU (SyncBatchNorm needs GPUs)")
    return nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=False)


def step_in_backward(cfg: TrainConfig, optimizer: torch.optim.Optimizer, amp: str, world: int) -> StepInBackward | None:
    """Update each parameter inside backward and free its gradient (less peak memory), when the config asks."""
    if not cfg.step_in_backward:
        return None
    clash = [why for why, bad in (("accum_steps > 1", cfg.accum_steps > 1), ("--amp fp16 (loss scaling)",
                                  amp == "fp16"), ("several processes", world > 1),
                                  ("--debug (gradient summaries)", cfg.debug)) if bad]
    if clash:
        raise UserError(f"step_in_backward needs each gradient only once, right after backward; it does not "
                        f"combine with {', '.join(clash)}")
    return StepInBackward(optimizer)


def class_weights(cfg: TrainConfig, num_classes: int, device: torch.device) -> torch.Tensor | None:
    """``class_weights`` as a tensor: the list given, or the median-frequency weights of a `data stats` JSON."""
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


# -------------------------------------------------------------------------------------------------------- log
class Logger:
    """JSONL + TensorBoard, rank 0 only."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.file = open(out / "log.jsonl", "a")
        try:  # lazy: TensorBoard is optional and slow to import (protobuf)
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tb"))
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")

    def write(self, record: dict) -> None:
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb:
                self.tb.close()


class DebugHooks:
    """``--debug``: histograms of activations, gradients and weights, and per-layer gradient norms (JSONL)."""

    def __init__(self, model: nn.Module, logger: Logger):
        self.model, self.logger = model, logger
        self.activations: dict[str, torch.Tensor] = {}
        modules = [(f"backbone.{n}", m) for n, m in model.backbone.named_children()] + [
            (n, m) for n, m in model.named_children() if n != "backbone"]
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in modules]

    def _hook(self, name: str) -> Callable:
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                self.activations[name] = output.detach().float().flatten()[:100_000].cpu()
        return hook

    def log_gradients(self, iteration: int) -> None:
        norms = {}
        tb = self.logger.tb
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                norms[name] = float(p.grad.detach().float().norm())
                if tb:
                    tb.add_histogram(f"grad/{name}", p.grad.detach().float().cpu(), iteration)
            if tb and p.ndim > 1:
                tb.add_histogram(f"weight/{name}", p.detach().float().cpu(), iteration)
        if tb:
            for name, a in self.activations.items():
                tb.add_histogram(f"activation/{name}", a, iteration)
        self.logger.write({"iter": iteration, "grad_norms": norms})

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
