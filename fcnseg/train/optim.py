"""Optimizers for training: the recipe's optimizer with Caffe-style bias groups, and the step-in-backward variant.

``step_in_backward`` runs each parameter's update as soon as backward has accumulated its gradient and then frees
that gradient, so a model's full set of gradients never exists at once. For FCN-8s VGG16 (134 M parameters, fc6
alone 411 MB) that is up to 537 MB less peak memory — the same update, element-wise optimizers (SGD, Adam, AdamW)
compute each parameter's step from its own gradient and state only.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UserError

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _make(kind, groups, **kwargs) -> torch.optim.Optimizer:
    try:  # fused kernels: one launch per step instead of one per tensor (CPU and CUDA in recent torch)
        return kind(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return kind(groups, **kwargs)


def build_optimizer(model: nn.Module, name: str = "sgd", *, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9, betas=(0.9, 0.999), bias_lr_mult: float = 1.0,
                    bias_decay: bool = True) -> torch.optim.Optimizer:
    """``name`` over the trainable parameters: weights at ``lr``; biases (and other 1-D parameters) at
    ``lr × bias_lr_mult``, without weight decay unless ``bias_decay`` (the authors' Caffe solver: 2×, no decay)."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    weights, biases = [], []
    for pname, p in model.named_parameters():
        if p.requires_grad:
            (biases if pname.endswith(".bias") or p.ndim == 1 else weights).append(p)
    if not weights and not biases:
        raise UserError("no trainable parameters: check --trainable")
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay},
              {"params": biases, "lr": lr * bias_lr_mult, "weight_decay": weight_decay if bias_decay else 0.0}]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    kwargs = {"momentum": momentum} if name == "sgd" else {"betas": tuple(betas)}
    return _make(OPTIMIZERS[name], groups, **kwargs)


class StepInBackward:
    """Make ``optimizer`` update each parameter inside ``loss.backward()``, the moment its gradient is complete,
    and drop the gradient right after. Afterwards call nothing: no ``optimizer.step()``, no ``zero_grad()``.

    ``optimizer`` stays the object to set learning rates on (``param_groups``) and to checkpoint
    (``state_dict``/``load_state_dict``): each parameter's one-tensor optimizer shares its ``state`` (momentum,
    Adam moments) and reads its group's hyper-parameters at every step. Not for gradient accumulation, loss scaling
    (fp16), gradient clipping or DistributedDataParallel — they all need the gradients after backward.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self._handles = []
        self._single: dict[nn.Parameter, tuple[torch.optim.Optimizer, int]] = {}
        for index, group in enumerate(optimizer.param_groups):
            hyper = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                single = _make(type(optimizer), [{"params": [p], **hyper}],
                               **{k: v for k, v in optimizer.defaults.items() if k in ("momentum", "betas")})
                self._single[p] = (single, index)
                self._handles.append(p.register_post_accumulate_grad_hook(self._step))

    def _step(self, p: torch.Tensor) -> None:
        single, index = self._single[p]
        # shared state and current hyper-parameters, re-read each time: load_state_dict replaces both dicts
        single.state = self.optimizer.state
        group = self.optimizer.param_groups[index]
        single.param_groups[0].update({k: v for k, v in group.items() if k != "params"})
        single.step()
        p.grad = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class WeightEMA:
    """An exponential moving average of a model's parameters and floating-point buffers (BatchNorm statistics),
    kept in a frozen copy of the model (``module``) that validation and the saved checkpoints use.

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's ``num_updates`` rule, as in
    timm's ModelEma): the average is not dominated by the random initialisation, and its horizon grows with the run —
    about the last 10% of the iterations — until it reaches ``1 / (1 - decay)``. Integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float, updates: int = 0):
        if not 0.0 < decay < 1.0:
            raise UserError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay, self.updates = float(decay), int(updates)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = list(zip(_tensors(self.module), _tensors(model)))
        self._floats = ([e for e, m in pairs if e.is_floating_point()], [m for e, m in pairs if e.is_floating_point()])
        self._others = [(e, m) for e, m in pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights (call after each optimizer step)."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        torch._foreach_lerp_(self._floats[0], self._floats[1], 1.0 - decay)
        for e, m in self._others:
            e.copy_(m)


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [t for _, t in model.named_parameters()] + [t for _, t in model.named_buffers()]
