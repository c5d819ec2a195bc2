"""Where and how tensors run: the device, autocast (AMP) and memory-format choices, and the CPU probes behind
their ``auto`` settings. Training, evaluation, inference and benchmarks all decide here, the same way."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import time

import torch
from torch import nn

from .errors import UserError

log = logging.getLogger("fcnseg")


def select_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → the local GPU (``LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    if name is None or str(name) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_faster()
    return False


def _native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@functools.lru_cache(maxsize=None)
def cpu_bf16_faster() -> bool:
    """Whether bf16 autocast makes this CPU's convolutions faster, measured once per process (~0.1 s).

    CPU flags do not tell: on an Intel Xeon with AVX512-BF16 but no AMX, oneDNN's bf16 convolutions were ~1.5×
    *slower* than fp32 (one 3×3 conv layer 0.45 vs 0.23 s; FCN-8s inference 1421 vs 954 ms), while on an AMD EPYC
    Zen 4 (AVX512-BF16, no AMX) they are faster (FCN-8s VGG16 inference 687 vs 1161 ms; a ResNet-18 FCN-8s training
    step 0.30 vs 0.49 s). Without native bf16 (AVX2) it is emulated and an order of magnitude slower: not measured.
    The probe is a 3×3 convolution, 64→64 channels on 2×64×56×56, channels_last; bf16 must win by 20%."""
    if not _native_bf16():
        return False
    with torch.random.fork_rng(devices=[]):  # the probe must not move a seeded run's random stream
        conv = nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
        x = torch.randn(2, 64, 56, 56).contiguous(memory_format=torch.channels_last)

    def best(dtype) -> float:
        times = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            for i in range(7):
                t0 = time.perf_counter()
                conv(x)
                if i >= 2:  # warm-up: oneDNN builds its kernels on the first calls
                    times.append(time.perf_counter() - t0)
        return min(times)

    fp32, bf16 = best(None), best(torch.bfloat16)
    faster = bf16 * 1.2 < fp32
    log.debug("bf16 probe: fp32 %.2f ms, bf16 %.2f ms → %s", fp32 * 1e3, bf16 * 1e3, "bf16" if faster else "fp32")
    return faster


def resolve_amp(device: torch.device, amp: str) -> str:
    """``auto`` → ``bf16`` where it is native and faster (CPU: measured by ``cpu_bf16_faster``), ``fp16`` on GPUs
    without bf16, else ``none``; other modes as given."""
    if amp == "auto":
        return "bf16" if bf16_supported(device) else ("fp16" if device.type == "cuda" else "none")
    return amp


def channels_last_preferred(device: torch.device, training: bool) -> bool:
    """The faster memory format for this device's convolutions, as measured: cuDNN and AVX-512 oneDNN run
    channels_last faster (BENCHMARKS.md). On a CPU without AVX-512 (AMD EPYC Zen 3, AVX2; AdamW steps of the two
    formats interleaved, medians) training is slower in it or no faster — FCN-8s VGG16 on 2×3×256×256: 6.91 s
    channels_last vs 5.05 s NCHW; FCN-8s ResNet-18 on 8×3×180×240: 1.14 vs 1.13 s — while inference is as fast or
    a little faster (VGG16 1×3×500×500: 2158 vs 2302 ms)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return not training or "avx512f" in _cpu_flags()


def resolve_channels_last(choice: bool | str | None, device: torch.device, training: bool) -> bool:
    """``True`` / ``False`` as given; ``"auto"`` (or None) → ``channels_last_preferred``."""
    if isinstance(choice, bool):
        return choice
    if choice is None or str(choice).lower() == "auto":
        return channels_last_preferred(device, training)
    raise UserError(f"channels_last must be true, false or auto, got {choice!r}")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str | None:
    """The CPU's model name as the kernel reports it (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), or
    None when neither says. A time-budgeted figure depends on it, so reports record it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def autocast(device: torch.device, amp: str):
    """``none`` | ``bf16`` | ``fp16`` | ``auto`` (see ``resolve_amp``)."""
    amp = resolve_amp(device, amp)
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def available_memory(device: torch.device) -> int:
    """Bytes that tensors on ``device`` can still take: the GPU's free memory, or the system's ``MemAvailable``
    (Linux; what can be allocated without swapping), else the physical memory via ``sysconf``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30
