"""``fcnseg benchmark``: latency, images/s and peak memory of one model configuration on this machine.

Timing helpers here are shared with ``benchmarks/run.py`` (the side-by-side comparison against pytorch-fcn and
torchvision), so both measure the same way: warm-up first, then the minimum and median of several repeats (the
minimum is the figure least disturbed by other processes on a shared machine).
"""
from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Callable

import torch
from torch import nn

from .errors import UserError
from .inference import Predictor
from .models import build_model
from .models.activation_checkpointing import enable_activation_checkpointing
from .provenance import provenance
from .runtime import autocast, resolve_channels_last, select_device
from .train.loop import pixel_loss
from .train.optim import StepInBackward

DTYPES = {"fp32": "none", "bf16": "bf16", "fp16": "fp16", "int8": "int8"}  # --dtype → Predictor amp mode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1,
            device: torch.device = torch.device("cpu")) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark. Linux: VmHWM of /proc/self/status, because ``ru_maxrss``
    survives exec and so reports at least the parent's peak in a child process; elsewhere ``ru_maxrss``."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Restart the RSS high-water mark at the current RSS (Linux ≥ 4.0: ``5 > /proc/self/clear_refs``), so a later
    ``peak_rss_mib()`` covers only what runs in between; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def train_step(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, amp: str = "none",
               channels_last: bool = True, lr: float = 1e-3, fused: bool = True, step_in_backward: bool = False,
               device: torch.device = torch.device("cpu")) -> Callable[[], float]:
    """A closure running one SGD-momentum step (cross-entropy, fp32 loss) the way ``fcnseg train`` does;
    it returns the loss. ``fused``: torch's fused SGD kernel when this torch has it for the device;
    ``step_in_backward``: each parameter updated inside backward, its gradient freed (``fcnseg.train.optim``)."""
    model.train().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, fused=fused) if fused else None
    except (RuntimeError, TypeError, ValueError):
        opt = None
    opt = opt or torch.optim.SGD(params, lr=lr, momentum=0.9)
    images, masks = images.to(device), masks.to(device)
    if step_in_backward:
        StepInBackward(opt)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = model(images)
        loss = pixel_loss(logits, masks)
        loss.backward()
        if not step_in_backward:
            opt.step()
        return loss.item()
    return step


def summary(times: list[float], batch: int) -> dict:
    best, median = min(times), statistics.median(times)
    return {"min_s": best, "median_s": median, "images_per_s": batch / best, "repeats": len(times)}


def run_benchmark(*, arch: str = "fcn8s", backbone: str = "vgg16", geometry: str = "aligned", num_classes: int = 21,
                  size: tuple[int, int] = (500, 500), batch: int = 1, dtype: str = "fp32", device: str = "auto",
                  mode: str = "infer", repeats: int = 5, warmup: int = 1, channels_last: bool | str | None = "auto",
                  compile: bool = False, checkpointing: bool = False,
                  step_in_backward: bool = False, command: list[str] | None = None) -> dict:  # noqa: A002
    """Measure one configuration; returns the figures ``fcnseg benchmark`` prints, with their ``provenance``
    (``fcnseg.provenance``; ``command``: the command line to record, default this process's)."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if mode not in ("infer", "train"):
        raise UserError(f"--mode must be infer or train, got {mode!r}")
    if dtype == "int8" and mode != "infer":
        raise UserError("--dtype int8 is an inference path; use --mode infer (or --dtype bf16 for training)")
    if repeats < 1 or batch < 1 or warmup < 0:
        raise UserError(f"--repeats and --batch must be >= 1 and --warmup >= 0 (got {repeats}, {batch}, {warmup})")
    try:
        dev = select_device(device)
    except RuntimeError as e:
        raise UserError(f"--device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
    channels_last = resolve_channels_last(channels_last, dev, training=mode == "train")
    try:
        model = build_model(arch, backbone=backbone, num_classes=num_classes, geometry=geometry)
    except ValueError as e:
        raise UserError(str(e)) from None
    if checkpointing:
        enable_activation_checkpointing(model)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *size, generator=g)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    if mode == "infer":
        images = images.to(dev)
        predictor = Predictor(model, dev, amp=DTYPES[dtype], channels_last=channels_last, compile=compile,
                              calibration=[images] if dtype == "int8" else None)
        times = time_fn(lambda: predictor(images), repeats=repeats, warmup=warmup, device=dev)
    else:
        with torch.no_grad():  # a fresh head predicts zeros; random scores make the step representative
            for name in model.score_layers():
                getattr(model, name).weight.normal_(0, 0.01, generator=g)
        masks = torch.randint(0, num_classes, (batch, *size), generator=g)
        step = train_step(model, images, masks, amp=DTYPES[dtype], channels_last=channels_last, device=dev,
                          step_in_backward=step_in_backward)
        times = time_fn(step, repeats=repeats, warmup=warmup, device=dev)
    result = summary(times, batch)
    result.update(model=f"{arch}/{backbone}/{geometry}", params=sum(p.numel() for p in model.parameters()),
                  input=(batch, 3, *size), dtype=dtype, device=str(dev), mode=mode, threads=torch.get_num_threads(),
                  channels_last=channels_last, checkpointing=checkpointing, compile=compile,
                  step_in_backward=step_in_backward and mode == "train")
    if dev.type == "cuda":
        result["peak_mib"], result["peak_kind"] = torch.cuda.max_memory_allocated(dev) / 2**20, "max_memory_allocated"
    else:
        result["peak_mib"], result["peak_kind"] = peak_rss_mib(), "process RSS high-water mark"
    result["provenance"] = provenance(dev, command=command)
    return result
