"""The schedule: when it follows the clock, step decays, and the progressive-resizing scale."""
from __future__ import annotations

import pytest
import torch

from fcnseg.train.config import resolve_config
from fcnseg.train.loop import resize_batch
from fcnseg.train.schedule import follows_clock, lr_factor, size_scale


def test_follows_clock_only_when_the_iterations_do_not_fit():
    # 3,600 CamVid iterations at ~0.42 s (FCN-8s on a 2-core Zen 4) in a 30-minute budget, after a 3-s start
    assert not any(follows_clock(i, 3 + 0.42 * i, 3600, 1800) for i in range(0, 3600, 7))
    assert not follows_clock(5, 60.0, 4200, None)  # no budget: iterations only
    assert not follows_clock(20, 100.0, 4200, 1800)  # too early to project (start-up costs)
    # a passing load in the first minute: 102 CamVid iterations took 36 s (21 s undisturbed), 59 min projected;
    # the pace is projected from a tenth of the budget on, when that run had made ~600 in 3 min: they fit
    assert not follows_clock(102, 36.0, 5000, 1800) and not follows_clock(600, 180.0, 5000, 1800)
    assert follows_clock(170, 181.0, 4200, 1800)  # a slower machine: 75 min projected, switched after a tenth
    assert follows_clock(20, 200.0, 4200, 1800)  # projected after a tenth of the budget however few iterations
    assert follows_clock(490, 180.0, 100_000, 1800)  # "fill the budget" recipes (max_iters 100,000)


def test_step_decays_follow_the_clock_too():
    cfg = resolve_config(None, None, {"scheduler": "step", "step_size": 50, "step_gamma": 0.1, "max_iters": 100,
                                      "warmup_iters": 0})
    assert lr_factor(cfg, 30, 0.3) == 1.0 and lr_factor(cfg, 50, 0.5) == pytest.approx(0.1)
    assert lr_factor(cfg, 29, 0.29) == 1.0  # 0.29 × 100 is 28.999…: no float off-by-one
    assert lr_factor(cfg, 10, 0.9) == pytest.approx(0.1)  # 90% of the budget used after 10 iterations


def test_size_schedule_picks_the_scale_in_force_and_resizes_batches(tiny):
    cfg = tiny(size_schedule=[[0, 0.5], [0.6, 1]])
    assert [size_scale(cfg, p) for p in (0.0, 0.59, 0.6, 1.0)] == [0.5, 0.5, 1.0, 1.0]
    assert size_scale(tiny(), 0.3) == 1.0
    images = torch.rand(2, 3, 40, 60)
    masks = torch.zeros(2, 40, 60, dtype=torch.int64)
    masks[:, :, 30:] = 255  # the ignore index survives nearest resizing unchanged
    masks[:, 20:, :30] = 3
    small_images, small_masks = resize_batch(images, masks, 0.5)
    assert small_images.shape == (2, 3, 20, 30) and small_masks.shape == (2, 20, 30)
    assert small_masks.dtype == torch.int64
    assert set(small_masks.unique().tolist()) == {0, 3, 255}
    assert (small_masks[:, :, 15:] == 255).all() and (small_masks[:, 10:, :15] == 3).all()
    # antialiased: the mean brightness of the batch is kept
    assert torch.allclose(small_images.mean(), images.mean(), atol=0.01)
    same = resize_batch(images, masks, 1.0)
    assert same[0] is images and same[1] is masks
