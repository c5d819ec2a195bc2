"""Activation checkpointing of backbone stages: keep only each stage's input during the forward pass and recompute
the stage during backward, so a larger batch or crop fits in memory for roughly one extra forward pass of compute.

Units checkpointed: VGG's five conv blocks (``features`` split after each max-pool) and fc6+fc7; ResNet ``layer1``…
``layer4``; Inception's Mixed blocks; MobileNet's ``features`` blocks. VGG's ``stages()`` lists single layers,
including in-place ReLUs whose input is another stage's output, so they are grouped into blocks here instead.

Nothing is wrapped or renamed: each unit's ``forward`` is replaced on the instance, so ``state_dict`` keys,
``named_parameters`` (which ``--trainable`` scopes and optimizer groups use) and checkpoints are unchanged.
Checkpointing is active only in training mode with gradients enabled; evaluation and inference run as before.
"""
from __future__ import annotations

import contextlib
import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbones import InceptionBackbone, MobileNetBackbone, ResNetBackbone, VGGBackbone

_MARK = "_fcnseg_checkpointed"


def _active(module: nn.Module) -> bool:
    return module.training and torch.is_grad_enabled()


@contextlib.contextmanager
def _no_running_stats_update(modules: list[nn.Module]):
    """During recomputation, BatchNorm must not update its running statistics a second time: momentum 0 keeps them
    as they are (running = 1·running + 0·batch) and ``num_batches_tracked`` is put back afterwards."""
    bns = [m for unit in modules for m in unit.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _run(fn, modules: list[nn.Module], *args):
    """``fn(*args)`` under non-reentrant checkpointing (which also replays the RNG state, so dropout masks match)."""
    def contexts():
        return contextlib.nullcontext(), _no_running_stats_update(modules)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=contexts)


def _checkpointed_forward(self, *args, **kwargs):
    forward = type(self).forward
    if not _active(self):
        return forward(self, *args, **kwargs)
    return _run(lambda *a: forward(self, *a, **kwargs), [self], *args)


def _sequence(layers: list[nn.Module]):
    def run(x):
        for layer in layers:
            x = layer(x)
        return x
    return run


# VGG's first block (conv1_1, conv1_2 at full resolution, 64 channels) has the largest activations of the net; its
# recomputation during backward set the peak of a checkpointed step. Its layers work per sample (a block with
# BatchNorm is not split), so splitting the batch changes the gradients only by float rounding (weight gradients are
# summed over the parts). FCN-8s VGG16, batch 8 at 256², AVX2 EPYC, step in backward:
# RSS peak 2,568–2,587 MiB whole → 2,503 MiB in two parts (then fc6's 392 MiB weight gradient sets the peak).
FIRST_BLOCK_CHUNKS = 2


def _vgg_checkpointed_forward(self: VGGBackbone, x: torch.Tensor) -> dict[int, torch.Tensor]:
    if not _active(self):
        return type(self).forward(self, x)
    out, block, first = {}, [], True
    for i, m in enumerate(self.features):
        block.append(m)
        if isinstance(m, nn.MaxPool2d):  # a conv block ends at its pool: conv → ReLU(in place) … → pool
            if first and not any(isinstance(layer, nn.modules.batchnorm._BatchNorm) for layer in block):
                # full resolution: recompute and backpropagate it one part of the batch at a time
                x = torch.cat([_run(_sequence(block), block, part) for part in x.chunk(FIRST_BLOCK_CHUNKS)])
                first = False
            else:
                x = _run(_sequence(block), block, x)
            if i == self._pool2:
                out[4] = x
            elif i == self._pool3:
                out[8] = x
            elif i == self._pool4:
                out[16] = x
            block = []
    if block:  # no trailing pool (not the case for torchvision's VGGs; kept for safety)
        x = _run(_sequence(block), block, x)
    fc = [self.fc6, self.relu6, self.drop6, self.fc7, self.relu7, self.drop7]
    out[32] = _run(_sequence(fc), fc, x)
    return out


def checkpoint_units(backbone: nn.Module) -> list[nn.Module]:
    """The modules whose ``forward`` :func:`enable_activation_checkpointing` replaces (the VGG backbone itself,
    whose forward then checkpoints its blocks)."""
    if isinstance(backbone, VGGBackbone):
        return [backbone]
    if isinstance(backbone, (ResNetBackbone, InceptionBackbone, MobileNetBackbone)):
        return backbone.stages()
    raise ValueError(f"activation checkpointing does not know backbone {type(backbone).__name__}; "
                     f"known: VGGBackbone, ResNetBackbone, InceptionBackbone, MobileNetBackbone")


def enable_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Checkpoint the backbone stages of an fcnseg FCN (``model.backbone``) or of a bare backbone, in place.

    Gradients are unchanged (same numbers, dropout masks replayed); BatchNorm running statistics are updated once.
    Idempotent; returns ``model``. Undo with :func:`disable_activation_checkpointing`.
    """
    backbone = getattr(model, "backbone", model)
    for unit in checkpoint_units(backbone):
        if getattr(unit, _MARK, False):
            continue
        fn = _vgg_checkpointed_forward if isinstance(unit, VGGBackbone) else _checkpointed_forward
        unit.forward = types.MethodType(fn, unit)
        setattr(unit, _MARK, True)
    return model


def disable_activation_checkpointing(model: nn.Module) -> nn.Module:
    backbone = getattr(model, "backbone", model)
    for unit in checkpoint_units(backbone):
        if getattr(unit, _MARK, False):
            del unit.forward
            delattr(unit, _MARK)
    return model


def is_checkpointed(model: nn.Module) -> bool:
    backbone = getattr(model, "backbone", model)
    return any(getattr(m, _MARK, False) for m in backbone.modules())
