"""What changes over a run: the learning-rate factor, the batch-size scale, and whether the schedule follows the
clock. Each is a pure function of the config and where the run stands, so a resumed run continues exactly."""
from __future__ import annotations

import math

from .config import TrainConfig

CLOCK_CHECK_FRACTION = 0.1  # of the time budget, run before the pace is projected


def follows_clock(iteration: int, elapsed: float, max_iters: int, budget: float | None) -> bool:
    """Must the schedule follow the clock? Only when the iterations, at the average pace so far, would not fit the
    time budget. Otherwise it counts iterations alone, and a seeded run repeats bit for bit whatever the machine's
    speed. The first tenth of the budget is not projected: its pace includes start-up costs, and a passing load on
    the machine weighs most there, while the switch is for good (another process in the first minute of a CamVid
    run cost 15 s and switched it at iteration 102, projected from 100 iterations; undisturbed, the same command
    makes its 5,000 iterations in 84% of the budget)."""
    if budget is None:
        return False
    if elapsed < CLOCK_CHECK_FRACTION * budget:
        return False
    return elapsed / max(iteration, 1) * max_iters > budget


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
