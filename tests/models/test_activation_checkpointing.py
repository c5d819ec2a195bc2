"""Activation checkpointing: same gradients, same state-dict keys, fewer bytes kept for backward."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fcnseg import build_model
from fcnseg.models.activation_checkpointing import (disable_activation_checkpointing, enable_activation_checkpointing,
                                                     is_checkpointed)


def _model(backbone: str, seed: int = 0, arch: str = "fcn8s"):
    torch.manual_seed(seed)
    model = build_model(arch, backbone=backbone, num_classes=3)
    with torch.no_grad():  # a fresh head scores zero everywhere; random scores make every gradient non-trivial
        for name in model.score_layers():
            getattr(model, name).weight.normal_(0, 0.01)
    return model.train()


def _grads(model, x, y, seed=1):
    torch.manual_seed(seed)  # same dropout masks in both runs
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backbone,size,arch", [("vgg16", 40, "fcn8s"), ("resnet18", 64, "fcn8s"),
                                               ("vgg16", 40, "fcn4s")])
def test_gradients_equal(backbone, size, arch):
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, size, size), torch.randint(0, 3, (2, size, size))
    plain = _model(backbone, arch=arch)
    ckpt = enable_activation_checkpointing(copy.deepcopy(plain))
    assert is_checkpointed(ckpt) and not is_checkpointed(plain)
    loss0, g0 = _grads(plain, x, y)
    loss1, g1 = _grads(ckpt, x, y)
    assert torch.equal(loss0, loss1)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for name in g0:
        assert torch.allclose(g0[name], g1[name], rtol=1e-5, atol=1e-7), name
    assert any(g.abs().sum() > 0 for n, g in g0.items() if n.startswith("backbone."))
    # BatchNorm running statistics are updated once, not again during recomputation
    for (n, b0), (_, b1) in zip(plain.named_buffers(), ckpt.named_buffers()):
        assert torch.allclose(b0, b1, rtol=1e-5, atol=1e-7), n


@pytest.mark.parametrize("backbone", ["vgg16", "resnet18", "inception_v3", "mobilenet_v3_large"])
def test_state_dict_and_parameter_names_unchanged(backbone):
    model = build_model("fcn8s", backbone=backbone, num_classes=3)
    keys, names = list(model.state_dict()), [n for n, _ in model.named_parameters()]
    enable_activation_checkpointing(model)
    enable_activation_checkpointing(model)  # idempotent
    assert list(model.state_dict()) == keys
    assert [n for n, _ in model.named_parameters()] == names
    model.load_state_dict(build_model("fcn8s", backbone=backbone, num_classes=3).state_dict())
    disable_activation_checkpointing(model)
    assert not is_checkpointed(model)


def _saved_bytes(model, x, y) -> int:
    """Bytes of distinct storages that autograd keeps for backward (a CPU-friendly stand-in for peak memory)."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return sum(storages.values())


@pytest.mark.parametrize("backbone", ["vgg16", "resnet18"])
def test_checkpointing_saves_fewer_bytes(backbone):
    x, y = torch.randn(1, 3, 96, 96), torch.randint(0, 3, (1, 96, 96))
    model = _model(backbone)
    plain = _saved_bytes(model, x, y)
    enable_activation_checkpointing(model)
    ckpt = _saved_bytes(model, x, y)
    assert ckpt < 0.5 * plain, (ckpt, plain)


def test_vgg_first_block_runs_in_parts():
    """VGG's full-resolution block is computed, recomputed and backpropagated one half of the batch at a time (the
    gradients are compared with the plain model's in test_gradients_equal, whose batch of 2 is split too)."""
    from fcnseg.models.activation_checkpointing import FIRST_BLOCK_CHUNKS
    model = enable_activation_checkpointing(_model("vgg16"))
    seen = []
    model.backbone.features[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    model.backbone.features[5].register_forward_hook(lambda m, i, o: seen.append(-i[0].shape[0]))  # conv2_1
    x, y = torch.randn(4, 3, 40, 40), torch.randint(0, 3, (4, 40, 40))
    F.cross_entropy(model(x), y).backward()
    assert FIRST_BLOCK_CHUNKS == 2
    # forward: conv1_1 on two halves, conv2_1 on the whole batch; backward recomputes the same way
    assert sorted(seen) == [-4, -4, 2, 2, 2, 2], seen


def test_inactive_in_eval_and_no_grad():
    model = enable_activation_checkpointing(_model("resnet18"))
    x = torch.randn(1, 3, 64, 64)
    calls = []
    orig = torch.utils.checkpoint.checkpoint
    try:
        import fcnseg.models.activation_checkpointing as ck
        ck.checkpoint = lambda *a, **k: calls.append(1) or orig(*a, **k)
        with torch.no_grad():
            model(x)
        model.eval()
        model(x)
        assert calls == []
        model.train()
        model(x)
        assert len(calls) == 4  # layer1..layer4
    finally:
        ck.checkpoint = orig
