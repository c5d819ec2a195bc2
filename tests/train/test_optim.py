"""Optimizers: the weight average (EMA) by hand, and updates inside backward."""
from __future__ import annotations

import pytest
import torch

from fcnseg.errors import UserError
from fcnseg.train.config import resolve_config
from fcnseg.train.optim import StepInBackward, WeightEMA, build_optimizer


def test_weight_ema_by_hand():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = WeightEMA(model, decay=0.5)
    expected = {k: v.clone().double() for k, v in start.items()}
    for n in range(6):
        model.train()(torch.randn(4, 2))  # moves the BatchNorm statistics and num_batches_tracked
        with torch.no_grad():
            model[0].weight.add_(torch.randn(2, 2))
        ema.update()
        d = min(0.5, (1 + n) / (10 + n))  # 0.1, 0.18, 0.25, 0.31, 0.36, then the cap 0.5
        for k, v in model.state_dict().items():
            expected[k] = v.double() if k.endswith("num_batches_tracked") else d * expected[k] + (1 - d) * v.double()
    got = ema.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k].double(), v, rtol=1e-6, atol=1e-6, msg=k)
    assert got["1.num_batches_tracked"] == 6 and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(UserError, match="ema_decay"):
        resolve_config(None, None, {"ema_decay": 1.0})


def test_step_in_backward_follows_lr_after_load_state_dict_and_unhooks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    opt = build_optimizer(model, "sgd", lr=0.1, momentum=0.9)
    wrapped = StepInBackward(opt)
    model(torch.randn(2, 4)).square().sum().backward()
    assert model[0].weight.grad is None  # updated inside backward, gradient freed
    opt.load_state_dict(opt.state_dict())  # resume: new param_groups / state dicts
    for g in opt.param_groups:
        g["lr"] = 0.0
    before = model[0].weight.detach().clone()
    model(torch.randn(2, 4)).square().sum().backward()
    # lr 0 from the reloaded groups: SGD with momentum still moves by lr × buffer = 0
    assert torch.equal(model[0].weight, before)
    wrapped.remove()
    model(torch.randn(2, 4)).square().sum().backward()
    assert model[0].weight.grad is not None and torch.equal(model[0].weight, before)
